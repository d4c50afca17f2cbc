"""The wire protocol between ``pybk`` and ``pybkd``, and its client side.

A command runs in a daemon in two ways:

- **named**: ``--addr unix:///PATH`` (before the command) or ``$PYBK_HOST`` —
  :func:`run_remote` sends it there, and a daemon that cannot be reached is an error;
- **automatically**: with neither (``$PYBK_HOST`` unset), :func:`run_auto` offers it to the
  daemon on the store's default socket (:func:`pybk.core.paths.store_socket`), which runs it
  only if it would do exactly what this process would do (the same store, configuration, pybk
  and plugins, and the same user); otherwise, or without a daemon, the command runs here.

Either way the arguments, the environment and the client's stdin, stdout, stderr and working
directory (as file descriptors, ``SCM_RIGHTS``) go over the unix socket; Ctrl-C is forwarded
and the client exits with the daemon's exit code.

Only the standard library's cheapest modules are imported here (os, sys, errno, socket, signal,
contextlib, collections.abc, and :mod:`pybk.core.paths`) so a command answered by the daemon pays for the
interpreter and nothing else.

Wire format, client to daemon: one message carrying the four descriptors (stdin, stdout,
stderr, cwd) whose payload is a 4-byte big-endian length and then NUL-separated fields:
``pybk2``, the mode (``run`` or ``auto``), the client's :func:`identity`, the argument count,
the arguments, ``KEY=VALUE`` environment entries. Daemon to client: ``A`` when the command is
about to run (in ``auto`` mode the daemon then waits for the client's ``G``), or ``N`` in
``auto`` mode when it will not run the command (nothing ran); at the end ``E`` and the exit code
as one byte. Client to daemon, afterwards: a byte ``I`` per interrupt.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections.abc import Iterator

from pybk.core.paths import default_config, default_root

ENV_HOST = "PYBK_HOST"
#: buildctl's variable, read when ``$PYBK_HOST`` is not set
ENV_BUILDKIT_HOST = "BUILDKIT_HOST"
#: buildctl's TLS flags (global options, before the command), for ``tcp://`` daemons
TLS_FLAGS = ("--tlscacert", "--tlscert", "--tlskey", "--tlsservername", "--tlsdir")
PROTOCOL = b"pybk2"
RUN, AUTO = "run", "auto"
ACCEPTED = b"A"
NOT_SERVED = b"N"
GO = b"G"
INTERRUPT = b"I"
EXIT = b"E"
#: global options that take a value (the scan must skip their argument)
_VALUED = ("--root", "--config")
#: global options that change nothing about where a command runs
_PLAIN = ("--debug", "--version", "-h", "--help")
#: the largest request a daemon reads
MAX_REQUEST = 16 << 20
#: how long an automatic attempt waits for the daemon's answer before running here
AUTO_TIMEOUT = 5.0
#: sun_path's size: longer socket paths are reached through their directory's descriptor
_SUN_PATH = 108


class AddressError(Exception):
    """A daemon address that cannot be used; the message is shown as is (exit 2)."""


class Request:
    """What a client sent (see the module's docstring)."""

    __slots__ = ("argv", "env", "fds", "identity", "mode")

    def __init__(self, fds: list[int], mode: str, identity: str, argv: list[str],
                 env: dict[bytes, bytes]):
        self.fds, self.mode, self.identity, self.argv, self.env = fds, mode, identity, argv, env


def split_address(argv: list[str], tls: dict[str, str] | None = None
                  ) -> tuple[str | None, list[str]]:
    """``(address, argv without --addr)``: ``--addr`` is looked for among the global options,
    before the command; so are the TLS flags, which go into ``tls`` (``{"--tlscacert": PATH
    …}``) when it is given."""
    rest: list[str] = []
    address = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name == "--addr" or (tls is not None and name in TLS_FLAGS):
            if not eq:
                if i + 1 >= len(argv):
                    raise AddressError(f"pybk: argument {name}: expected one argument")
                value = argv[i + 1]
                i += 1
            i += 1
            if name == "--addr":
                address = value
            else:
                tls[name] = value  # type: ignore[index]
            continue
        if not arg.startswith("-") or arg == "--":
            break
        rest.append(arg)
        i += 1
        if arg in _VALUED and i < len(argv):
            rest.append(argv[i])
            i += 1
    return address, rest + argv[i:]


def resolve_address(argv: list[str], tls: dict[str, str] | None = None
                    ) -> tuple[str | None, list[str]]:
    """``(address, argv without --addr)``: ``--addr``, else ``$PYBK_HOST``, else
    ``$BUILDKIT_HOST``; ``""`` (given empty) means this process, ``None`` (none given) the
    store's daemon if it fits. ``tls`` collects the TLS flags (see :func:`split_address`)."""
    address, rest = split_address(argv, tls)
    if address is None:
        address = os.environ.get(ENV_HOST)
    if address is None:
        address = os.environ.get(ENV_BUILDKIT_HOST) or None
    return address, rest


def socket_path(address: str) -> str:
    """The socket path of a ``unix://`` address; other schemes are refused."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise AddressError(f"pybk: daemon address {address!r} has no scheme; "
                           "use unix:///PATH")
    if scheme == "unix":
        if not rest:
            raise AddressError("pybk: daemon address unix:// has no socket path")
        return rest
    raise AddressError(f"pybk: {address}: unsupported daemon address scheme {scheme!r}; "
                       "use unix:///PATH or tcp://HOST:PORT")


@contextlib.contextmanager
def reachable(path: str) -> Iterator[str]:
    """``path``, or for one too long for a socket address, the same file reached through a
    descriptor of its directory (``/proc/self/fd/N/NAME``) while the block runs."""
    if len(os.fsencode(path)) < _SUN_PATH:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def identity() -> str:
    """Which pybk this process runs: the interpreter's bytecode tag and the package's
    directory (a daemon serves a client automatically only when both are its own)."""
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return f"{sys.implementation.cache_tag} {package}"


def auto_target(argv: list[str]) -> tuple[str, str | None] | None:
    """``(store, configuration file)`` ``pybk ARGV`` would use in this process (``--root``,
    else :func:`~pybk.core.paths.default_root`; ``--config``, else
    :func:`~pybk.core.paths.default_config`), as
    absolute paths; None when a global option is not one this scan knows for sure (an
    abbreviation, an empty value …): such a command always runs in this process."""
    root = config = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                i += 1
                value = argv[i]
            if not value:
                return None
            if name == "--root":
                root = value
            else:
                config = value
        elif argv[i] not in _PLAIN:
            return None
        i += 1
    config = config or default_config()
    return (os.path.abspath(root or default_root()),
            os.path.abspath(config) if config else None)


def encode_request(argv: list[str], mode: str = RUN) -> bytes:
    """The client's message: the mode, who it is, the arguments and this process's
    environment."""
    fields = [PROTOCOL, mode.encode(), os.fsencode(identity()), str(len(argv)).encode(),
              *map(os.fsencode, argv)]
    fields += [key + b"=" + value for key, value in os.environb.items()]
    body = b"\0".join(fields)
    return len(body).to_bytes(4, "big") + body


def _std_fds() -> tuple[list[int], list[int]]:
    """(stdin, stdout, stderr, cwd) descriptors to pass, and the ones opened here."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
            opened.append(fds[-1])
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    opened.append(cwd)
    return fds + [cwd], opened


def _connect(path: str, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with reachable(path) as where:
            sock.connect(where)
    except OSError:
        sock.close()
        raise
    return sock


def _send_request(sock: socket.socket, argv: list[str], mode: str) -> None:
    """Send the request with the descriptors; OSError when the working directory cannot be
    opened or the daemon went away."""
    fds, opened = _std_fds()
    message = encode_request(argv, mode)
    try:
        sent = socket.send_fds(sock, [message], fds)
        sock.sendall(message[sent:])
    finally:
        for fd in opened:
            os.close(fd)


def _await_exit(sock: socket.socket) -> int:
    """Forward Ctrl-C until the daemon sends the exit code; return it."""
    import signal

    forwarded = []

    def interrupt(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            sock.send(INTERRUPT)
        forwarded.append(signum)
        if len(forwarded) == 2:  # a third Ctrl-C leaves at once, whatever the daemon does
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGINT, interrupt)
    reply = b""
    while len(reply) < 2:
        try:
            chunk = sock.recv(2 - len(reply))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            print("error: pybkd closed the connection before the command finished",
                  file=sys.stderr)
            return 1
        reply = (reply + chunk).lstrip(ACCEPTED)
    sock.close()
    return reply[1] if reply[:1] == EXIT else 1


def run_remote(address: str, argv: list[str], tls: dict[str, str] | None = None) -> int:
    """Run ``pybk ARGV`` in the daemon at ``address``; return its exit code. A ``tcp://``
    address is served over gRPC (:mod:`pybk.core.remote.clientside`; ``tls``: buildctl's TLS
    flags), a ``unix://`` one by the local protocol."""
    if address.startswith("tcp://"):
        from pybk.core.cli.grpcclient import run_grpc

        return run_grpc(address, argv, tls or {})
    if tls:
        raise AddressError(f"pybk: {next(iter(tls))} is for tcp:// daemon addresses")
    path = socket_path(address)
    try:
        sock = _connect(path)
    except OSError as exc:
        print(f"error: cannot reach pybkd at {address}: {exc.strerror}", file=sys.stderr)
        return 2
    if _peer_uid(sock) != os.geteuid():
        # the local protocol runs commands as the daemon's user with this process's files:
        # for another user's daemon, a session, which serves only what the command names
        from pybk.core.cli.grpcclient import run_unix_session

        return run_unix_session(address, sock, argv)
    try:
        _send_request(sock, argv, RUN)
    except OSError as exc:
        sock.close()
        print(f"error: pybk: cannot send the command to pybkd: {exc.strerror}",
              file=sys.stderr)
        return 2
    return _await_exit(sock)


def _peer_uid(sock: socket.socket) -> int:
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[4:8], sys.byteorder)


def run_auto(path: str, argv: list[str]) -> tuple[int | None, bool]:
    """Offer ``pybk ARGV`` to the daemon listening on ``path``: ``(its exit code, True)`` when
    it ran it; ``(None, listening)`` when it did not run (no daemon, a daemon of another user
    or one that refused the command, or no answer within :data:`AUTO_TIMEOUT`), ``listening``
    False when nothing listens on ``path`` (a missing or stale socket)."""
    try:
        sock = _connect(path, AUTO_TIMEOUT)
    except OSError as exc:
        return None, exc.errno not in (errno.ENOENT, errno.ECONNREFUSED)
    try:
        if _peer_uid(sock) != os.geteuid():
            return None, True  # never another user's daemon, nor our descriptors to it
        _send_request(sock, argv, AUTO)
        if sock.recv(1) != ACCEPTED:
            return None, True
        sock.sendall(GO)
    except OSError:
        sock.close()
        return None, True
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return _await_exit(sock), True


def _global_options(argv: list[str]) -> dict[str, str]:
    """``--root``/``--config`` given before the command (``--x V`` and ``--x=V``)."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name, eq, value = argv[i].partition("=")
        if name in ("--root", "--config"):
            if not eq:
                if i + 1 >= len(argv):
                    break
                i += 1
                value = argv[i]
            found[name] = value
        i += 1
    return found


def daemon_argv(argv: list[str], *, root: str, config_path: str | None) -> list[str]:
    """The client's arguments with the daemon's store and config; a different ``--root`` or
    ``--config`` is a usage error (the daemon serves one store with one configuration)."""
    from pybk.core.errors import UsageError

    given = _global_options(argv)
    same = os.path.realpath
    if "--root" in given and same(given["--root"]) != same(root):
        raise UsageError(f"pybk: --root {given['--root']} is not the store of the daemon "
                         f"({root}); leave --root out, or run without --addr")
    if "--config" in given and (config_path is None
                                or same(given["--config"]) != same(config_path)):
        raise UsageError(f"pybk: --config {given['--config']} is not the daemon's "
                         "configuration; restart pybkd with --config, or run without --addr")
    prefix = ["--root", root] + (["--config", config_path] if config_path else [])
    return prefix + argv


def read_request(conn: socket.socket) -> Request:
    """What :func:`run_remote` or :func:`run_auto` sent."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 8)
    if len(fds) != 4 or len(data) < 4:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("not a pybk client")
    size = int.from_bytes(data[:4], "big")
    if size > MAX_REQUEST:
        raise ConnectionError("request too large")
    body = bytearray(data[4:])
    while len(body) < size:
        chunk = conn.recv(min(1 << 20, size - len(body)))
        if not chunk:
            raise ConnectionError("client went away")
        body += chunk
    fields = bytes(body).split(b"\0")
    if fields[0] != PROTOCOL or len(fields) < 4:
        raise ConnectionError(f"unknown protocol {fields[0][:16]!r}")
    mode, who = fields[1].decode(), os.fsdecode(fields[2])
    argc = int(fields[3])
    argv = [os.fsdecode(a) for a in fields[4:4 + argc]]
    env = dict(entry.partition(b"=")[::2] for entry in fields[4 + argc:] if entry)
    return Request(fds, mode, who, argv, env)


def run_if_remote(argv: list[str]) -> tuple[int | None, list[str]]:
    """Run ``pybk ARGV`` in the daemon named by ``--addr`` or ``$PYBK_HOST``: ``(its exit
    code, [])``; ``(2, [])`` for an address that cannot be used (reported here); ``(None,
    ARGV without --addr)`` when no daemon is named (or it is named empty) and the command runs
    in this process."""
    try:
        tls: dict[str, str] = {}
        address, rest = resolve_address(argv, tls)
        if not address:
            if tls:
                raise AddressError(f"pybk: {next(iter(tls))} needs --addr tcp://HOST:PORT")
            return None, rest
        return run_remote(address, rest, tls), []
    except AddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, []
