"""Socket activation: serve the listening socket systemd (or any launcher doing the same)
passed to ``pybkd``, as ``sd_listen_fds(3)`` describes.

With ``LISTEN_PID`` equal to the daemon's pid and ``LISTEN_FDS`` ≥ 1, descriptor 3
(``SD_LISTEN_FDS_START``) is a socket the launcher created, bound and put in listening state;
the daemon serves it instead of binding its own, takes its path from ``getsockname`` and leaves
the socket file in place when it stops (the launcher owns it). The variables are removed from
the environment at once (``sd_listen_fds(1)``), so nothing the daemon starts inherits them.
See ``contrib/systemd/`` and ``docs/daemon.md``.
"""

from __future__ import annotations

import os
import socket
import stat

from pybk.core.errors import UsageError

#: the first descriptor passed (SD_LISTEN_FDS_START)
LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _refuse(message: str) -> UsageError:
    return UsageError(f"pybkd: socket activation: {message}")


def passed_listener(warn: list[str] | None = None) -> socket.socket | None:
    """The unix stream socket in listening state passed on descriptor 3, or None when the
    environment passes none to this process. ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` are removed from the environment either way. A descriptor that is not
    a listening unix stream socket is a usage error (exit 2); more than one socket passed adds
    a message to ``warn`` (only the first is served)."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in _VARIABLES:
        os.environ.pop(name, None)
    if pid is None or count is None:
        return None
    try:
        if int(pid) != os.getpid():
            return None  # meant for another process
        n = int(count)
    except ValueError:
        raise _refuse(f"LISTEN_PID={pid!r} LISTEN_FDS={count!r}: not numbers") from None
    if n < 1:
        return None
    if n > 1 and warn is not None:
        warn.append(f"socket activation passed {n} sockets; only the first (descriptor "
                    f"{LISTEN_FDS_START}) is served")
    try:
        mode = os.fstat(LISTEN_FDS_START).st_mode
    except OSError as exc:
        raise _refuse(f"descriptor {LISTEN_FDS_START}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise _refuse(f"descriptor {LISTEN_FDS_START} is not a socket")
    listener = socket.socket(fileno=LISTEN_FDS_START)
    problem = None
    if listener.family != socket.AF_UNIX:
        problem = f"is not a unix socket ({listener.family.name})"
    elif listener.type != socket.SOCK_STREAM:
        problem = f"is not a stream socket ({listener.type.name})"
    elif not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        problem = "is not listening"
    elif not socket_path(listener):
        problem = "has no path (abstract or unnamed)"
    if problem is not None:
        listener.detach()  # leave descriptor 3 as it was
        raise _refuse(f"the socket on descriptor {LISTEN_FDS_START} {problem}; pass a "
                      "listening unix stream socket (ListenStream=/PATH)")
    listener.set_inheritable(False)
    listener.setblocking(True)
    return listener


def socket_path(listener: socket.socket) -> str:
    """The filesystem path ``listener`` is bound to ('' for an abstract or unnamed one)."""
    name = listener.getsockname()
    if isinstance(name, bytes) or not name or name.startswith("\0"):
        return ""
    return os.path.abspath(name)


def check_addr(addr: str | None, path: str) -> None:
    """``--addr`` given with socket activation must name the passed socket."""
    if addr is None:
        return
    from pybk.core.cli import remote

    try:
        named = remote.socket_path(addr)
    except remote.AddressError as exc:
        raise UsageError(str(exc).replace("pybk:", "pybkd:", 1)) from None
    if os.path.realpath(named) != os.path.realpath(path):
        raise UsageError(f"pybkd: --addr {addr} is not the socket passed by socket activation "
                         f"(unix://{path}); leave --addr out")


def unserved_config_address(addresses: list[str], path: str) -> str | None:
    """A warning when the configuration's first ``unix://`` ``[grpc] address`` (the socket
    pybkd would bind without socket activation) is not the passed socket, else None."""
    first = next((a for a in addresses if a.startswith("unix://")), None)
    if first is None or os.path.realpath(first[len("unix://"):]) == os.path.realpath(path):
        return None
    return (f"[grpc] address {first} is not served: socket activation passed unix://{path}, "
            "which is served instead")
