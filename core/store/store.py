"""The local store: build results, cache keys, leases, cache mounts, context copies.

Layout under the root::

    metadata.db    sqlite (WAL): records, snapshots, cache keys, leases, named refs
    content/       OCI blobs (pybk.core.store.content)
    snapshots/     snapshotter directories (pybk.core.store.snapshotters)
    cachemounts/   ``RUN --mount=type=cache`` directories (pybk.core.store.cachemounts)
    locals/        incrementally synced copies of client directories (pybk.core.store.localdirs)
    locks/         named file locks (pybk.core.store.locks)
    tmp/           one directory per process (scratch space, temporary mountpoints, trash)

Crash safety: files are written elsewhere and renamed into place, metadata changes are sqlite
transactions, and files are deleted only after the transaction that forgets them commits.
Whatever a killed process leaves behind (its leases, uncommitted snapshots, mounts and scratch
under ``tmp/``) carries its identity (boot id, pid, start time) and is cleaned up by the next
``Store.open`` once that process is gone. Several processes may use one root at the same time.

:class:`Store` is the one object the rest of pybk uses; it puts together the parts, each in its
own module: the root and its database (:mod:`~pybk.core.store.db`), the snapshotters
(:mod:`~pybk.core.store.snapshotters`), records and cache keys (:mod:`~pybk.core.store.records`),
leases (:mod:`~pybk.core.store.leases`), cache mounts and context copies
(:mod:`~pybk.core.store.cachemounts`, :mod:`~pybk.core.store.localdirs`), usage and pruning
(:mod:`~pybk.core.store.gc`) and recovery (:mod:`~pybk.core.store.recovery`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pybk.core.errors import StoreError
from pybk.core.interfaces import Mount, Snapshotter
from pybk.core.paths import default_root
from pybk.core.store import cachemounts, localdirs, recovery
from pybk.core.store import locks as lockmod
from pybk.core.store.db import StoreDB
from pybk.core.store.gc import Collector, UsageInfo
from pybk.core.store.leases import Lease
from pybk.core.store.records import RECORD_CHECKSUM_PREFIX, Record, Records
from pybk.core.store.snapshotters import SnapshotterSet, make_snapshotter

#: the lock an open store holds shared, ``pybk debug fsck`` exclusively
STORE_LOCK = "store"

#: stores opened with :meth:`Store.open` and not yet closed in this process, by root
_OPEN: dict[Path, int] = {}

#: how a store gets its default snapshotter: a name (``auto``, ``overlayfs``, ``native``) or a
#: callable building it from the store, called once, on first use
SnapshotterChoice = str | Callable[["Store"], Snapshotter]


class Store:
    """An open store root; use :meth:`open`. One object per process (not shared across fork)."""

    def __init__(self, root: str | os.PathLike[str], *, snapshotter: SnapshotterChoice = "auto"):
        self.db = StoreDB(root)
        self.root = self.db.root
        self.locks = self.db.locks
        if callable(snapshotter):
            make_default = snapshotter
            self.snapshotters = SnapshotterSet(self.db, lambda: make_default(self))
        else:
            name = snapshotter
            self.snapshotters = SnapshotterSet(self.db, lambda: make_snapshotter(self.db, name))
        self._records = Records(self.db, self.snapshotters)
        self._collector = Collector(self._records)
        self._in_use: lockmod.FileLock | None = None

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None, *,
             snapshotter: SnapshotterChoice = "auto") -> Store:
        """Open (creating if needed) the store at ``root`` and clean up after dead processes.

        ``snapshotter``: the name of the snapshotter new records use (``auto``: overlayfs when
        possible, else native), or a callable ``(store) -> Snapshotter`` building it.
        """
        try:
            store = cls(root if root is not None else Path(default_root()), snapshotter=snapshotter)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open store {root}: {e}") from None
        # held shared while open: ``pybk debug fsck`` takes it exclusively (waits for it)
        store._in_use = store.locks.lock(STORE_LOCK, shared=True)
        store._in_use.acquire()
        _OPEN[store.root] = _OPEN.get(store.root, 0) + 1
        try:
            store.recover()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        in_use, self._in_use = self._in_use, None
        self.db.close()
        if in_use is not None:
            _OPEN[self.root] -= 1
            if not _OPEN[self.root]:
                del _OPEN[self.root]
                # a clean exit leaves no scratch (only an empty directory is removed: mounts
                # or files still in it are the next recovery's)
                with contextlib.suppress(OSError):
                    self.db.proc_dir(self.identity).rmdir()
            in_use.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- database and files (pybk.core.store.db) --------------------------------------------

    @property
    def identity(self) -> str:
        return self.db.identity

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one (:meth:`StoreDB.transaction`)."""
        return self.db.transaction()

    def after_commit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after the current transaction commits (now when there is none)."""
        self.db.after_commit(work)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self.db.query(sql, args)

    def get_meta(self, key: str) -> Any:
        return self.db.get_meta(key)

    def set_meta(self, key: str, value: Any) -> None:
        self.db.set_meta(key, value)

    def set_layer_blob(self, snapshot: str, descriptor: Mapping[str, Any]) -> None:
        """Remember the image layer blob a snapshot was unpacked from (``mediaType``,
        ``digest``, ``size``, ``diffID``, optionally ``source`` repository), so exporters can
        reuse it instead of recompressing."""
        self.db.set_meta("layer-blob:" + snapshot, dict(descriptor))

    def layer_blob(self, snapshot: str) -> dict[str, Any] | None:
        """The blob descriptor recorded with :meth:`set_layer_blob`, or None."""
        return self.db.get_meta("layer-blob:" + snapshot)

    def record_checksum(self, record_id: str, selection: str) -> str | None:
        """A content checksum kept for the committed record ``record_id`` (see
        :meth:`set_record_checksum`), or None."""
        found = self.db.get_meta(f"{RECORD_CHECKSUM_PREFIX}{record_id}:{selection}")
        return found if isinstance(found, str) else None

    def set_record_checksum(self, record_id: str, selection: str, checksum: str) -> None:
        """Keep the checksum of ``selection`` (the caller's name for what was summed) of a
        committed, hence immutable, record; deleted with the record."""
        self.db.set_meta(f"{RECORD_CHECKSUM_PREFIX}{record_id}:{selection}", checksum)

    def process_tmp(self, name: str | None = None) -> Path:
        """This process's scratch directory (or a path in it); put temporary mountpoints here."""
        return self.db.process_tmp(name)

    def discard_path(self, path: str | os.PathLike[str]) -> None:
        """Delete ``path`` after the current transaction commits (moved to trash, then removed)."""
        self.db.discard_path(path)

    def recover(self) -> None:
        """Clean up after processes that died using this store (run by :meth:`open`)."""
        recovery.recover(self.db, self.snapshotters)

    # ---- snapshotters (pybk.core.store.snapshots) -------------------------------------------

    @property
    def snapshotter(self) -> Snapshotter:
        """The snapshotter new records use."""
        return self.snapshotters.default

    def snapshotter_named(self, name: str) -> Any:
        """The snapshotter called ``name`` (for records another configuration made)."""
        return self.snapshotters.named(name)

    # ---- records and cache keys (pybk.core.store.records) -----------------------------------

    def get_record(self, record_id: str) -> Record | None:
        return self._records.get(record_id)

    def records(self) -> list[Record]:
        return self._records.all()

    def new_record(self, parent: Record | str | None = None, *, type: str = "regular",
                   description: str = "", lease: Lease | None = None) -> Record:
        """A mutable record with an active snapshot on ``parent`` (mount it with :meth:`mounts`,
        then :meth:`commit` or :meth:`discard` it)."""
        return self._records.new(parent, type=type, description=description,
                                 lease_id=lease.id if lease else None)

    def mounts(self, record: Record) -> list[Mount]:
        """Read-write mounts of a mutable record, read-only ones of a committed record."""
        return self._records.mounts(record)

    def record_snapshotter(self, record: Record) -> Any:
        """The snapshotter holding a record's snapshot."""
        return self._records.snapshotter_of(record)

    def own_layer(self, record: Record) -> str | None:
        """The layer directory of a mutable record, where files may be hard-linked in while it
        is not mounted (overlayfs); None when its snapshotter has none."""
        return self._records.own_layer(record)

    def mark_linked(self, record: Record, source: str) -> None:
        """Note that ``record``'s layer hard-links files of the directory ``source``."""
        self._records.mark_linked(record, source)

    def linked_sources(self, record: Record | str) -> set[str]:
        """Directories whose files are hard-linked into any layer of a committed record."""
        return self._records.linked_sources(record)

    def commit(self, record: Record) -> Record:
        """Make a mutable record immutable (unmount it first). Returns the committed record."""
        return self._records.commit(record)

    def discard(self, record: Record) -> None:
        """Drop an uncommitted record and its snapshot (e.g. after a failed step)."""
        self._records.discard(record)

    def merge(self, inputs: Sequence[Record | str], *, description: str = "",
              lease: Lease | None = None) -> Record:
        """MergeOp: the inputs' layers stacked in order."""
        return self._records.merge(inputs, description=description,
                                   lease_id=lease.id if lease else None)

    def diff(self, lower: Record | str | None, upper: Record | str, *, description: str = "",
             lease: Lease | None = None) -> Record:
        """DiffOp: the changes from ``lower`` (None: scratch) to ``upper``."""
        return self._records.diff(lower, upper, description=description,
                                  lease_id=lease.id if lease else None)

    def contents(self, record: Record) -> contextlib.AbstractContextManager[str]:
        """A directory showing a committed record's files (read only)."""
        return self._records.contents(record)

    def get_cache(self, cache_key: str, output: int = 0, *,
                  lease: Lease | None = None) -> Record | None:
        """The committed record stored for (``cache_key``, ``output``), if any; with ``lease``,
        held by it from the lookup on (a build must use a cache hit only this way: a prune
        between a lookup and a later :meth:`Lease.add` deletes what was found)."""
        return self._records.get_cache(cache_key, output,
                                       lease_id=lease.id if lease is not None else None)

    def put_cache(self, cache_key: str, record: Record | str, output: int = 0) -> None:
        """Remember ``record`` as the result of (``cache_key``, ``output``)."""
        self._records.put_cache(cache_key, record, output)

    def build_lock(self, cache_key: str) -> lockmod.FileLock:
        """Exclusive lock held while computing ``cache_key`` so no two processes build it twice
        (check :meth:`get_cache` again once it is held)."""
        return self._records.build_lock(cache_key)

    # ---- leases (pybk.core.store.leases) ----------------------------------------------------

    def lease(self) -> Lease:
        """A new lease of this process (``with store.lease() as lease: lease.add(record)``)."""
        return Lease.new(self.db)

    # ---- cache mounts and context copies ----------------------------------------------------

    async def cache_mount(self, cache_id: str, sharing: str = "shared", *,
                          seed: Record | None = None, seed_path: str = "/",
                          fill: Callable[[Path], None] | None = None,
                          ) -> tuple[list[Mount], Callable[[], None]]:
        """Mounts for ``RUN --mount=type=cache,id=…,sharing=…`` and the callback releasing them
        (:func:`pybk.core.store.cachemounts.cache_mount`)."""
        return await cachemounts.cache_mount(self._records, cache_id, sharing, seed=seed,
                                             seed_path=seed_path, fill=fill)

    def has_cache_mount(self, cache_id: str) -> bool:
        """Whether cache mount ``cache_id`` exists in this store."""
        return cachemounts.cache_mount_path(self._records, cache_id).is_dir()

    def cache_mount_path(self, cache_id: str) -> Path:
        """The directory of cache mount ``cache_id`` (it may not exist); read it holding
        ``locks.lock(cachemounts.cache_mount_lock_name(cache_id), shared=True)``."""
        return cachemounts.cache_mount_path(self._records, cache_id)

    def local_dir(self, name: str, shared_key: str) -> Path:
        """The directory a ``local://name`` context syncs into for ``shared_key``.

        Call it, sync and read the directory while holding :meth:`local_lock` (prune skips a
        held directory).
        """
        return localdirs.local_dir(self._records, name, shared_key)

    def local_lock(self, name: str, shared_key: str) -> lockmod.FileLock:
        return localdirs.local_lock(self.locks, name, shared_key)

    # ---- usage and pruning (pybk.core.store.gc) ---------------------------------------------

    def du(self, filters: Sequence[str] = ()) -> list[UsageInfo]:
        """Every record with its size, most recently used last."""
        return self._collector.du(filters)

    def prune(self, filters: Sequence[str] = (), *, all: bool = False,
              keep_duration: float = 0.0, keep_bytes: int = 0, reserved_space: int = 0,
              max_used_space: int = 0, min_free_space: int = 0,
              dry_run: bool = False) -> list[UsageInfo]:
        """One BuildKit prune pass; returns the deleted records (with ``dry_run``, those it
        would delete; :meth:`Collector.prune`)."""
        return self._collector.prune(filters, all=all, keep_duration=keep_duration,
                                     keep_bytes=keep_bytes, reserved_space=reserved_space,
                                     max_used_space=max_used_space,
                                     min_free_space=min_free_space, dry_run=dry_run)

    def explain_gc(self, policies: Sequence[Any]) -> list[tuple[UsageInfo, str]]:
        """Every record with what the GC ``policies`` would do to it now
        (:meth:`Collector.explain`); changes nothing."""
        return self._collector.explain(policies)

    def gc_due(self, interval: float = 60.0) -> bool:
        """Whether the automatic GC should run now (claims the slot when it is)."""
        return self._collector.gc_due(interval)

    def gc(self, policies: Sequence[Any]) -> list[UsageInfo]:
        """Run each policy as one prune pass, in order."""
        return self._collector.gc(policies)
