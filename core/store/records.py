"""Records: the entries of the cache, each a snapshot (or a named directory) with its GC
bookkeeping, and the cache keys that find them.

A record starts mutable, with an active snapshot owned by the process building it, and becomes
immutable when committed. Merges and diffs are committed records made by the snapshotter from
other records. Named directories (cache mounts, context copies) are mutable records without a
snapshot, found by a name in the ``refs`` table.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pybk.core.errors import StoreError
from pybk.core.fs.files import remove_path
from pybk.core.interfaces import Mount
from pybk.core.model import Model
from pybk.core.store import locks as lockmod
from pybk.core.store.db import StoreDB, StoreFullError, new_id
from pybk.core.store.snapshotters import SnapshotterSet

RECORD_TYPES = ("regular", "source.local", "exec.cachemount", "source.git.checkout", "frontend",
                "internal")

#: metadata keys ``<prefix><record id>:<selection>`` hold checksums of a committed record
RECORD_CHECKSUM_PREFIX = "record-checksum:"

_RECORD_COLUMNS = ("id, type, snapshot, path, description, created, last_used, usage_count, size,"
                   " mutable")


class Record(Model):
    """One entry of the cache: a snapshot (or a directory) with its GC bookkeeping."""

    id: str
    type: str
    snapshot: str | None
    path: str | None
    description: str
    created: float
    last_used: float | None
    usage_count: int
    size: int | None
    mutable: bool
    parents: tuple[str, ...] = ()


def dir_name(name: str) -> str:
    """A directory name for an arbitrary string: readable part plus a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60].strip("._") or "x"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _record_id(record: Record | str) -> str:
    return record if isinstance(record, str) else record.id


