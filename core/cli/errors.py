"""How ``pybk`` and ``pybkd`` report a failure: ``error: `` and the error's own rendering (a
located one shows ``file:line`` and the lines around it) on stderr, and the exit code.

Exit codes: 0 ok, 1 build failed, 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pybk.core.errors import PybkError

INTERRUPTED = 130


def report(exc: PybkError, *, debug: bool = False) -> int:
    """Show ``exc`` (with its traceback when ``debug``); its exit code."""
    if debug:
        import traceback

        traceback.print_exception(exc)
    print(f"error: {exc.render()}", file=sys.stderr)
    return exc.exit_code


def interrupted() -> int:
    """Say a command was interrupted (Ctrl-C); its exit code."""
    print("interrupted", file=sys.stderr)
    return INTERRUPTED


def run_reported(command: Callable[[], int], *, debug: bool = False,
                 quiet_interrupt: bool = False) -> int:
    """Run ``command`` and return its exit code; a :class:`~pybk.core.errors.PybkError` is
    reported, Ctrl-C exits 130 (saying so unless ``quiet_interrupt``), a closed output pipe
    exits 1."""
    try:
        return command()
    except PybkError as exc:
        return report(exc, debug=debug)
    except KeyboardInterrupt:
        return INTERRUPTED if quiet_interrupt else interrupted()
    except BrokenPipeError:
        return 1
