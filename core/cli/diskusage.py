"""``pybk du`` and ``pybk prune``: the build cache's records, printed like ``buildctl``.

The table is ``ID  RECLAIMABLE  SIZE  LAST ACCESSED`` (mutable IDs end in ``*``, shared sizes
too; the last column stays empty as in ``buildctl``), laid out the way Go's ``tabwriter`` does
with tab padding; ``du`` ends with ``Shared:``/``Private:`` (when something is shared),
``Reclaimable:`` and ``Total:``, ``prune`` with ``Total:`` of what it deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from pybk.core.units import format_bytes, format_duration

_TAB_WIDTH = 8


def format_time(stamp: float) -> str:
    """Go's ``time.Time`` default layout, local time: ``2006-01-02 15:04:05.123 -0700 MST``."""
    local = time.localtime(stamp)
    fraction = f"{stamp % 1:.9f}"[1:].rstrip("0").rstrip(".")
    return (time.strftime("%Y-%m-%d %H:%M:%S", local) + fraction
            + time.strftime(" %z %Z", local))


def tabwrite(lines: Iterable[str]) -> str:
    """Align tab-terminated cells into columns padded with tabs (Go ``tabwriter`` with
    minwidth 1, tabwidth 8, padding 1, padchar tab). A line with fewer cells ends a block."""
    rows = [line.split("\t") for line in lines]
    out: list[str] = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and len(rows[end]) > 1:
            end += 1
        if end == start:
            out.append(rows[start][0])
            start += 1
            continue
        block = rows[start:end]
        columns = max(len(row) for row in block) - 1
        widths = []
        for col in range(columns):
            width = max(len(row[col]) for row in block if len(row) - 1 > col) + 1
            widths.append(-(-width // _TAB_WIDTH) * _TAB_WIDTH)
        for row in block:
            text = ""
            for col, cell in enumerate(row[:-1]):
                text += cell + "\t" * -(-(widths[col] - len(cell)) // _TAB_WIDTH)
            out.append(text + row[-1])
        start = end
    return "".join(line + "\n" for line in out)


def table_lines(rows: Sequence[Any]) -> list[str]:
    lines = ["ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED"]
    for info in rows:
        record_id = info.id + ("*" if info.mutable else "")
        size = format_bytes(info.size) + ("*" if info.shared else "")
        lines.append(f"{record_id:<71}\t{str(not info.in_use).lower():<11}\t{size}\t")
    return lines


def verbose_lines(rows: Sequence[Any]) -> list[str]:
    lines = []
    for info in rows:
        lines.append(f"ID:\t{info.id}")
        if info.parents:
            lines.append(f"Parents:\t{';'.join(info.parents)}")
        lines.append(f"Created at:\t{format_time(info.created_at)}")
        lines.append(f"Mutable:\t{str(info.mutable).lower()}")
        lines.append(f"Reclaimable:\t{str(not info.in_use).lower()}")
        lines.append(f"Shared:\t{str(info.shared).lower()}")
        lines.append(f"Size:\t{format_bytes(info.size)}")
        if info.description:
            lines.append(f"Description:\t{info.description}")
        lines.append(f"Usage count:\t{info.usage_count}")
        if info.last_used_at is not None:
            lines.append(f"Last used:\t{format_time(info.last_used_at)}")
        if info.record_type:
            lines.append(f"Type:\t{info.record_type}")
        lines.append("")
    return lines


def summary_lines(rows: Sequence[Any]) -> list[str]:
    total = sum(i.size for i in rows if i.size > 0)
    reclaimable = sum(i.size for i in rows if i.size > 0 and not i.in_use)
    shared = sum(i.size for i in rows if i.shared)
    lines = []
    if shared:
        lines += [f"Shared:\t{format_bytes(shared)}", f"Private:\t{format_bytes(total - shared)}"]
    return lines + [f"Reclaimable:\t{format_bytes(reclaimable)}", f"Total:\t{format_bytes(total)}"]


def print_du(rows: Sequence[Any], out: TextIO, *, verbose: bool, filtered: bool) -> None:
    out.write(tabwrite(verbose_lines(rows) if verbose else table_lines(rows)))
    if not filtered:
        out.write(tabwrite(summary_lines(rows)))


def print_pruned(rows: Sequence[Any], out: TextIO, *, verbose: bool,
                 dry_run: bool = False) -> None:
    if rows:
        out.write(tabwrite(verbose_lines(rows) if verbose else table_lines(rows)))
    total = format_bytes(sum(i.size for i in rows))
    out.write(tabwrite([f"Would free:\t{total} (dry run: nothing removed)" if dry_run
                        else f"Total:\t{total}"]))


def print_explained(rows: Sequence[tuple[Any, str]], policies: Sequence[Any],
                    out: TextIO) -> None:
    """``pybk du --explain``: the GC policies in order, then each record (least recently used
    first) with its size and what the GC would do to it."""
    lines = [f"GC policies (in order; {len(policies)}):"]
    for number, policy in enumerate(policies, 1):
        keys = [f"filters={','.join(policy.filters)}" if policy.filters else "",
                f"keep-duration={format_duration(policy.keep_duration)}"
                if policy.keep_duration else "",
                f"max-used-space={format_bytes(policy.max_used_space)}"
                if policy.max_used_space else "",
                f"reserved-space={format_bytes(policy.reserved_space)}"
                if policy.reserved_space else "",
                f"min-free-space={format_bytes(policy.min_free_space)}"
                if policy.min_free_space else "",
                "all" if policy.all else ""]
        lines.append(f"  {number}: {' '.join(k for k in keys if k) or 'everything'}")
    out.write("\n".join(lines) + "\n\n")
    table = ["ID\tSIZE\tLAST ACCESSED\tGC"]
    for info, verdict in rows:
        last = format_time(info.last_used_at) if info.last_used_at else "-"
        table.append(f"{info.id}\t{format_bytes(info.size)}\t{last}\t{verdict}")
    out.write(tabwrite(table))
