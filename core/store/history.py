"""The build history: one row per build (``pybk history``), pinned rows kept, old ones
cleaned up by BuildKit's rule."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from pybk.core.errors import StoreError
from pybk.core.store.db import StoreDB


@attrs.frozen
class HistoryEntry:
    """One build in the history."""

    ref: str
    frontend: str
    started: float
    finished: float | None
    status: str  # "running" | "completed" | "failed" | "canceled"
    error: str | None
    num_total: int
    num_cached: int
    num_completed: int
    num_warnings: int
    pinned: bool
    data: Mapping[str, Any]


class History:
    """The ``history`` table of a store."""

    def __init__(self, db: StoreDB):
        self.db = db

    def start(self, ref: str, *, frontend: str = "",
              data: Mapping[str, Any] | None = None) -> None:
        with self.db.transaction() as db:
            db.execute("INSERT INTO history(ref, frontend, started, status, data)"
                       " VALUES (?,?,?,'running',?)",
                       (ref, frontend, time.time(), orjson.dumps(dict(data or {})).decode()))

    def finish(self, ref: str, *, status: str, error: str | None = None,
               num_total: int = 0, num_cached: int = 0, num_completed: int = 0,
               num_warnings: int = 0, data: Mapping[str, Any] | None = None) -> None:
        with self.db.transaction() as db:
            row = db.execute("SELECT data FROM history WHERE ref=?", (ref,)).fetchone()
            if row is None:
                raise StoreError(f"no build {ref!r} in the history")
            merged = {**orjson.loads(row[0]), **(data or {})}
            db.execute(
                "UPDATE history SET finished=?, status=?, error=?, num_total=?, num_cached=?,"
                " num_completed=?, num_warnings=?, data=? WHERE ref=?",
                (time.time(), status, error, num_total, num_cached, num_completed, num_warnings,
                 orjson.dumps(merged).decode(), ref))

    def entries(self, ref: str | None = None) -> list[HistoryEntry]:
        """History entries, newest first (or the one named ``ref``)."""
        sql = ("SELECT ref, frontend, started, finished, status, error, num_total, num_cached,"
               " num_completed, num_warnings, pinned, data FROM history")
        rows = self.db.query(sql + (" WHERE ref=?" if ref else "") + " ORDER BY started DESC",
                             (ref,) if ref else ())
        return [HistoryEntry(*r[:10], bool(r[10]), orjson.loads(r[11])) for r in rows]

    def update(self, ref: str, *, pinned: bool | None = None, delete: bool = False) -> None:
        with self.db.transaction() as db:
            if delete:
                db.execute("DELETE FROM history WHERE ref=?", (ref,))
            elif pinned is not None:
                db.execute("UPDATE history SET pinned=? WHERE ref=?", (int(pinned), ref))

    def cleanup(self, *, max_age: float = 48 * 3600, max_entries: int = 50) -> list[str]:
        """BuildKit's rule: only beyond ``max_entries`` unpinned entries, delete those past the
        newest ``max_entries`` that are also older than ``max_age`` seconds."""
        with self.db.transaction() as db:
            rows = db.execute("SELECT ref, started FROM history WHERE pinned=0 AND status!="
                              "'running' ORDER BY started DESC").fetchall()
            old = [ref for ref, started in rows[max_entries:]
                   if started < time.time() - max_age]
            db.executemany("DELETE FROM history WHERE ref=?", [(r,) for r in old])
        return old
