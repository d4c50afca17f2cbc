"""``pybk debug workers``: the enabled workers, printed like ``buildctl debug workers``.

The table is ``ID  PLATFORMS`` (platforms comma-separated); ``-v`` prints, per worker, its ID,
platforms, version, labels (sorted) and GC policy rules (``All``, ``Filters``, ``Keep
duration``, ``Reserved space``, ``Minimum free space``, ``Maximum used space``, the sizes in
decimal units as BuildKit's ``%g``), each worker followed by an empty line. Both are laid out
like Go's ``tabwriter`` with tab padding.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def format_size(size: int) -> str:
    """BuildKit's ``%g`` of a byte count: decimal units, as many digits as needed
    (``512MB``, ``5.36870912GB``); below 1000, whole bytes (``512B``)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    if size < 1000:
        return f"{size}B"
    scale, unit = 1, 0
    while size >= scale * 1000 and unit < len(units) - 1:
        scale *= 1000
        unit += 1
    text = repr(size / scale)
    return (text[:-2] if text.endswith(".0") else text) + units[unit]


def table_lines(rows: Sequence[Any]) -> list[str]:
    return ["ID\tPLATFORMS"] + [f"{row['id']}\t{','.join(row['platforms'])}" for row in rows]


def verbose_lines(rows: Sequence[Any]) -> list[str]:
    from pybk.core.units import format_duration

    lines: list[str] = []
    for row in rows:
        lines += [f"ID:\t{row['id']}", f"Platforms:\t{','.join(row['platforms'])}",
                  f"BuildKit:\t{row['version']}", "Labels:"]
        lines += [f"\t{key}:\t{value}" for key, value in sorted(row["labels"].items())]
        for i, rule in enumerate(row["gc_policy"]):
            lines += [f"GC Policy rule#{i}:", f"\tAll:\t{'true' if rule.all else 'false'}"]
            if rule.filters:
                lines.append(f"\tFilters:\t{' '.join(rule.filters)}")
            if rule.keep_duration > 0:
                lines.append(f"\tKeep duration:\t{format_duration(rule.keep_duration)}")
            for name, size in (("Reserved space", rule.reserved_space),
                               ("Minimum free space", rule.min_free_space),
                               ("Maximum used space", rule.max_used_space)):
                if size > 0:
                    lines.append(f"\t{name}:\t{format_size(size)}")
        lines.append("")
    return lines


def describe_workers(workers: Sequence[Any], root: str) -> list[dict[str, Any]]:
    """What is shown of each worker: id, platforms (normalised), version, labels, GC rules.
    The store at ``root`` is opened (as a build would) so each worker makes its snapshotter."""
    from pybk.core import __version__
    from pybk.core.errors import InputError
    from pybk.core.platform import parse_platform

    def normalized(text: str) -> str:
        try:
            return str(parse_platform(text))
        except InputError:
            return text

    from pybk.core.store.store import Store

    with Store.open(root) as store:
        for worker in workers:  # what each makes is what its labels show (``auto`` resolved)
            worker.snapshotter(store)
    disk = os.statvfs(root)
    return [{"id": worker.id, "name": worker.name,
             "platforms": [normalized(p) for p in worker.platforms()],
             "version": f"pybk {__version__}", "labels": dict(worker.labels()),
             "gc_policy": list(worker.gc_policy(disk.f_blocks * disk.f_frsize))}
            for worker in workers]


def print_workers(rows: Sequence[Any], out: TextIO, *, verbose: bool) -> None:
    from pybk.core.cli.diskusage import tabwrite

    out.write(tabwrite(verbose_lines(rows) if verbose else table_lines(rows)))


def debug_workers_command(ns: argparse.Namespace) -> int:
    """``pybk debug workers [-v]`` on the store ``--root`` with ``--config``."""
    from pybk.core.config.loader import load_config
    from pybk.core.engine.workers import close_workers, load_workers
    from pybk.core.paths import default_root

    config, warnings = load_config(ns.config)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    root = os.path.abspath(ns.root or default_root())
    workers = load_workers(config, root)
    try:
        rows = describe_workers(workers, root)
    finally:
        close_workers(workers)
    print_workers(rows, sys.stdout, verbose=ns.verbose)
    return 0
