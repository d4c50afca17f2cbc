"""The local store: build results, cache keys, leases, cache mounts, context copies, history.

Layout under the root::

    metadata.db    sqlite (WAL): records, snapshots, cache keys, leases, named refs, history
    content/       OCI blobs (pybk.core.store.content)
    snapshots/     snapshotter directories (pybk.core.store.snapshots)
    cachemounts/   ``RUN --mount=type=cache`` directories
    locals/        incrementally synced copies of client directories
    locks/         named file locks (pybk.core.store.locks)
    tmp/           one directory per process (scratch space, temporary mountpoints, trash)

Crash safety: files are written elsewhere and renamed into place, metadata changes are sqlite
transactions, and files are deleted only after the transaction that forgets them commits.
Whatever a killed process leaves behind (its leases, uncommitted snapshots, mounts and scratch
under ``tmp/``) carries its identity (boot id, pid, start time) and is cleaned up by the next
``Store.open`` once that process is gone. Several processes may use one root at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

from pybk.core.errors import StoreError, UsageError
from pybk.core.interfaces import Mount, Snapshotter
from pybk.core.paths import default_root
from pybk.core.store import locks as lockmod

SCHEMA_VERSION = 1

RECORD_TYPES = ("regular", "source.local", "exec.cachemount", "source.git.checkout", "frontend",
                "internal")
CACHE_SHARING = ("shared", "private", "locked")
#: a synced local directory's state file is the directory's path plus this
LOCAL_SYNC_STATE_SUFFIX = ".syncstate"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshotter TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent TEXT,
    layers TEXT NOT NULL DEFAULT '[]',
    whiteouts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    created REAL NOT NULL,
    size INTEGER,
    UNIQUE (snapshotter, key)
);
CREATE TABLE IF NOT EXISTS snapshot_deps(
    snapshotter TEXT NOT NULL,
    key TEXT NOT NULL,
    dep TEXT NOT NULL,
    PRIMARY KEY (snapshotter, key, dep)
);
CREATE INDEX IF NOT EXISTS snapshot_deps_dep ON snapshot_deps(snapshotter, dep);
CREATE TABLE IF NOT EXISTS records(
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    snapshotter TEXT,
    snapshot TEXT,
    path TEXT,
    description TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_used REAL,
    usage_count INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    mutable INTEGER NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS record_parents(
    record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    parent_id TEXT NOT NULL REFERENCES records(id),
    PRIMARY KEY (record_id, parent_id)
);
CREATE INDEX IF NOT EXISTS record_parents_parent ON record_parents(parent_id);
CREATE TABLE IF NOT EXISTS cache_keys(
    cache_key TEXT NOT NULL,
    output INTEGER NOT NULL,
    record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    PRIMARY KEY (cache_key, output)
);
CREATE INDEX IF NOT EXISTS cache_keys_record ON cache_keys(record_id);
CREATE TABLE IF NOT EXISTS leases(
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_refs(
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    PRIMARY KEY (lease_id, record_id)
);
CREATE INDEX IF NOT EXISTS lease_refs_record ON lease_refs(record_id);
CREATE TABLE IF NOT EXISTS refs(
    name TEXT PRIMARY KEY,
    record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS refs_record ON refs(record_id);
CREATE TABLE IF NOT EXISTS history(
    ref TEXT PRIMARY KEY,
    frontend TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    error TEXT,
    num_total INTEGER NOT NULL DEFAULT 0,
    num_cached INTEGER NOT NULL DEFAULT 0,
    num_completed INTEGER NOT NULL DEFAULT 0,
    num_warnings INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL DEFAULT '{}'
);
"""


def _new_id() -> str:
    """A random record id (25 lowercase base-36 characters, like BuildKit's)."""
    n = int.from_bytes(secrets.token_bytes(16), "big")
    digits = []
    for _ in range(25):
        n, d = divmod(n, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[d])
    return "".join(digits)


