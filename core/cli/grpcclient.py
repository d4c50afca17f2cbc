"""A command in pybkd through a session (:mod:`pybk.core.remote.clientside`): ``pybk --addr
tcp://HOST:PORT COMMAND`` over gRPC, or over pybkd's unix socket when the daemon runs as
another user (the local protocol is for the daemon's own user). The command line is checked
here first: a bad flag is exit 2 before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.remote.clientside import Client, GrpcTransport, SocketTransport, credentials

#: commands that read files named on the command line and need no daemon: run here
_LOCAL_DEBUG = ("dump-llb",)


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


def _run(argv: list[str], transport: Callable[[], Any]) -> int:
    from pybk.core.cli.commands import needs_plugins, shared_parser

    ns = shared_parser(needs_plugins(argv)).parse_args(argv)
    if ns.command is None:
        raise UsageError("no command given")
    if ns.root is not None or ns.config is not None:
        raise UsageError("--root and --config are the daemon's own; leave them out")
    if ns.command == "debug" and getattr(ns, "debug_command", None) in _LOCAL_DEBUG:
        from pybk.core.cli.commands import main

        return main(argv)  # reads a file of this machine and needs no daemon
    if ns.command == "debug" and getattr(ns, "debug_command", None) == "config" and ns.file:
        from pybk.core.cli.commands import main

        return main(argv)  # checks a file of this machine; without one: the daemon's config
    made = transport()
    request = None
    if ns.command == "build":
        from pybk.core.cli.commands import parse_build_request

        request = parse_build_request(ns)
    client = Client(argv, command=ns.command, request=request, debug=bool(ns.debug))
    start = client.start_frame()
    return client.run(made, start)


