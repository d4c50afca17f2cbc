"""``pybk debug fsck [--repair] [--wait]``: check the store (:mod:`pybk.core.store.fsck`).

Prints ``fsck: <kind>: <what>`` per problem and a summary; exit 0 when the store is clean (after
``--repair``: when the re-check is), 1 when problems were found (or remain), 2 when the store is
in use and ``--wait`` was not given.
"""

from __future__ import annotations

import argparse
import sys

from pybk.core.errors import UsageError
from pybk.core.paths import default_root


def fsck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair", action="store_true",
                        help="fix what can be fixed, say what was done, then check again")
    parser.add_argument("--wait", action="store_true",
                        help="wait for running builds to close the store instead of refusing")


def _print(report: object, out: object) -> None:
    for problem in report.problems:  # type: ignore[attr-defined]
        print(problem.line(), file=out)  # type: ignore[call-overload]


def _summary(report: object) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())  # type: ignore[attr-defined]
    problems = report.problems  # type: ignore[attr-defined]
    if not problems:
        return f"fsck: clean ({counts})"
    kinds: dict[str, int] = {}
    for p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return f"fsck: found {len(problems)} problem(s) - {detail} ({counts})"


def debug_fsck_command(ns: argparse.Namespace) -> int:
    from pybk.core.store.fsck import StoreBusy, fsck

    root = ns.root or default_root()
    try:
        report, done, after = fsck(root, repair=ns.repair, wait=ns.wait)
    except StoreBusy as e:
        raise UsageError(str(e)) from None
    out = sys.stdout
    _print(report, out)
    print(_summary(report), file=out)
    if after is None:
        return 0 if report.clean else 1
    if not done:
        print("fsck: nothing here can be repaired by fsck", file=out)
        return 1
    for line in done:
        print(f"fsck: repaired: {line}", file=out)
    if after.clean:
        print("fsck: after repair: clean", file=out)
        return 0
    print("fsck: after repair:", file=out)
    _print(after, out)
    print(_summary(after), file=out)
    return 1