def _dir_name(name: str) -> str:
    """A directory name for an arbitrary string: readable part plus a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60].strip("._") or "x"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@attrs.frozen
class Record:
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


@attrs.frozen
class UsageInfo:
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


_RECORD_COLUMNS = ("id, type, snapshot, path, description, created, last_used, usage_count, size,"
                   " mutable")


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
# The store
# --------------------------------------------------------------------------------------------


class Lease:
    """A build's hold on the records it uses: held records are never pruned.

    Released on exit (or by the next ``Store.open`` when its process died).
    """

    def __init__(self, store: Store, lease_id: str):
        self.store = store
        self.id = lease_id

    def add(self, record: Record | str) -> None:
        """Hold ``record`` and count it as used now."""
        record_id = record if isinstance(record, str) else record.id
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO lease_refs(lease_id, record_id) VALUES (?,?)",
                       (self.id, record_id))
            db.execute("UPDATE records SET last_used=?, usage_count=usage_count+1 WHERE id=?",
                       (time.time(), record_id))

    def release(self) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM leases WHERE id=?", (self.id,))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Store:
    """An open store root; use :meth:`open`. One object per process (not shared across fork)."""

    def __init__(self, root: str | os.PathLike[str], *,
                 snapshotter: str | Callable[[Store], Snapshotter] = "auto"):
        self.root = Path(os.path.realpath(root))
        #: a snapshotter name, or a factory called once to make the default snapshotter
        self.snapshotter_name = snapshotter
        for sub in ("content", "snapshots", "cachemounts", "locals", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.locks = lockmod.Locks(self.root / "locks")
        self._db_lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._tx_depth = 0
        self._after_tx: list[Callable[[], None]] = []
        self._snapshotter: Snapshotter | None = None
        self._snapshotters: dict[str, Snapshotter] = {}
        with self._db_lock:
            db = self._connection()
            try:
                db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)",
                           (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"store {self.root} was written by a newer pybk "
                                 f"(schema {row[0]} > {SCHEMA_VERSION})")

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None, *,
             snapshotter: str | Callable[[Store], Snapshotter] = "auto") -> Store:
        """Open (creating if needed) the store at ``root`` and clean up after dead processes."""
        try:
            store = cls(root if root is not None else Path(default_root()), snapshotter=snapshotter)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open store {root}: {e}") from None
        store.recover()
        return store

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- database ---------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return lockmod.process_identity()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._db_pid != os.getpid():
            db = sqlite3.connect(self.root / "metadata.db", timeout=60, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA busy_timeout=60000")
            for _ in range(100):  # switching to WAL needs a moment without other writers
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.05)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db, self._db_pid = db, os.getpid()
            self._tx_depth = 0
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one.

        Work registered with :meth:`after_commit` runs once the outermost one commits.
        """
        with self._db_lock:
            db = self._connection()
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield db
                finally:
                    self._tx_depth -= 1
                return
            db.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            try:
                yield db
            except BaseException:
                self._tx_depth = 0
                self._after_tx.clear()
                db.execute("ROLLBACK")
                raise
            self._tx_depth = 0
            db.execute("COMMIT")
            pending, self._after_tx = self._after_tx, []
        for work in pending:
            work()

    def after_commit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after the current transaction commits (now when there is none)."""
        with self._db_lock:
            if self._tx_depth:
                self._after_tx.append(work)
                return
        work()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._db_lock:
            return self._connection().execute(sql, args).fetchall()

    def get_meta(self, key: str) -> Any:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return orjson.loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)",
                       (key, orjson.dumps(value).decode()))

    def set_layer_blob(self, snapshot: str, descriptor: Mapping[str, Any]) -> None:
        """Remember the image layer blob a snapshot was unpacked from (``mediaType``,
        ``digest``, ``size``, ``diffID``, optionally ``source`` repository), so exporters can
        reuse it instead of recompressing."""
        self.set_meta("layer-blob:" + snapshot, dict(descriptor))

    def layer_blob(self, snapshot: str) -> dict[str, Any] | None:
        """The blob descriptor recorded with :meth:`set_layer_blob`, or None."""
        return self.get_meta("layer-blob:" + snapshot)

    # ---- files ------------------------------------------------------------------------------

    def _proc_dir(self, identity: str) -> Path:
        return self.root / "tmp" / ("proc_" + identity.replace(":", "_"))

    def process_tmp(self, name: str | None = None) -> Path:
        """This process's scratch directory (or a path in it); put temporary mountpoints here."""
        directory = self._proc_dir(self.identity)
        directory.mkdir(exist_ok=True)
        return directory / name if name else directory

    def discard_path(self, path: str | os.PathLike[str]) -> None:
        """Delete ``path`` after the current transaction commits (moved to trash, then removed)."""
        from pybk.core.store.snapshots import remove_path

        def work() -> None:
            trash = self.process_tmp(f"trash-{secrets.token_hex(6)}")
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return
            remove_path(str(trash))

        self.after_commit(work)

    # ---- recovery ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Clean up after processes that died using this store (run by :meth:`open`)."""
        from pybk.core.store import mounts as mountlib
        from pybk.core.store.snapshots import remove_path

        with self.locks.lock("recovery"):
            for entry in (self.root / "tmp").iterdir():
                if entry.name.startswith("proc_"):
                    identity = ":".join(entry.name[5:].rsplit("_", 2))
                    if lockmod.is_alive(identity):
                        continue
                    mountlib.cleanup_stale_mounts(str(entry))
                remove_path(str(entry))
            self._release_dead_owners()
            self._remove_orphan_snapshot_dirs()

    def _release_dead_owners(self) -> None:
        dead_owners = {
            owner for (owner,) in self.query(
                "SELECT owner FROM leases UNION SELECT owner FROM records WHERE owner IS NOT NULL"
                " UNION SELECT owner FROM snapshots WHERE owner IS NOT NULL")
            if not lockmod.is_alive(owner)
        }
        if not dead_owners:
            return
        marks = ",".join("?" * len(dead_owners))
        with self.transaction() as db:
            db.execute(f"DELETE FROM leases WHERE owner IN ({marks})", tuple(dead_owners))
            records = db.execute(
                f"SELECT id, snapshotter, snapshot FROM records WHERE owner IN ({marks})",
                tuple(dead_owners)).fetchall()
            snapshots = db.execute(
                f"SELECT snapshotter, key FROM snapshots WHERE owner IN ({marks})",
                tuple(dead_owners)).fetchall()
            db.executemany("DELETE FROM records WHERE id=?", [(r[0],) for r in records])
            leftovers = {(r[1], r[2]) for r in records if r[2]} | set(snapshots)
            for snapshotter, key in leftovers:
                sn = self.snapshotter_named(snapshotter)
                if sn.exists(key) and not sn.dependents(key):
                    sn.remove(key)

    def _remove_orphan_snapshot_dirs(self) -> None:
        """Snapshot directories whose row is gone (a crash after the row's deletion)."""
        known = {(name, str(i)) for name, i in self.query("SELECT snapshotter, id FROM snapshots")}
        for base in (self.root / "snapshots").iterdir():
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                if entry.name.isdigit() and (base.name, entry.name) not in known:
                    self.discard_path(entry)

    # ---- snapshotters -----------------------------------------------------------------------

    @property
    def snapshotter(self) -> Snapshotter:
        """The snapshotter new records use (``auto``: overlayfs when possible, else native)."""
        if self._snapshotter is None:
            from pybk.core.store.snapshots import make_snapshotter

            name = self.snapshotter_name
            self._snapshotter = (name(self) if callable(name)
                                 else make_snapshotter(self, name))
            self._snapshotters[self._snapshotter.name] = self._snapshotter
        return self._snapshotter

    def snapshotter_named(self, name: str) -> Any:
        """The snapshotter called ``name`` (for records another configuration made)."""
        if name not in self._snapshotters:
            from pybk.core.store.snapshots import make_snapshotter

            if self.snapshotter.name != name:
                self._snapshotters[name] = make_snapshotter(self, name)
        return self._snapshotters[name]

    # ---- records ----------------------------------------------------------------------------

    def _record(self, db: sqlite3.Connection, row: Sequence) -> Record:
        parents = tuple(p for (p,) in db.execute(
            "SELECT parent_id FROM record_parents WHERE record_id=? ORDER BY rowid", (row[0],)))
        (id_, type_, snapshot, path, description, created, last_used, usage_count, size,
         mutable) = row
        return Record(id_, type_, snapshot, path, description, created, last_used, usage_count,
                      size, bool(mutable), parents)

    def get_record(self, record_id: str) -> Record | None:
        with self._db_lock:
            db = self._connection()
            row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id=?",
                             (record_id,)).fetchone()
            return self._record(db, row) if row else None

    def records(self) -> list[Record]:
        with self._db_lock:
            db = self._connection()
            rows = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records ORDER BY created").fetchall()
            return [self._record(db, r) for r in rows]

    def _insert_record(self, db: sqlite3.Connection, *, type: str, description: str,
                       mutable: bool, owner: str | None, snapshotter: str | None = None,
                       snapshot: str | None = None, path: str | None = None,
                       parents: Sequence[str] = (), lease: Lease | None = None,
                       record_id: str | None = None) -> str:
        if type not in RECORD_TYPES:
            raise StoreError(f"unknown record type {type!r} (known: {', '.join(RECORD_TYPES)})")
        record_id = record_id or _new_id()
        now = time.time()
        db.execute(
            "INSERT INTO records(id, type, snapshotter, snapshot, path, description, created,"
            " last_used, usage_count, mutable, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (record_id, type, snapshotter, snapshot, path, description, now, now, 1,
             int(mutable), owner))
        db.executemany("INSERT INTO record_parents(record_id, parent_id) VALUES (?,?)",
                       [(record_id, p) for p in dict.fromkeys(parents)])
        if lease is not None:
            db.execute("INSERT INTO lease_refs(lease_id, record_id) VALUES (?,?)",
                       (lease.id, record_id))
        return record_id

    def _committed(self, record: Record | str) -> Record:
        found = self.get_record(record if isinstance(record, str) else record.id)
        if found is None:
            raise StoreError(f"record {record if isinstance(record, str) else record.id} "
                             "does not exist")
        if found.mutable or found.snapshot is None:
            raise StoreError(f"record {found.id} is not a committed snapshot")
        return found

    def new_record(self, parent: Record | str | None = None, *, type: str = "regular",
                   description: str = "", lease: Lease | None = None) -> Record:
        """A mutable record with an active snapshot on ``parent`` (mount it with :meth:`mounts`,
        then :meth:`commit` or :meth:`discard` it)."""
        parent_rec = self._committed(parent) if parent is not None else None
        sn = self.snapshotter
        record_id = _new_id()
        key = f"active-{record_id}"
        with self.transaction() as db:
            self._insert_record(db, type=type, description=description, mutable=True,
                                owner=self.identity, snapshotter=sn.name, snapshot=key,
                                parents=[parent_rec.id] if parent_rec else (), lease=lease,
                                record_id=record_id)
        try:
            sn.prepare(key, parent_rec.snapshot if parent_rec else None)
        except BaseException:
            with self.transaction() as db:
                db.execute("DELETE FROM records WHERE id=?", (record_id,))
            raise
        return self.get_record(record_id)  # type: ignore[return-value]

    def mounts(self, record: Record) -> list[Mount]:
        """Read-write mounts of a mutable record, read-only ones of a committed record."""
        if record.snapshot is None:
            return [Mount("bind", str(self.root / record.path), ("rbind", "rw"))]  # type: ignore[operator]
        return self.snapshotter_named(self._snapshotter_of(record)).mounts(record.snapshot)

    def record_snapshotter(self, record: Record) -> Any:
        """The snapshotter holding a record's snapshot."""
        return self.snapshotter_named(self._snapshotter_of(record))

    def own_layer(self, record: Record) -> str | None:
        """The layer directory of a mutable record, where files may be hard-linked in while it
        is not mounted (overlayfs); None when its snapshotter has none."""
        if record.snapshot is None or not record.mutable:
            return None
        return self.record_snapshotter(record).own_layer(record.snapshot)

    def mark_linked(self, record: Record, source: str) -> None:
        """Note that ``record``'s layer hard-links files of the directory ``source``."""
        self.record_snapshotter(record).mark_linked(record.snapshot, source)

    def linked_sources(self, record: Record | str) -> set[str]:
        """Directories whose files are hard-linked into any layer of a committed record."""
        rec = self._committed(record)
        sn = self.record_snapshotter(rec)
        return set().union(*sn.linked_sources(sn.layer_chain(rec.snapshot)))

    def _snapshotter_of(self, record: Record) -> str:
        return self.query("SELECT snapshotter FROM records WHERE id=?", (record.id,))[0][0]

    def commit(self, record: Record) -> Record:
        """Make a mutable record immutable (unmount it first). Returns the committed record."""
        sn = self.snapshotter_named(self._snapshotter_of(record))
        with self.transaction() as db:
            row = db.execute("SELECT mutable, snapshot, owner FROM records WHERE id=?",
                             (record.id,)).fetchone()
            if row is None or not row[0] or row[2] is None:
                raise StoreError(f"record {record.id} is not an uncommitted snapshot")
            sn.commit(record.id, row[1])
            db.execute("UPDATE records SET mutable=0, snapshot=?, owner=NULL, last_used=?"
                       " WHERE id=?", (record.id, time.time(), record.id))
        return self.get_record(record.id)  # type: ignore[return-value]

    def discard(self, record: Record) -> None:
        """Drop an uncommitted record and its snapshot (e.g. after a failed step)."""
        with self.transaction() as db:
            row = db.execute("SELECT snapshotter, snapshot FROM records WHERE id=? AND owner"
                             " IS NOT NULL", (record.id,)).fetchone()
            if row is None:
                raise StoreError(f"record {record.id} is not an uncommitted snapshot")
            db.execute("DELETE FROM records WHERE id=?", (record.id,))
            sn = self.snapshotter_named(row[0])
            if sn.exists(row[1]):
                sn.remove(row[1])

    def _derived(self, inputs: Sequence[Record], make: Callable[[str], str], *,
                 description: str, lease: Lease | None) -> Record:
        """A committed record made by the snapshotter from ``inputs`` (merge, diff)."""
        sn = self.snapshotter
        record_id = _new_id()
        with self.transaction() as db:
            self._insert_record(db, type="regular", description=description, mutable=True,
                                owner=self.identity, snapshotter=sn.name, snapshot=record_id,
                                parents=[r.id for r in inputs], lease=lease,
                                record_id=record_id)
        try:
            make(record_id)
        except BaseException:
            with self.transaction() as db:
                db.execute("DELETE FROM records WHERE id=?", (record_id,))
            raise
        with self.transaction() as db:
            db.execute("UPDATE records SET mutable=0, owner=NULL WHERE id=?", (record_id,))
        return self.get_record(record_id)  # type: ignore[return-value]

    def merge(self, inputs: Sequence[Record | str], *, description: str = "",
              lease: Lease | None = None) -> Record:
        """MergeOp: the inputs' layers stacked in order."""
        recs = [self._committed(r) for r in inputs]
        sn: Any = self.snapshotter
        return self._derived(recs, lambda key: sn.merge([r.snapshot for r in recs], key),
                             description=description, lease=lease)

    def diff(self, lower: Record | str | None, upper: Record | str, *, description: str = "",
             lease: Lease | None = None) -> Record:
        """DiffOp: the changes from ``lower`` (None: scratch) to ``upper``."""
        low = self._committed(lower) if lower is not None else None
        up = self._committed(upper)
        sn: Any = self.snapshotter
        return self._derived(
            [r for r in (low, up) if r is not None],
            lambda key: sn.diff(low.snapshot if low else None, up.snapshot, key),
            description=description, lease=lease)

    @contextlib.contextmanager
    def contents(self, record: Record) -> Iterator[str]:
        """A directory showing a committed record's files (read only)."""
        if record.snapshot is None:
            yield str(self.root / record.path)  # type: ignore[operator]
            return
        sn = self.snapshotter_named(self._snapshotter_of(record))
        with sn.contents(record.snapshot) as path:
            yield path

    # ---- cache keys, leases, locks ----------------------------------------------------------

    def get_cache(self, cache_key: str, output: int = 0) -> Record | None:
        """The committed record stored for (``cache_key``, ``output``), if any."""
        with self._db_lock:
            db = self._connection()
            row = db.execute(
                f"SELECT {', '.join('r.' + c for c in _RECORD_COLUMNS.split(', '))}"
                " FROM cache_keys k JOIN records r ON r.id = k.record_id"
                " WHERE k.cache_key=? AND k.output=? AND r.mutable=0"
                " AND (r.snapshotter IS NULL OR r.snapshotter=?)",
                (cache_key, output, self.snapshotter.name)).fetchone()
            return self._record(db, row) if row else None

    def put_cache(self, cache_key: str, record: Record | str, output: int = 0) -> None:
        """Remember ``record`` as the result of (``cache_key``, ``output``)."""
        record_id = record if isinstance(record, str) else record.id
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO cache_keys(cache_key, output, record_id, created)"
                       " VALUES (?,?,?,?)", (cache_key, output, record_id, time.time()))

    def lease(self) -> Lease:
        """A new lease of this process (``with store.lease() as lease: lease.add(record)``)."""
        lease_id = _new_id()
        with self.transaction() as db:
            db.execute("INSERT INTO leases(id, owner, created) VALUES (?,?,?)",
                       (lease_id, self.identity, time.time()))
        return Lease(self, lease_id)

    def build_lock(self, cache_key: str) -> lockmod.FileLock:
        """Exclusive lock held while computing ``cache_key`` so no two processes build it twice
        (check :meth:`get_cache` again once it is held)."""
        return self.locks.lock(f"build-{hashlib.sha256(cache_key.encode()).hexdigest()}")

    # ---- named directories: cache mounts and local sources ----------------------------------

    def _named_dir(self, ref: str, relpath: str, *, type: str, description: str,
                   seed: Callable[[Path], None] | None = None) -> Record:
        """The record behind a named directory, created (and seeded) on first use."""
        path = self.root / relpath
        if not path.is_dir():
            temp = self.process_tmp(f"new-{secrets.token_hex(6)}")
            temp.mkdir()
            if seed is not None:
                seed(temp)
            try:
                os.rename(temp, path)
            except OSError:  # another process created it first
                from pybk.core.store.snapshots import remove_path

                remove_path(str(temp))
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT record_id FROM refs WHERE name=?", (ref,)).fetchone()
            if row is None:
                record_id = self._insert_record(db, type=type, description=description,
                                                mutable=True, owner=None, path=relpath)
                db.execute("INSERT INTO refs(name, record_id) VALUES (?,?)", (ref, record_id))
            else:
                record_id = row[0]
                db.execute("UPDATE records SET last_used=?, usage_count=usage_count+1,"
                           " size=NULL WHERE id=?", (now, record_id))
        return self.get_record(record_id)  # type: ignore[return-value]

    async def cache_mount(self, cache_id: str, sharing: str = "shared", *,
                          seed: Record | None = None, seed_path: str = "/",
                          ) -> tuple[list[Mount], Callable[[], None]]:
        """Mounts for ``RUN --mount=type=cache,id=…,sharing=…`` and the callback releasing them.

        ``shared``: every user gets the same directory at once; ``locked``: the same directory,
        one user at a time (others wait); ``private``: a directory no one else uses meanwhile
        (the shared one when free, else another copy, reused when free). ``seed``: a committed
        record whose directory ``seed_path`` (``source=``) fills a newly created cache directory,
        its own mode and owner included (``from=``).
        """
        import asyncio

        if sharing not in CACHE_SHARING:
            raise UsageError(f"invalid cache sharing {sharing!r} (choose {', '.join(CACHE_SHARING)})")
        slot = 0
        if sharing == "private":
            while (lock := self.locks.try_lock(f"cachemount-{cache_id}#{slot}")) is None:
                slot += 1
        else:
            lock = self.locks.lock(f"cachemount-{cache_id}#0", shared=sharing == "shared")
            await lock.acquire_async()
        try:
            def seed_from(target: Path) -> None:
                from pybk.core.fs.fileop import resolve_in_root
                from pybk.core.store.snapshots import copy_contents

                with self.contents(seed) as src:  # type: ignore[arg-type]
                    top = resolve_in_root(src, seed_path)
                    if os.path.isdir(top):
                        copy_contents(top, str(target))
                        st = os.stat(top)
                        os.chown(target, st.st_uid, st.st_gid)
                        os.chmod(target, st.st_mode & 0o7777)

            name = _dir_name(cache_id) + (f".{slot}" if slot else "")
            record = await asyncio.to_thread(
                self._named_dir, f"cachemount-{cache_id}#{slot}", f"cachemounts/{name}",
                type="exec.cachemount", description=f"cached mount {cache_id}",
                seed=seed_from if seed is not None else None)
        except BaseException:
            lock.release()
            raise
        return [Mount("bind", str(self.root / record.path), ("rbind", "rw"))], lock.release  # type: ignore[operator]

    def local_dir(self, name: str, shared_key: str) -> Path:
        """The directory a ``local://name`` context syncs into for ``shared_key``.

        Call it, sync and read the directory while holding :meth:`local_lock` (prune skips a
        held directory).
        """
        ref = f"locals/{name}-{shared_key}"
        # the sync keeps its state next to it (``DIR`` + LOCAL_SYNC_STATE_SUFFIX)
        record = self._named_dir(ref, f"locals/{_dir_name(f'{name}-{shared_key}')}",
                                 type="source.local", description=f"local source for {name}")
        return self.root / record.path  # type: ignore[operator]

    def local_lock(self, name: str, shared_key: str) -> lockmod.FileLock:
        return self.locks.lock(f"locals/{name}-{shared_key}")

    # ---- usage and pruning ------------------------------------------------------------------

    def _record_size(self, record: Record) -> int:
        if record.size is not None and not record.mutable:
            return record.size
        if record.snapshot is not None:
            sn = self.snapshotter_named(self._snapshotter_of(record))
            size = sn.usage(record.snapshot) if sn.exists(record.snapshot) else 0
        else:
            from pybk.core.store.snapshots import disk_usage

            size = disk_usage(self.root / record.path)  # type: ignore[operator]
        if not record.mutable:
            with self.transaction() as db:
                db.execute("UPDATE records SET size=? WHERE id=?", (size, record.id))
        return size

    def _in_use(self) -> set[str]:
        """Ids of records some live process holds (lease, uncommitted snapshot, named dir)."""
        used = {r for (r,) in self.query(
            "SELECT record_id FROM lease_refs JOIN leases ON leases.id = lease_refs.lease_id")}
        used |= {r for (r, owner) in self.query(
            "SELECT id, owner FROM records WHERE owner IS NOT NULL") if lockmod.is_alive(owner)}
        for name, record_id in self.query("SELECT name, record_id FROM refs"):
            probe = self.locks.try_lock(name)
            if probe is None:
                used.add(record_id)
            else:
                probe.release()
        return used

    def du(self, filters: Sequence[str] = ()) -> list[UsageInfo]:
        """Every record with its size, most recently used last."""
        self._release_dead_owners()
        match = parse_filters(filters)
        used = self._in_use()
        rows = []
        for record in self.records():
            info = UsageInfo(record.id, record.mutable, record.id in used,
                             self._record_size(record), record.parents, record.created,
                             record.last_used, record.usage_count, record.description,
                             record.type)
            if match(info):
                rows.append(info)
        return sorted(rows, key=lambda i: (i.last_used_at or 0, i.created_at))

    def _delete_record(self, record_id: str, path_lock: str | None) -> bool:
        """Forget a record and delete its files; False when it is (now) held or needed."""
        held = self.locks.try_lock(path_lock) if path_lock else None
        if path_lock and held is None:
            return False
        try:
            with self.transaction() as db:
                row = db.execute("SELECT snapshotter, snapshot, path FROM records WHERE id=? AND"
                                 " owner IS NULL", (record_id,)).fetchone()
                if row is None or db.execute(
                        "SELECT 1 FROM record_parents WHERE parent_id=? UNION ALL SELECT 1 FROM"
                        " lease_refs WHERE record_id=?", (record_id, record_id)).fetchone():
                    return False
                snapshotter, snapshot, path = row
                if snapshot is not None:
                    sn = self.snapshotter_named(snapshotter)
                    if sn.exists(snapshot) and sn.dependents(snapshot):
                        return False
                db.execute("DELETE FROM records WHERE id=?", (record_id,))
                if snapshot is not None and sn.exists(snapshot):
                    sn.remove(snapshot)
                if path is not None:
                    self.discard_path(self.root / path)
                    # a synced local directory's state: a later sync must start from scratch
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.root / (path.rstrip("/") + LOCAL_SYNC_STATE_SUFFIX))
            return True
        finally:
            if held is not None:
                held.release()

    def prune(self, filters: Sequence[str] = (), *, all: bool = False,
              keep_duration: float = 0.0, keep_bytes: int = 0, reserved_space: int = 0,
              max_used_space: int = 0, min_free_space: int = 0) -> list[UsageInfo]:
        """One BuildKit prune pass; returns the deleted records.

        Records in use are never deleted, ``internal``/``frontend`` ones only with ``all``,
        ones used within ``keep_duration`` seconds not at all. Without size targets every
        matching record goes; with them, records go one at a time (least recently and least
        often used first) until the total is below the target. ``keep_bytes`` is the old name
        of ``reserved_space``.
        """
        reserved_space = reserved_space or keep_bytes
        usage = self.du()
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
                disk = os.statvfs(self.root)
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
        ref_names = dict((r, n) for n, r in self.query("SELECT name, record_id FROM refs"))
        deleted: list[UsageInfo] = []
        progress = True
        while candidates and progress and not (sized and total <= keep):
            progress = False
            for info in list(candidates):
                if self._delete_record(info.id, ref_names.get(info.id)):
                    candidates.remove(info)
                    deleted.append(info)
                    total -= info.size
                    progress = True
                    if sized:
                        break
        return deleted

    def gc_due(self, interval: float = 60.0) -> bool:
        """Whether the automatic GC should run now: at most once per ``interval`` seconds per
        store (BuildKit's throttle), across processes; claims the slot when it is."""
        stamp = self.root / "gc.stamp"
        now = time.time()
        try:
            if now - stamp.stat().st_mtime < interval:
                return False
        except FileNotFoundError:
            pass
        with contextlib.suppress(OSError):
            stamp.touch()
            os.utime(stamp, (now, now))
        return True

    def gc(self, policies: Sequence[Any]) -> list[UsageInfo]:
        """Run each policy as one prune pass, in order.

        ``policies`` are resolved rules (:func:`pybk.core.config.schema.gc_prune_rules`): sizes in
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

    # ---- history ----------------------------------------------------------------------------

    def history_start(self, ref: str, *, frontend: str = "",
                      data: Mapping[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO history(ref, frontend, started, status, data)"
                       " VALUES (?,?,?,'running',?)",
                       (ref, frontend, time.time(), orjson.dumps(dict(data or {})).decode()))

    def history_finish(self, ref: str, *, status: str, error: str | None = None,
                       num_total: int = 0, num_cached: int = 0, num_completed: int = 0,
                       num_warnings: int = 0, data: Mapping[str, Any] | None = None) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT data FROM history WHERE ref=?", (ref,)).fetchone()
            if row is None:
                raise StoreError(f"no build {ref!r} in the history")
            merged = {**orjson.loads(row[0]), **(data or {})}
            db.execute(
                "UPDATE history SET finished=?, status=?, error=?, num_total=?, num_cached=?,"
                " num_completed=?, num_warnings=?, data=? WHERE ref=?",
                (time.time(), status, error, num_total, num_cached, num_completed, num_warnings,
                 orjson.dumps(merged).decode(), ref))

    def history(self, ref: str | None = None) -> list[HistoryEntry]:
        """History entries, newest first (or the one named ``ref``)."""
        sql = ("SELECT ref, frontend, started, finished, status, error, num_total, num_cached,"
               " num_completed, num_warnings, pinned, data FROM history")
        rows = self.query(sql + (" WHERE ref=?" if ref else "") + " ORDER BY started DESC",
                          (ref,) if ref else ())
        return [HistoryEntry(*r[:10], bool(r[10]), orjson.loads(r[11])) for r in rows]

    def history_update(self, ref: str, *, pinned: bool | None = None,
                       delete: bool = False) -> None:
        with self.transaction() as db:
            if delete:
                db.execute("DELETE FROM history WHERE ref=?", (ref,))
            elif pinned is not None:
                db.execute("UPDATE history SET pinned=? WHERE ref=?", (int(pinned), ref))

    def history_cleanup(self, *, max_age: float = 48 * 3600, max_entries: int = 50) -> list[str]:
        """BuildKit's rule: only beyond ``max_entries`` unpinned entries, delete those past the
        newest ``max_entries`` that are also older than ``max_age`` seconds."""
        with self.transaction() as db:
            rows = db.execute("SELECT ref, started FROM history WHERE pinned=0 AND status!="
                              "'running' ORDER BY started DESC").fetchall()
            old = [ref for ref, started in rows[max_entries:]
                   if started < time.time() - max_age]
            db.executemany("DELETE FROM history WHERE ref=?", [(r,) for r in old])
        return old
