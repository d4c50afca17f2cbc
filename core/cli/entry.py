"""The ``pybk`` command's entry point: a thin client for ``pybkd``, or the embedded engine.

With ``--addr unix:///PATH`` (before the command) or ``$PYBK_HOST`` the command runs in the
daemon (:mod:`pybk.core.cli.remote`); otherwise :func:`pybk.core.cli.commands.main` runs it
in this process. Nothing but the standard library's cheapest modules and the client is imported
until the command is known to run here.
"""

from __future__ import annotations

import sys

from pybk.core.cli.remote import run_if_remote


def main(argv: list[str] | None = None) -> int:
    """The ``pybk`` console script."""
    code, rest = run_if_remote(list(sys.argv[1:] if argv is None else argv))
    if code is not None:
        return code
    from pybk.core.cli.commands import main as embedded

    return embedded(rest)


if __name__ == "__main__":
    sys.exit(main())
