"""The wire protocol between ``pybk`` and ``pybkd``, and its client side.

With ``--addr unix:///PATH`` (before the command) or ``$PYBK_HOST``, the command runs in the
daemon: :func:`run_remote` sends the arguments, the environment and its stdin, stdout, stderr
and working directory (as file descriptors, ``SCM_RIGHTS``) over the unix socket, forwards
Ctrl-C and exits with the daemon's exit code.

Only the standard library's cheapest modules are imported here (os, sys, socket, signal,
contextlib) so a command answered by the daemon pays for the interpreter and nothing else.

Wire format, client to daemon: one message carrying the four descriptors (stdin, stdout,
stderr, cwd) whose payload is a 4-byte big-endian length and then NUL-separated fields:
``pybk1``, the argument count, the arguments, ``KEY=VALUE`` environment entries. Then a byte
``I`` per interrupt. Daemon to client: ``E`` and the exit code as one byte.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

ENV_HOST = "PYBK_HOST"
PROTOCOL = b"pybk1"
INTERRUPT = b"I"
EXIT = b"E"
#: global options that take a value (the scan must skip their argument)
_VALUED = ("--root", "--config")
#: the largest request a daemon reads
MAX_REQUEST = 16 << 20


class AddressError(Exception):
    """A daemon address that cannot be used; the message is shown as is (exit 2)."""


def split_address(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(address, argv without --addr)``: ``--addr`` is looked for among the global options,
    before the command."""
    rest: list[str] = []
    address = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--addr":
            if i + 1 >= len(argv):
                raise AddressError("pybk: argument --addr: expected one argument")
            address = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--addr="):
            address = arg[len("--addr="):]
            i += 1
            continue
        if not arg.startswith("-") or arg == "--":
            break
        rest.append(arg)
        i += 1
        if arg in _VALUED and i < len(argv):
            rest.append(argv[i])
            i += 1
    return address, rest + argv[i:]


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
    if scheme == "tcp":
        raise AddressError(f"pybk: {address}: tcp:// daemon addresses are not supported yet; "
                           "use unix:///PATH")
    raise AddressError(f"pybk: {address}: unsupported daemon address scheme {scheme!r}; "
                       "use unix:///PATH")


def encode_request(argv: list[str]) -> bytes:
    """The client's message: the arguments and this process's environment."""
    fields = [PROTOCOL, str(len(argv)).encode(), *map(os.fsencode, argv)]
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


def run_remote(address: str, argv: list[str]) -> int:
    """Run ``pybk ARGV`` in the daemon at ``address``; return its exit code."""
    import signal

    path = socket_path(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        print(f"error: cannot reach pybkd at {address}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        fds, opened = _std_fds()
    except OSError as exc:
        print(f"error: pybk: cannot open the working directory: {exc.strerror}",
              file=sys.stderr)
        return 2
    message = encode_request(argv)
    try:
        sent = socket.send_fds(sock, [message], fds)
        sock.sendall(message[sent:])
    finally:
        for fd in opened:
            os.close(fd)

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
        reply += chunk
    sock.close()
    return reply[1] if reply[:1] == EXIT else 1


def read_request(conn: socket.socket) -> tuple[list[int], list[str], dict[bytes, bytes]]:
    """(descriptors, argv, environment) sent by :func:`run_remote`."""
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
    if fields[0] != PROTOCOL:
        raise ConnectionError(f"unknown protocol {fields[0][:16]!r}")
    argc = int(fields[1])
    argv = [os.fsdecode(a) for a in fields[2:2 + argc]]
    env = dict(entry.partition(b"=")[::2] for entry in fields[2 + argc:] if entry)
    return fds, argv, env


def run_if_remote(argv: list[str]) -> tuple[int | None, list[str]]:
    """Run ``pybk ARGV`` in the daemon named by ``--addr`` or ``$PYBK_HOST``: ``(its exit
    code, [])``; ``(2, [])`` for an address that cannot be used (reported here); ``(None,
    ARGV without --addr)`` when no daemon is named and the command runs in this process."""
    try:
        address, rest = split_address(argv)
        address = address or os.environ.get(ENV_HOST) or None
        if address is None:
            return None, rest
        return run_remote(address, rest), []
    except AddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, []
