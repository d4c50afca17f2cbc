"""Disk usage and garbage collection of a store's records: ``du``, ``prune`` with BuildKit's
filters and size targets, and the automatic GC's policies and throttle."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from pybk.core.errors import UsageError
from pybk.core.model import Model
from pybk.core.store import locks as lockmod
from pybk.core.store.localdirs import LOCAL_SYNC_STATE_SUFFIX
from pybk.core.store.records import RECORD_CHECKSUM_PREFIX, Record, Records
from pybk.core.store.recovery import release_dead_owners
from pybk.core.store.trees import disk_usage
from pybk.core.units import format_bytes, format_duration


class UsageInfo(Model):
    """A ``du`` row (BuildKit's UsageInfo)."""

    id: str
    mutable: bool
    in_use: bool
    size: int
    parents: tuple[str, ...]
    created_at: float
    last_used_at: float | None
    usage_count: int
    description: str
    record_type: str
    shared: bool = False


# --------------------------------------------------------------------------------------------
# Filters (containerd syntax, the fields BuildKit's prune/du understand)
# --------------------------------------------------------------------------------------------

_FILTER_CLAUSE = re.compile(r'\s*([A-Za-z_.]+)\s*(?:(==|!=|~=)\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*')
_FILTER_FIELDS = ("id", "parents", "description", "inuse", "mutable", "immutable", "type",
                  "shared", "private")


def _filter_values(info: UsageInfo) -> dict[str, list[str]]:
    def flag(value: bool) -> list[str]:
        return ["true"] if value else []

    return {
        "id": [info.id], "parents": list(info.parents), "description": [info.description],
        "inuse": flag(info.in_use), "mutable": flag(info.mutable),
        "immutable": flag(not info.mutable), "type": [info.record_type],
        "shared": flag(info.shared), "private": flag(not info.shared),
    }


def parse_filters(filters: Sequence[str]) -> Callable[[UsageInfo], bool]:
    """A predicate for ``--filter`` strings: clauses joined by ``,`` must all match; any one of
    several filter strings matching is enough. Operators ``==``, ``!=``, ``~=`` (regex); a bare
    field matches when it is set (``inuse``, ``mutable`` …)."""
    alternatives = []
    for text in filters:
        clauses = []
        pos = 0
        while pos < len(text):
            m = _FILTER_CLAUSE.match(text, pos)
            if not m or not m.group(0).strip():
                raise UsageError(f"invalid filter {text!r}", flag="--filter")
            field, op, value = m.groups()
            if field not in _FILTER_FIELDS:
                raise UsageError(f"unknown filter field {field!r} in {text!r} (known: "
                                 f"{', '.join(_FILTER_FIELDS)})", flag="--filter")
            if value and value.startswith('"'):
                value = orjson.loads(value)
            if op == "~=":
                try:
                    value = re.compile(value or "")
                except re.error as e:
                    raise UsageError(f"invalid regular expression in {text!r}: {e}",
                                     flag="--filter") from None
            clauses.append((field, op, value))
            pos = m.end()
            if pos < len(text):
                if text[pos] != ",":
                    raise UsageError(f"invalid filter {text!r}", flag="--filter")
                pos += 1
        alternatives.append(clauses)

    def match_clause(values: dict[str, list[str]], field: str, op: str | None, value: Any) -> bool:
        present = values[field]
        if op is None:
            return bool(present)
        if op == "==":
            return value in present
        if op == "!=":
            return value not in present
        return any(value.search(v) for v in present)

    def predicate(info: UsageInfo) -> bool:
        if not alternatives:
            return True
        values = _filter_values(info)
        return any(all(match_clause(values, *c) for c in clauses) for clauses in alternatives)

    return predicate


# --------------------------------------------------------------------------------------------
# Usage and pruning
# --------------------------------------------------------------------------------------------


def _describe(policy: Any) -> str:
    parts = []
    if policy.filters:
        parts.append("filters " + ",".join(policy.filters))
    if policy.keep_duration:
        parts.append(f"unused for {format_duration(policy.keep_duration)}")
    for name, value in (("max-used-space", policy.max_used_space),
                        ("reserved-space", policy.reserved_space),
                        ("min-free-space", policy.min_free_space)):
        if value:
            parts.append(f"{name} {format_bytes(value)}")
    if policy.all:
        parts.append("all")
    return f" ({'; '.join(parts)})" if parts else ""


def _why_kept(info: UsageInfo, policy: Any, now: float) -> str:
    """Why one prune pass of ``policy`` leaves ``info``."""
    if info.in_use:
        return "in use by a running build"
    if info.shared:
        return "shared"
    if not policy.all and info.record_type in ("internal", "frontend"):
        return f"{info.record_type} records need all = true"
    last = info.last_used_at or info.created_at
    if policy.keep_duration and last > now - policy.keep_duration:
        until = format_duration(round(max(0.0, last + policy.keep_duration - now)))
        return f"used within {format_duration(policy.keep_duration)} (eligible in {until})"
    if not parse_filters(policy.filters)(info):
        return "does not match " + ",".join(policy.filters)
    if policy.max_used_space or policy.reserved_space or policy.min_free_space:
        return "the cache is within the size target"
    return "needed by records that stay (a parent, or a snapshot they use)"


class Collector:
    """Sizes, use and deletion of the records of a store."""

    def __init__(self, records: Records):
        self.records = records
        self.db = records.db

    def _record_size(self, record: Record) -> int:
        if record.size is not None and not record.mutable:
            return record.size
        if record.snapshot is not None:
            sn = self.records.snapshotter_of(record)
            size = sn.usage(record.snapshot) if sn.exists(record.snapshot) else 0
        else:
            size = disk_usage(self.db.root / record.path)  # type: ignore[operator]
        if not record.mutable:
            with self.db.transaction() as db:
                db.execute("UPDATE records SET size=? WHERE id=?", (size, record.id))
        return size

    def _in_use(self) -> set[str]:
        """Ids of records some live process holds (lease, uncommitted snapshot, named dir)."""
        used = {r for (r,) in self.db.query(
            "SELECT record_id FROM lease_refs JOIN leases ON leases.id = lease_refs.lease_id")}
        used |= {r for (r, owner) in self.db.query(
            "SELECT id, owner FROM records WHERE owner IS NOT NULL") if lockmod.is_alive(owner)}
        for name, record_id in self.db.query("SELECT name, record_id FROM refs"):
            probe = self.db.locks.try_lock(name)
            if probe is None:
                used.add(record_id)
            else:
                probe.release()
        return used

    def du(self, filters: Sequence[str] = ()) -> list[UsageInfo]:
        """Every record with its size, most recently used last."""
        release_dead_owners(self.db, self.records.snapshotters)
        match = parse_filters(filters)
        used = self._in_use()
        rows = []
        for record in self.records.all():
            info = UsageInfo(record.id, record.mutable, record.id in used,
                             self._record_size(record), record.parents, record.created,
                             record.last_used, record.usage_count, record.description,
                             record.type)
            if match(info):
                rows.append(info)
        return sorted(rows, key=lambda i: (i.last_used_at or 0, i.created_at))

    def _delete_record(self, record_id: str, path_lock: str | None) -> bool:
        """Forget a record and delete its files; False when it is (now) held or needed."""
        held = self.db.locks.try_lock(path_lock) if path_lock else None
        if path_lock and held is None:
            return False
        try:
            with self.db.transaction() as db:
                row = db.execute("SELECT snapshotter, snapshot, path FROM records WHERE id=? AND"
                                 " owner IS NULL", (record_id,)).fetchone()
                if row is None or db.execute(
                        "SELECT 1 FROM record_parents WHERE parent_id=? UNION ALL SELECT 1 FROM"
                        " lease_refs WHERE record_id=?", (record_id, record_id)).fetchone():
                    return False
                snapshotter, snapshot, path = row
                if snapshot is not None:
                    sn = self.records.snapshotters.named(snapshotter)
                    if sn.exists(snapshot) and sn.dependents(snapshot):
                        return False
                db.execute("DELETE FROM records WHERE id=?", (record_id,))
                prefix = f"{RECORD_CHECKSUM_PREFIX}{record_id}:"
                db.execute("DELETE FROM meta WHERE key >= ? AND key < ?",
                           (prefix, prefix[:-1] + ";"))  # ";" sorts right after ":"
                if snapshot is not None and sn.exists(snapshot):
                    sn.remove(snapshot)
                if path is not None:
                    self.db.discard_path(self.db.root / path)
                    # a synced local directory's state: a later sync must start from scratch
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.db.root / (path.rstrip("/") + LOCAL_SYNC_STATE_SUFFIX))
            return True
        finally:
            if held is not None:
                held.release()

    def _deletable(self, record_id: str, path_lock: str | None, gone: set[str]) -> bool:
        """Whether :meth:`_delete_record` would delete the record once those in ``gone`` are
        deleted (a dry run: nothing is locked or changed)."""
        if path_lock:
            probe = self.db.locks.try_lock(path_lock)
            if probe is None:
                return False
            probe.release()
        row = self.db.query("SELECT snapshotter, snapshot FROM records WHERE id=? AND owner IS"
                            " NULL", (record_id,))
        if not row or self.db.query("SELECT 1 FROM lease_refs WHERE record_id=?", (record_id,)):
            return False
        if any(child not in gone for (child,) in self.db.query(
                "SELECT record_id FROM record_parents WHERE parent_id=?", (record_id,))):
            return False
        snapshotter, snapshot = row[0]
        if snapshot is not None:
            sn = self.records.snapshotters.named(snapshotter)
            if sn.exists(snapshot):
                for dep in sn.dependents(snapshot):
                    owner = self.db.query("SELECT id FROM records WHERE snapshotter=? AND"
                                          " snapshot=?", (snapshotter, dep))
                    if not owner or owner[0][0] not in gone:
                        return False
        return True

    def prune(self, filters: Sequence[str] = (), *, all: bool = False,
              keep_duration: float = 0.0, keep_bytes: int = 0, reserved_space: int = 0,
              max_used_space: int = 0, min_free_space: int = 0,
              dry_run: bool = False, gone: set[str] | None = None) -> list[UsageInfo]:
        """One BuildKit prune pass; returns the deleted records (with ``dry_run``: those it
        would delete, deleting nothing; ``gone`` holds what earlier passes of the same dry run
        would have deleted).

        Records in use are never deleted, ``internal``/``frontend`` ones only with ``all``,
        ones used within ``keep_duration`` seconds not at all. Without size targets every
        matching record goes; with them, records go one at a time (least recently and least
        often used first) until the total is below the target. ``keep_bytes`` is the old name
        of ``reserved_space``.
        """
        reserved_space = reserved_space or keep_bytes
        gone = set() if gone is None else gone
        usage = [i for i in self.du() if i.id not in gone]
        match = parse_filters(filters)
        now = time.time()
        total = sum(i.size for i in usage if not i.shared)
        candidates = [
            i for i in usage
            if not i.in_use and not i.shared
            and (all or i.record_type not in ("internal", "frontend"))
            and not (keep_duration and (i.last_used_at or i.created_at) > now - keep_duration)
            and match(i)
        ]
        sized = bool(reserved_space or max_used_space or min_free_space)
        keep = 0
        if sized:
            keep = max_used_space
            if min_free_space:
                disk = os.statvfs(self.db.root)
                free = disk.f_bavail * disk.f_frsize
                if min_free_space > free:
                    keep = min(keep or total, total - (min_free_space - free))
                elif not max_used_space:
                    keep = total
            keep = max(keep, reserved_space)
            by_lru = sorted(candidates, key=lambda i: i.last_used_at or i.created_at)
            by_count = sorted(candidates, key=lambda i: i.usage_count)
            n = max(len(candidates), 1)
            score = {i.id: by_lru.index(i) / n + by_count.index(i) / n for i in candidates}
            candidates.sort(key=lambda i: score[i.id])
        ref_names = dict((r, n) for n, r in self.db.query("SELECT name, record_id FROM refs"))
        deleted: list[UsageInfo] = []
        progress = True
        while candidates and progress and not (sized and total <= keep):
            progress = False
            for info in list(candidates):
                if (self._deletable(info.id, ref_names.get(info.id), gone) if dry_run
                        else self._delete_record(info.id, ref_names.get(info.id))):
                    gone.add(info.id)
                    candidates.remove(info)
                    deleted.append(info)
                    total -= info.size
                    progress = True
                    if sized:
                        break
        return deleted

    def gc_due(self, interval: float = 60.0) -> bool:
        """Whether the automatic GC should run now: at most once per ``interval`` seconds per
        store, across processes; claims the slot when it is. Like BuildKit's trailing throttle
        (its first GC runs a minute after the first build, not during it), the clock starts
        with the first build that asks: a store with no stamp yet gets one and is not due, so
        a build into a new store never walks what it just made to size it."""
        stamp = self.db.root / "gc.stamp"
        now = time.time()
        try:
            if now - stamp.stat().st_mtime < interval:
                return False
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                stamp.touch()
            return False
        with contextlib.suppress(OSError):
            stamp.touch()
            os.utime(stamp, (now, now))
        return True

    def gc(self, policies: Sequence[Any]) -> list[UsageInfo]:
        """Run each policy as one prune pass, in order.

        ``policies`` are resolved rules (:func:`pybk.core.config.gc.gc_prune_rules`): sizes in
        bytes, ``keep_duration`` in seconds.
        """
        deleted: list[UsageInfo] = []
        for policy in policies:
            deleted += self.prune(policy.filters, all=policy.all,
                                  keep_duration=policy.keep_duration,
                                  reserved_space=policy.reserved_space,
                                  max_used_space=policy.max_used_space,
                                  min_free_space=policy.min_free_space)
        return deleted

    def explain(self, policies: Sequence[Any]) -> list[tuple[UsageInfo, str]]:
        """Every record with what the GC ``policies`` would do to it now: the first policy
        that would delete it, or why none does (in use, shared, internal, used recently, not
        matched, under the size target). Changes nothing."""
        gone: set[str] = set()
        verdicts: dict[str, str] = {}
        for number, policy in enumerate(policies, 1):
            for info in self.prune(policy.filters, all=policy.all,
                                   keep_duration=policy.keep_duration,
                                   reserved_space=policy.reserved_space,
                                   max_used_space=policy.max_used_space,
                                   min_free_space=policy.min_free_space,
                                   dry_run=True, gone=gone):
                verdicts[info.id] = f"would be deleted by policy {number}{_describe(policy)}"
        now = time.time()
        out = []
        for info in self.du():
            verdict = verdicts.get(info.id)
            if verdict is None:
                verdict = "kept: " + "; ".join(
                    f"policy {n}: {_why_kept(info, p, now)}" for n, p in enumerate(policies, 1)
                ) if policies else "kept: no GC policy (gc = false or none configured)"
            out.append((info, verdict))
        return out
