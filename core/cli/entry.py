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

import sys

from pybk.core.cli.remote import (
    AddressError,
    auto_target,
    resolve_address,
    run_auto,
    run_remote,
)
from pybk.core.paths import store_socket


def main(argv: list[str] | None = None) -> int:
    """The ``pybk`` console script."""
    tls: dict[str, str] = {}
    try:
        address, rest = resolve_address(list(sys.argv[1:] if argv is None else argv), tls)
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
    from pybk.core.cli.commands import main as embedded

    return embedded(rest)


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
