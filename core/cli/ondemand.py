"""Starting a ``pybkd`` for a store when a command finds none (``[pybk] daemon = "auto"``).

Imported by the ``pybk`` client only when nothing listens on the store's socket and a
configuration file is in use. The file is read with tomllib alone, for ``[pybk] daemon``; the
configuration machinery (and so every check of the file) is left to the command, which runs in
this process meanwhile: a file the command would refuse starts nothing here (``pybkd`` refuses
it too), and the command reports it.

The daemon is started in the background, detached (its own session, working directory ``/``,
stdin ``/dev/null``), with its output appended to ``ROOT/pybkd.log``, as ``pybkd --on-demand``
on the store's socket: it stops after ``[pybk] daemon-idle-timeout`` without a command. The
command that started it does not wait for it: a daemon takes longer to start (it imports and
warms up everything) than the command's own start-up, and keeps nothing in memory that the
command would have warmed, so the next command is the first one it answers.
"""

from __future__ import annotations

import os
import sys

#: the daemon's output, in the store
LOG = "pybkd.log"


def _key(table: dict[str, object], key: str) -> object:
    """``table[key]``, or the one key differing from it only in case (the loader accepts it
    with a warning)."""
    if key in table:
        return table[key]
    found = [k for k in table if k.lower() == key]
    return table[found[0]] if len(found) == 1 else None


def wants_daemon(config_path: str) -> bool:
    """Whether the file says ``[pybk] daemon = "auto"``; a file that cannot be read or parsed
    says no."""
    import tomllib

    try:
        with open(config_path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return False
    table = _key(data, "pybk")
    return isinstance(table, dict) and _key(table, "daemon") == "auto"


def start_daemon(root: str, config_path: str, path: str) -> bool:
    """Start ``pybkd --on-demand`` for the store ``root`` with ``config_path`` on the socket
    ``path``, unless a daemon holds ``PATH.lock`` (one is starting, serving or stopping there);
    whether one was started. Nothing is reported: the command runs in this process anyway."""
    import fcntl

    try:
        os.makedirs(root, exist_ok=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(lock)
    argv = [sys.executable, "-P", "-m", "pybk.core.cli.daemon", "--on-demand", "--root", root,
            "--config", config_path, "--addr", f"unix://{path}"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYBK_HOST", "PYBK_ROOT", "PYBK_CONFIG")}
    _spawn_detached(argv, env, os.path.join(root, LOG))
    return True


def _spawn_detached(argv: list[str], env: dict[str, str], log: str) -> None:
    """Run ``argv`` as a grandchild in a session of its own (so it is nobody's child here),
    in ``/``, with its output appended to ``log``."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setsid()
            if os.fork() == 0:
                code = 127
                os.chdir("/")
                null = os.open(os.devnull, os.O_RDONLY)
                out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.execve(argv[0], argv, env)
        finally:
            os._exit(code)
    os.waitpid(pid, 0)
