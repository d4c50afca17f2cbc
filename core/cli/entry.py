"""The ``pybk`` command's entry point: a thin client for ``pybkd``, or the embedded engine.

With ``--addr unix:///PATH`` or ``--addr tcp://HOST:PORT`` (before the command; TLS from
buildctl's ``--tlscacert``/``--tlscert``/``--tlskey``/``--tlsservername``/``--tlsdir``), or
``$PYBK_HOST`` (else ``$BUILDKIT_HOST``) the command runs in that daemon
(:mod:`pybk.core.cli.remote`). With neither, it is offered to the daemon on the store's
socket, which runs it only if it would do exactly what this process would (the same store,
configuration, pybk and user); ``--addr ''`` or an empty ``$PYBK_HOST`` skip that. Otherwise
:func:`pybk.core.cli.commands.main` runs it in this process, after starting a daemon for the
next commands when the configuration asks for one (``[pybk] daemon = "auto"``,
:mod:`pybk.core.cli.ondemand`). Nothing but the standard library's cheapest modules and the
client is imported until the command is known to run here.
"""

from __future__ import annotations

import os
import sys

from pybk.core.cli.remote import (
    ENV_BUILDKIT_HOST,
    ENV_HOST,
    AddressError,
    auto_target,
    resolve_address,
    run_auto,
    run_remote,
    split_address,
)
from pybk.core.paths import store_socket


def main(argv: list[str] | None = None) -> int:
    """The ``pybk`` console script."""
    tls: dict[str, str] = {}
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        explicit, _ = split_address(args, {})
        address, rest = resolve_address(args, tls)
        at = _command_at(rest)
        command = rest[at] if at is not None else None
        if command == "builder":
            from pybk.core.cli.builders import builder_main

            return builder_main(rest[at + 1:])  # type: ignore[operator]
        if command == "build":
            routed = _builder_route(rest, at, explicit, address, tls)  # type: ignore[arg-type]
            if routed is not None:
                if isinstance(routed, int):
                    return routed
                address, rest, tls = routed
        if address:
            return run_remote(address, rest, tls)
        if tls:
            raise AddressError(f"pybk: {next(iter(tls))} needs --addr tcp://HOST:PORT")
    except AddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if address is None:
        try:
            code = _run_in_store_daemon(rest)
        except KeyboardInterrupt:  # while waiting for the daemon's answer
            print("interrupted", file=sys.stderr)
            return 130
        if code is not None:
            return code
    if os.geteuid() != 0 and _needs_engine(rest, at):
        code = _enter_user_namespace()
        if code:
            return code
    from pybk.core.cli.commands import main as embedded

    return embedded(rest)


#: commands that run as the user, outside a user namespace (they use no store)
_OUTSIDE = {None, "plugins", "builder"}


def _needs_engine(argv: list[str], at: int | None) -> bool:
    """Whether ``pybk ARGV`` uses the engine (so, as a user other than root, runs in a user
    namespace): every command but ``plugins``, ``--help`` and ``debug rootless`` (which
    checks whether the machine allows one)."""
    command = argv[at] if at is not None else None
    if command in _OUTSIDE or "-h" in argv or "--help" in argv or "--version" in argv:
        return False
    return not (command == "debug" and at is not None and "rootless" in argv[at + 1:at + 2])


def _enter_user_namespace() -> int:
    """Enter the user namespace of a rootless command (:mod:`pybk.core.userns`): 0, or 2
    with the reason on stderr."""
    from pybk.core.userns import enter, needs_namespace

    if not needs_namespace():
        return 0
    try:
        enter()
    except Exception as exc:  # UsageError: what to install or configure
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _command_at(argv: list[str]) -> int | None:
    """The index of the command (the first argument that is not a global option)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--root", "--config"):
            i += 2
            continue
        if not arg.startswith("-"):
            return i
        if arg == "--":
            return None
        i += 1
    return None


def _builder_route(argv: list[str], at: int, explicit: str | None, address: str | None,
                   tls: dict[str, str]) -> tuple[str, list[str], dict[str, str]] | int | None:
    """The node of a builder a ``pybk build`` goes to (:mod:`pybk.core.cli.builders`), an exit
    code, or None (no builder involved). ``--builder``, else (unless ``--addr`` or
    ``$PYBK_HOST``/``$BUILDKIT_HOST``) ``$PYBK_BUILDER``, else the builder in use."""
    name = None
    if "--builder" in argv or any(a.startswith("--builder=") for a in argv):
        from pybk.core.cli.builders import split_builder

        try:
            name, rest = split_builder(argv[at + 1:])
        except Exception as exc:  # UsageError
            print(f"error: {exc}", file=sys.stderr)
            return 2
        argv = argv[:at + 1] + rest
        if name is not None and explicit is not None:
            print("error: --builder and --addr cannot be used together", file=sys.stderr)
            return 2
    if name is None:
        if explicit is not None or os.environ.get(ENV_HOST) is not None or \
                os.environ.get(ENV_BUILDKIT_HOST):
            return None
        name = os.environ.get("PYBK_BUILDER") or None
    if name is None:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".config")
        if not os.path.exists(os.path.join(base, "pybk", "builders.json")):
            return None
    from pybk.core.cli.builders import current_builder, route_build
    from pybk.core.cli.errors import run_reported

    if name is None:
        name = current_builder()
        if name is None:
            return None
    if tls:
        print(f"error: {next(iter(tls))}: a builder's nodes have their own TLS files",
              file=sys.stderr)
        return 2
    found: list[tuple[str, list[str], dict[str, str]]] = []

    def choose() -> int:
        found.append(route_build(name, argv, at))
        return 0

    code = run_reported(choose)
    return found[0] if found else code


def _run_in_store_daemon(argv: list[str]) -> int | None:
    """Offer the command to the store's daemon: its exit code, or None to run it here (and
    start a daemon for the next commands if the configuration says so)."""
    target = auto_target(argv)
    if target is None:
        return None
    root, config = target
    path = store_socket(root)
    code, listening = run_auto(path, argv)
    if code is None and not listening and config is not None:
        from pybk.core.cli.ondemand import start_daemon, wants_daemon

        if wants_daemon(config):
            start_daemon(root, config, path)
    return code


if __name__ == "__main__":
    sys.exit(main())
