"""Where pybk keeps its store by default, where a store's daemon listens, and which
configuration file it reads when none is named.

Root (uid 0) uses the system places; any other user the XDG ones. Who the user is comes from
:func:`real_uid`: ``$PYBK_REAL_UID`` when set (pybk sets it before entering a user namespace,
where the process is uid 0 but the store, socket and configuration are still the user's),
else the effective uid.
"""

from __future__ import annotations

import os

#: root's default store
SYSTEM_ROOT = "/var/lib/pybk"
#: the socket of the daemon serving :data:`SYSTEM_ROOT`
SYSTEM_SOCKET = "/run/pybk/pybkd.sock"
#: the socket of the daemon serving any other store, inside the store
STORE_SOCKET = "pybkd.sock"
#: the environment variable naming the user's real uid inside a user namespace
REAL_UID_ENV = "PYBK_REAL_UID"


def real_uid() -> int:
    """``$PYBK_REAL_UID`` when set (the user's uid outside the user namespace pybk runs in),
    else the effective uid."""
    text = os.environ.get(REAL_UID_ENV)
    if not text:
        return os.geteuid()
    if not text.isdigit():
        from pybk.core.errors import UsageError  # (the client's fast path imports no more)

        raise UsageError(f"{REAL_UID_ENV}={text!r}: expected a uid (a number)")
    return int(text)


def home() -> str:
    """``$HOME``, else the home directory of :func:`real_uid`'s passwd entry."""
    if os.environ.get("HOME"):
        return os.environ["HOME"]
    import pwd

    try:
        return pwd.getpwuid(real_uid()).pw_dir
    except KeyError:
        return "/"


def _xdg(variable: str, default: str) -> str:
    """``$VARIABLE`` when set to an absolute path (the XDG rule: a relative one is ignored),
    else ``~/DEFAULT``."""
    value = os.environ.get(variable, "")
    return value if os.path.isabs(value) else os.path.join(home(), default)


def default_root() -> str:
    """``$PYBK_ROOT``, else ``/var/lib/pybk`` for root, else ``$XDG_DATA_HOME/pybk``
    (``~/.local/share/pybk``)."""
    if os.environ.get("PYBK_ROOT"):
        return os.environ["PYBK_ROOT"]
    if real_uid() == 0:
        return SYSTEM_ROOT
    return user_store()


def user_store() -> str:
    """The store of a user other than root: ``$XDG_DATA_HOME/pybk``."""
    return os.path.join(_xdg("XDG_DATA_HOME", ".local/share"), "pybk")


def user_config_file() -> str | None:
    """The configuration file of a user other than root: ``$XDG_CONFIG_HOME/pybk/buildkitd.toml``
    (``~/.config/pybk/buildkitd.toml``); None for root."""
    if real_uid() == 0:
        return None
    return os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), "pybk", "buildkitd.toml")


def default_config() -> str | None:
    """The configuration file read when ``--config`` is not given: ``$PYBK_CONFIG`` when set
    (set and empty: None, no file), else the user's :func:`user_config_file` when it exists,
    else None (every default)."""
    if "PYBK_CONFIG" in os.environ:
        return os.environ["PYBK_CONFIG"] or None
    path = user_config_file()
    return path if path is not None and os.path.isfile(path) else None


def runtime_dir() -> str | None:
    """The user's runtime directory: ``$XDG_RUNTIME_DIR`` (an absolute path), else
    ``/run/user/UID`` when that directory exists and is the user's, else None."""
    value = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(value):
        return value
    candidate = f"/run/user/{real_uid()}"
    try:
        if os.stat(candidate).st_uid == real_uid() and os.path.isdir(candidate):
            return candidate
    except OSError:
        pass
    return None


def store_socket(root: str) -> str:
    """The default socket of the daemon serving the store ``root``: ``/run/pybk/pybkd.sock``
    for ``/var/lib/pybk``; for a user's default store (``$XDG_DATA_HOME/pybk``),
    ``RUNTIME/pybk/pybkd.sock`` in the user's :func:`runtime_dir` (``ROOT/pybkd.sock`` when
    there is none); else ``ROOT/pybkd.sock`` (both sides resolve symlinks)."""
    real = os.path.realpath(root)
    if real == SYSTEM_ROOT:
        return SYSTEM_SOCKET
    if real_uid() != 0 and real == os.path.realpath(user_store()):
        runtime = runtime_dir()
        if runtime is not None:
            return os.path.join(runtime, "pybk", "pybkd.sock")
    return os.path.join(real, STORE_SOCKET)
