"""Rootless pybk: entering a user namespace as an ordinary user.

A command that needs the engine, run by a user other than root, first enters a user namespace
in which that user is root and its ``/etc/subuid`` and ``/etc/subgid`` ranges are the ids
``1..N`` (Debian's ``newuidmap`` and ``newgidmap`` write the maps), then a private mount
namespace. The process keeps its pid: it forks a small helper, calls
``unshare(CLONE_NEWUSER)`` itself, and the helper runs ``newuidmap``/``newgidmap`` on the
process's pid and exits; then the process unshares its mount namespace and makes every mount
private. So stdio, signals, the exit code, the daemon's pid file and socket are the command's
own, with no process waiting on it (see docs/rootless.md).

What depends on the real user is computed before entering (inside, ``geteuid()`` is 0) and
passed on in the environment (:func:`real_user_env`): the default store (``$PYBK_ROOT``),
``$HOME``, and the outside uid (``$PYBK_REAL_UID``).
"""

from __future__ import annotations

import os
import shutil

from pybk.core.errors import UsageError

#: the outside (real) uid of a process that entered its namespace
ENV_REAL_UID = "PYBK_REAL_UID"
#: the outside (real) gid
ENV_REAL_GID = "PYBK_REAL_GID"

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

#: ``/proc/self/uid_map`` of the initial user namespace
_INITIAL_MAP = [b"0", b"0", b"4294967295"]

_in_userns: bool | None = None


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace (its uid map is not the initial one's
    ``0 0 4294967295``)."""
    global _in_userns
    if _in_userns is None:
        try:
            # bytes: no text codec to import on the way (this runs on every build)
            with open("/proc/self/uid_map", "rb") as f:
                lines = [line.split() for line in f.read().splitlines() if line.strip()]
        except OSError:
            lines = [_INITIAL_MAP]
        _in_userns = lines != [_INITIAL_MAP]
    return _in_userns


def needs_namespace() -> bool:
    """Whether this process must enter a user namespace before running the engine: it is
    not root and not in a user namespace already."""
    return os.geteuid() != 0 and not in_user_namespace()


def sub_ranges(path: str, name: str | None, ident: int) -> list[tuple[int, int]]:
    """``(start, count)`` of every range ``path`` (``/etc/subuid`` or ``/etc/subgid``) gives
    the user called ``name`` or with id ``ident``, in file order."""
    ranges: list[tuple[int, int]] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or line.lstrip().startswith("#"):
            continue
        who, start, count = parts
        if who not in (name, str(ident)):
            continue
        try:
            ranges.append((int(start), int(count)))
        except ValueError:
            continue
    return [(s, c) for s, c in ranges if c > 0]


def map_arguments(ident: int, ranges: list[tuple[int, int]]) -> list[str]:
    """``newuidmap`` arguments after the pid: ``ident`` as 0, the ranges as 1..N."""
    args = ["0", str(ident), "1"]
    inside = 1
    for start, count in ranges:
        args += [str(inside), str(start), str(count)]
        inside += count
    return args


def _user_name(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return os.environ.get("USER") or os.environ.get("LOGNAME")


def _group_name(gid: int) -> str | None:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def real_user_env() -> dict[str, str]:
    """What depends on the real user, computed before entering: the default store
    (``$PYBK_ROOT``, :func:`pybk.core.paths.default_root`), ``$HOME`` and the real uid and gid
    (``$PYBK_REAL_UID``, ``$PYBK_REAL_GID``)."""
    from pybk.core.paths import default_root

    env = {ENV_REAL_UID: str(os.getuid()), ENV_REAL_GID: str(os.getgid()),
           "HOME": os.path.expanduser("~"), "PYBK_ROOT": default_root()}
    return env


def _fail(message: str) -> UsageError:
    return UsageError(f"rootless: {message}")


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def enter(subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> None:
    """Enter a user namespace mapping this user to root and its sub-ids to 1..N, then a
    private mount namespace. Raises :class:`~pybk.core.errors.UsageError` (exit 2) naming
    what to install or configure when it cannot."""
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    user = _user_name(uid)
    tools = {tool: shutil.which(tool) for tool in ("newuidmap", "newgidmap")}
    missing = [tool for tool, path in tools.items() if path is None]
    if missing:
        raise _fail(f"{' and '.join(missing)} not found: install the uidmap package "
                    "(apt-get install uidmap) to build as a user other than root")
    uids = sub_ranges(subuid, user, uid)
    gids = sub_ranges(subgid, _group_name(gid), gid) or sub_ranges(subgid, user, uid)
    for ranges, path in ((uids, subuid), (gids, subgid)):
        if not ranges:
            raise _fail(f"no subordinate id range for user {user or uid} in {path}: add one "
                        f"(e.g. `usermod --add-subuids 100000-165535 --add-subgids "
                        f"100000-165535 {user or uid}` as root)")
    env = real_user_env()
    libc = _libc()
    read, write = os.pipe()
    parent = os.getpid()
    helper = os.fork()
    if helper == 0:  # the helper: wait until the parent unshared, write both maps at once
        code = 1
        try:
            os.close(write)
            if os.read(read, 1) == b"1":
                import subprocess

                children = [subprocess.Popen(
                    [tools[tool], str(parent), *map_arguments(ident, ranges)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    for tool, ident, ranges in (("newuidmap", uid, uids),
                                                ("newgidmap", gid, gids))]
                code = 0
                for tool, child in zip(("newuidmap", "newgidmap"), children, strict=True):
                    _, err = child.communicate()
                    if child.returncode != 0:
                        os.write(2, f"rootless: {tool} failed: "
                                    f"{err.decode(errors='replace').strip()}\n".encode())
                        code = 3
        finally:
            os._exit(code)
    os.close(read)
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        os.write(write, b"0")
        os.close(write)
        os.waitpid(helper, 0)
        raise _fail(f"the kernel refuses a user namespace ({os.strerror(err)}): allow "
                    "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                    "user.max_user_namespaces > 0)")
    os.write(write, b"1")
    os.close(write)
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise _fail(f"could not map the ids of user {user or uid} (newuidmap/newgidmap "
                    f"failed; check {subuid}, {subgid} and that newuidmap is setuid root)")
    global _in_userns
    _in_userns = True
    if libc.unshare(CLONE_NEWNS) != 0:
        raise _fail(f"no mount namespace: {os.strerror(ctypes.get_errno())}")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise _fail(f"could not make mounts private: {os.strerror(ctypes.get_errno())}")
    os.environ.update(env)


def overlay_opaque_xattr() -> str:
    """The xattr marking an opaque directory in an overlay upper dir: ``trusted.overlay.opaque``
    for real root; ``user.overlay.opaque`` in a user namespace, where ``trusted.*`` cannot be
    set (overlayfs reads it with the ``userxattr`` mount option, as fuse-overlayfs does)."""
    return "user.overlay.opaque" if in_user_namespace() else "trusted.overlay.opaque"


def mapped_ids() -> str:
    """The ids this process's user namespace maps, for messages (``0-65536``)."""
    try:
        with open("/proc/self/uid_map", "rb") as f:
            rows = [tuple(map(int, line.split())) for line in f if line.strip()]
    except (OSError, ValueError):
        return "unknown"
    spans: list[list[int]] = []
    for inside, _, count in sorted(rows):
        if spans and spans[-1][1] == inside:
            spans[-1][1] = inside + count
        else:
            spans.append([inside, inside + count])
    return ", ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in spans)
