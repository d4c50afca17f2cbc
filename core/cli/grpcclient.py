"""A command in pybkd through a session (:mod:`pybk.core.remote.clientside`): ``pybk --addr
tcp://HOST:PORT COMMAND`` over gRPC, or over pybkd's unix socket when the daemon runs as
another user (the local protocol is for the daemon's own user). The command line is checked
here first: a bad flag is exit 2 before anything is sent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.remote.clientside import Client, GrpcTransport, SocketTransport, credentials

#: commands that read files named on the command line and need no daemon: run here (a
#: daemon never opens a path the client names on its own disk)
_LOCAL_DEBUG = ("dump-llb", "context")


def run_grpc(address: str, argv: list[str], tls: dict[str, str]) -> int:
    """Run ``pybk ARGV`` in the pybkd at ``address`` (``tcp://HOST:PORT``); its exit code."""
    from pybk.core.cli.errors import run_reported

    def transport() -> Any:
        creds, server_name = credentials(tls)
        return GrpcTransport(address[len("tcp://"):], creds, server_name)

    return run_reported(lambda: _run(argv, transport), debug="--debug" in argv)


def run_unix_session(address: str, sock: Any, argv: list[str]) -> int:
    """Run ``pybk ARGV`` through a session on ``sock``, connected to pybkd's unix socket."""
    from pybk.core.cli.errors import run_reported

    return run_reported(lambda: _run(argv, lambda: SocketTransport(sock, address)),
                        debug="--debug" in argv)


#: global options that take no value, and the ones a daemon decides (refused)
_GLOBAL_FLAGS = ("--debug",)
_DAEMONS_OWN = ("--root", "--config")


def _command(argv: list[str]) -> int | None:
    """The index of the command in ``argv`` (after the global options); None when there is
    none, or when a global option asks for this process's help or version."""
    for i, arg in enumerate(argv):
        name = arg.partition("=")[0]
        if name in _DAEMONS_OWN:
            raise UsageError("--root and --config are the daemon's own; leave them out")
        if arg in ("-h", "--help", "--version"):
            return None
        if arg in _GLOBAL_FLAGS:
            continue
        if arg.startswith("-"):
            raise UsageError(f"pybk: unrecognized arguments: {arg}")
        return i
    return None


def _run(argv: list[str], transport: Callable[[], Any]) -> int:
    from pybk.core.cli.commands import main

    at = _command(argv)
    if at is None:
        return main(argv)  # help, version: this pybk's
    command, rest = argv[at], argv[at + 1:]
    if command == "debug" and rest and (rest[0] in _LOCAL_DEBUG or (
            rest[0] == "config" and any(not a.startswith("-") for a in rest[1:]))):
        return main(argv)  # reads a file of this machine and needs no daemon
    export_to = None
    if command == "history" and rest[:1] in (["export"], ["trace"]):
        argv, export_to = _export_here(argv, at)
    client = Client(argv, command=command, debug="--debug" in argv[:at])
    if export_to is not None:
        return _run_export(client, transport, export_to)
    client.connect(transport())
    try:
        request = None
        if command == "build":
            from pybk.core.cli.commands import _Parser, add_build_flags, parse_build_request

            parser = _Parser(prog="pybk build")
            add_build_flags(parser)
            # checked here with this process's files and environment; the plugins named are
            # the daemon's to check
            request = parse_build_request(parser.parse_args(rest), plugins=False)
        start = client.start_frame(request)
    except BaseException:
        client.abandon()
        raise
    return client.run(start)


def _export_here(argv: list[str], at: int) -> tuple[list[str], str | None]:
    """``pybk history export … -o FILE`` through a session: the daemon writes the record to
    standard output (``-o -``) and this process writes FILE, on the client's side."""
    out = list(argv)
    for i in range(at + 2, len(out)):
        arg = out[i]
        if arg in ("-o", "--output") and i + 1 < len(out):
            path, out[i + 1] = out[i + 1], "-"
        elif arg.startswith("--output="):
            path, out[i] = arg.partition("=")[2], "--output=-"
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--"):
            path, out[i] = arg[2:].removeprefix("="), "-o-"
        else:
            continue
        return (out, None) if path == "-" else (out, path)
    return out, None


def _run_export(client: Client, transport: Callable[[], Any], path: str) -> int:
    """Run the export with its standard output in ``path`` (0600; removed if it fails)."""
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory", flag="--output")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", flag="--output") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        client.stdout = f
        client.connect(transport())
        try:
            start = client.start_frame(None)
        except BaseException:
            client.abandon()
            raise
        code = client.run(start)
    if code != 0:
        os.unlink(path)
    return code