class Records:
    """The records and cache keys of a store, their snapshots made by ``snapshotters``."""

    def __init__(self, db: StoreDB, snapshotters: SnapshotterSet):
        self.db = db
        self.snapshotters = snapshotters

    # ---- reading ----------------------------------------------------------------------------

    @staticmethod
    def _record(db: sqlite3.Connection, row: Sequence) -> Record:
        parents = tuple(p for (p,) in db.execute(
            "SELECT parent_id FROM record_parents WHERE record_id=? ORDER BY rowid", (row[0],)))
        (id_, type_, snapshot, path, description, created, last_used, usage_count, size,
         mutable) = row
        return Record(id_, type_, snapshot, path, description, created, last_used, usage_count,
                      size, bool(mutable), parents)

    def get(self, record_id: str) -> Record | None:
        with self.db.reading() as db:
            row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id=?",
                             (record_id,)).fetchone()
            return self._record(db, row) if row else None

    def all(self) -> list[Record]:
        with self.db.reading() as db:
            rows = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records ORDER BY created").fetchall()
            return [self._record(db, r) for r in rows]

    def committed(self, record: Record | str) -> Record:
        """The committed record ``record`` (an error when it is missing or not committed)."""
        found = self.get(_record_id(record))
        if found is None:
            raise StoreError(f"record {_record_id(record)} does not exist")
        if found.mutable or found.snapshot is None:
            raise StoreError(f"record {found.id} is not a committed snapshot")
        return found

    def snapshotter_of(self, record: Record) -> Any:
        """The snapshotter holding a record's snapshot."""
        name = self.db.query("SELECT snapshotter FROM records WHERE id=?", (record.id,))[0][0]
        return self.snapshotters.named(name)

    # ---- writing ----------------------------------------------------------------------------

    def insert(self, db: sqlite3.Connection, *, type: str, description: str,
               mutable: bool, owner: str | None, snapshotter: str | None = None,
               snapshot: str | None = None, path: str | None = None,
               parents: Sequence[str] = (), lease_id: str | None = None,
               record_id: str | None = None) -> str:
        """Add a record row (in the transaction ``db``); returns its id."""
        if type not in RECORD_TYPES:
            raise StoreError(f"unknown record type {type!r} (known: {', '.join(RECORD_TYPES)})")
        record_id = record_id or new_id()
        now = time.time()
        db.execute(
            "INSERT INTO records(id, type, snapshotter, snapshot, path, description, created,"
            " last_used, usage_count, mutable, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (record_id, type, snapshotter, snapshot, path, description, now, now, 1,
             int(mutable), owner))
        db.executemany("INSERT INTO record_parents(record_id, parent_id) VALUES (?,?)",
                       [(record_id, p) for p in dict.fromkeys(parents)])
        if lease_id is not None:
            db.execute("INSERT INTO lease_refs(lease_id, record_id) VALUES (?,?)",
                       (lease_id, record_id))
        return record_id

    def new(self, parent: Record | str | None = None, *, type: str = "regular",
            description: str = "", lease_id: str | None = None) -> Record:
        """A mutable record with an active snapshot on ``parent``."""
        parent_rec = self.committed(parent) if parent is not None else None
        sn = self.snapshotters.default
        record_id = new_id()
        key = f"active-{record_id}"
        with self.db.transaction() as db:
            self.insert(db, type=type, description=description, mutable=True,
                        owner=self.db.identity, snapshotter=sn.name, snapshot=key,
                        parents=[parent_rec.id] if parent_rec else (), lease_id=lease_id,
                        record_id=record_id)
        try:
            sn.prepare(key, parent_rec.snapshot if parent_rec else None)
        except BaseException:
            with self.db.transaction() as db:
                db.execute("DELETE FROM records WHERE id=?", (record_id,))
            raise
        return self.get(record_id)  # type: ignore[return-value]

    def commit(self, record: Record) -> Record:
        """Make a mutable record immutable (unmount it first). Returns the committed record."""
        sn = self.snapshotter_of(record)
        with self.db.transaction() as db:
            row = db.execute("SELECT mutable, snapshot, owner FROM records WHERE id=?",
                             (record.id,)).fetchone()
            if row is None or not row[0] or row[2] is None:
                raise StoreError(f"record {record.id} is not an uncommitted snapshot")
            sn.commit(record.id, row[1])
            db.execute("UPDATE records SET mutable=0, snapshot=?, owner=NULL, last_used=?"
                       " WHERE id=?", (record.id, time.time(), record.id))
        return self.get(record.id)  # type: ignore[return-value]

    def discard(self, record: Record) -> None:
        """Drop an uncommitted record and its snapshot. When the database cannot be written
        (the disk is full: the step filled it), the snapshot's files go first, then the
        record is dropped."""
        try:
            self._discard(record)
        except (sqlite3.OperationalError, StoreFullError):
            self._free(record)
            self._discard(record)

    def _free(self, record: Record) -> None:
        """Delete the files of an uncommitted record's snapshot (its rows stay)."""
        rows = self.db.query("SELECT snapshotter, snapshot FROM records WHERE id=? AND owner"
                             " IS NOT NULL", (record.id,))
        if not rows:
            return
        sn = self.snapshotters.named(rows[0][0])
        info = sn.info(rows[0][1]) if hasattr(sn, "info") and hasattr(sn, "dir") else None
        if info is not None:
            remove_path(str(sn.dir(info)))

    def _discard(self, record: Record) -> None:
        with self.db.transaction() as db:
            row = db.execute("SELECT snapshotter, snapshot FROM records WHERE id=? AND owner"
                             " IS NOT NULL", (record.id,)).fetchone()
            if row is None:
                raise StoreError(f"record {record.id} is not an uncommitted snapshot")
            db.execute("DELETE FROM records WHERE id=?", (record.id,))
            sn = self.snapshotters.named(row[0])
            if sn.exists(row[1]):
                sn.remove(row[1])

    def _derived(self, inputs: Sequence[Record], make: Callable[[str], str], *,
                 description: str, lease_id: str | None) -> Record:
        """A committed record made by the snapshotter from ``inputs`` (merge, diff)."""
        sn = self.snapshotters.default
        record_id = new_id()
        with self.db.transaction() as db:
            self.insert(db, type="regular", description=description, mutable=True,
                        owner=self.db.identity, snapshotter=sn.name, snapshot=record_id,
                        parents=[r.id for r in inputs], lease_id=lease_id,
                        record_id=record_id)
        try:
            make(record_id)
        except BaseException:
            with self.db.transaction() as db:
                db.execute("DELETE FROM records WHERE id=?", (record_id,))
            raise
        with self.db.transaction() as db:
            db.execute("UPDATE records SET mutable=0, owner=NULL WHERE id=?", (record_id,))
        return self.get(record_id)  # type: ignore[return-value]

    def merge(self, inputs: Sequence[Record | str], *, description: str = "",
              lease_id: str | None = None) -> Record:
        """MergeOp: the inputs' layers stacked in order."""
        recs = [self.committed(r) for r in inputs]
        sn: Any = self.snapshotters.default
        return self._derived(recs, lambda key: sn.merge([r.snapshot for r in recs], key),
                             description=description, lease_id=lease_id)

    def diff(self, lower: Record | str | None, upper: Record | str, *, description: str = "",
             lease_id: str | None = None) -> Record:
        """DiffOp: the changes from ``lower`` (None: scratch) to ``upper``."""
        low = self.committed(lower) if lower is not None else None
        up = self.committed(upper)
        sn: Any = self.snapshotters.default
        return self._derived(
            [r for r in (low, up) if r is not None],
            lambda key: sn.diff(low.snapshot if low else None, up.snapshot, key),
            description=description, lease_id=lease_id)

    # ---- files ------------------------------------------------------------------------------

    def mounts(self, record: Record) -> list[Mount]:
        """Read-write mounts of a mutable record, read-only ones of a committed record."""
        if record.snapshot is None:
            return [Mount("bind", str(self.db.root / record.path), ("rbind", "rw"))]  # type: ignore[operator]
        return self.snapshotter_of(record).mounts(record.snapshot)

    @contextlib.contextmanager
    def contents(self, record: Record) -> Iterator[str]:
        """A directory showing a committed record's files (read only)."""
        if record.snapshot is None:
            yield str(self.db.root / record.path)  # type: ignore[operator]
            return
        with self.snapshotter_of(record).contents(record.snapshot) as path:
            yield path

    def own_layer(self, record: Record) -> str | None:
        """The layer directory of a mutable record, where files may be hard-linked in while it
        is not mounted (overlayfs); None when its snapshotter has none."""
        if record.snapshot is None or not record.mutable:
            return None
        return self.snapshotter_of(record).own_layer(record.snapshot)

    def mark_linked(self, record: Record, source: str) -> None:
        """Note that ``record``'s layer hard-links files of the directory ``source``."""
        self.snapshotter_of(record).mark_linked(record.snapshot, source)

    def linked_sources(self, record: Record | str) -> set[str]:
        """Directories whose files are hard-linked into any layer of a committed record."""
        rec = self.committed(record)
        sn = self.snapshotter_of(rec)
        return set().union(*sn.linked_sources(sn.layer_chain(rec.snapshot)))

    # ---- cache keys -------------------------------------------------------------------------

    def get_cache(self, cache_key: str, output: int = 0, *,
                  lease_id: str | None = None) -> Record | None:
        """The committed record stored for (``cache_key``, ``output``), if any.

        With ``lease_id`` the record found is added to that lease (and counted as used) in the
        transaction that finds it: prune deletes a record only in a transaction that sees no
        lease on it, so a record returned here cannot be deleted while the lease is held. A
        record whose committed snapshot is gone is not found (the step is computed again).
        """
        columns = ", ".join("r." + c for c in _RECORD_COLUMNS.split(", "))
        query = (f"SELECT {columns} FROM cache_keys k JOIN records r ON r.id = k.record_id"
                 " WHERE k.cache_key=? AND k.output=? AND r.mutable=0"
                 " AND (r.snapshotter IS NULL OR r.snapshotter=?)"
                 " AND (r.snapshot IS NULL OR EXISTS (SELECT 1 FROM snapshots s WHERE"
                 " s.snapshotter = r.snapshotter AND s.key = r.snapshot AND s.kind='committed'))")
        args = (cache_key, output, self.snapshotters.default.name)
        if lease_id is None:
            with self.db.reading() as db:
                row = db.execute(query, args).fetchone()
                return self._record(db, row) if row else None
        with self.db.transaction() as db:
            row = db.execute(query, args).fetchone()
            if row is None:
                return None
            db.execute("INSERT OR IGNORE INTO lease_refs(lease_id, record_id) VALUES (?,?)",
                       (lease_id, row[0]))
            db.execute("UPDATE records SET last_used=?, usage_count=usage_count+1 WHERE id=?",
                       (time.time(), row[0]))
            return self._record(db, row)

    def put_cache(self, cache_key: str, record: Record | str, output: int = 0) -> None:
        """Remember ``record`` as the result of (``cache_key``, ``output``)."""
        with self.db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO cache_keys(cache_key, output, record_id, created)"
                       " VALUES (?,?,?,?)", (cache_key, output, _record_id(record), time.time()))

    def build_lock(self, cache_key: str) -> lockmod.FileLock:
        """Exclusive lock held while computing ``cache_key`` so no two processes build it twice
        (check :meth:`get_cache` again once it is held)."""
        return self.db.locks.lock(f"build-{hashlib.sha256(cache_key.encode()).hexdigest()}")

    # ---- named directories ------------------------------------------------------------------

    def named_dir(self, ref: str, relpath: str, *, type: str, description: str,
                  seed: Callable[[Path], None] | None = None) -> Record:
        """The record behind the directory ``relpath`` (under the root) named ``ref``, created
        (and filled by ``seed``) on first use; counted as used now."""
        path = self.db.root / relpath
        if not path.is_dir():
            temp = self.db.process_tmp(f"new-{secrets.token_hex(6)}")
            temp.mkdir()
            if seed is not None:
                seed(temp)
            try:
                os.rename(temp, path)
            except OSError:  # another process created it first
                remove_path(str(temp))
        now = time.time()
        with self.db.transaction() as db:
            row = db.execute("SELECT record_id FROM refs WHERE name=?", (ref,)).fetchone()
            if row is None:
                record_id = self.insert(db, type=type, description=description,
                                        mutable=True, owner=None, path=relpath)
                db.execute("INSERT INTO refs(name, record_id) VALUES (?,?)", (ref, record_id))
            else:
                record_id = row[0]
                db.execute("UPDATE records SET last_used=?, usage_count=usage_count+1,"
                           " size=NULL WHERE id=?", (now, record_id))
        return self.get(record_id)  # type: ignore[return-value]
