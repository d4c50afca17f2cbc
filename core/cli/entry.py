"""The ``pybk`` command's entry point: a thin client for ``pybkd``, or the embedded engine.

With ``--addr unix:///PATH`` (before the command) or ``$PYBK_HOST``, the command runs in the
daemon: this module sends the arguments, the environment and its stdin, stdout, stderr and
working directory (as file descriptors, ``SCM_RIGHTS``) over the unix socket, forwards Ctrl-C
and exits with the daemon's exit code. Otherwise it runs :func:`pybk.core.cli.commands.main` in-process.

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


def _request(argv: list[str]) -> bytes:
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
    message = _request(argv)
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


def main(argv: list[str] | None = None) -> int:
    """The ``pybk`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        address, rest = split_address(argv)
        address = address or os.environ.get(ENV_HOST) or None
        if address is not None:
            return run_remote(address, rest)
    except AddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from pybk.core.cli.commands import main as embedded

    return embedded(rest)


if __name__ == "__main__":
    sys.exit(main())
