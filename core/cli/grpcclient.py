"""``pybk --addr tcp://HOST:PORT COMMAND``: check the command line here (a bad flag is exit 2
before anything is sent), then run it in the remote pybkd (:mod:`pybk.core.remote.clientside`).
"""

from __future__ import annotations

from pybk.core.errors import UsageError
from pybk.core.remote.clientside import Client, credentials

#: commands that read files named on the command line and need no daemon: run here
_LOCAL_DEBUG = ("dump-llb",)


def run_grpc(address: str, argv: list[str], tls: dict[str, str]) -> int:
    """Run ``pybk ARGV`` in the pybkd at ``address`` (``tcp://HOST:PORT``); its exit code."""
    from pybk.core.cli.errors import run_reported

    return run_reported(lambda: _run(address, argv, tls), debug="--debug" in argv)


def _run(address: str, argv: list[str], tls: dict[str, str]) -> int:
    from pybk.core.cli.commands import needs_plugins, shared_parser

    ns = shared_parser(needs_plugins(argv)).parse_args(argv)
    if ns.command is None:
        raise UsageError("no command given")
    if ns.root is not None or ns.config is not None:
        raise UsageError("--root and --config are the daemon's own; leave them out with "
                         "--addr tcp://")
    if ns.command == "debug" and getattr(ns, "debug_command", None) in _LOCAL_DEBUG:
        from pybk.core.cli.commands import main

        return main(argv)  # reads a file of this machine and needs no daemon
    if ns.command == "debug" and getattr(ns, "debug_command", None) == "config" and ns.file:
        from pybk.core.cli.commands import main

        return main(argv)  # checks a file of this machine; without one: the daemon's config
    target = address[len("tcp://"):]
    creds, server_name = credentials(tls)
    request = None
    if ns.command == "build":
        from pybk.core.cli.commands import parse_build_request

        request = parse_build_request(ns)
    client = Client(argv, command=ns.command, request=request, debug=bool(ns.debug))
    start = client.start_frame()
    return client.run(target, creds, server_name, start)


