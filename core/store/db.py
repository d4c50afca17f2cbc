"""The store root: its directories, its metadata database (sqlite, WAL) and per-process scratch.

Everything else in the store (records, leases, named directories, usage, and the
snapshotters) keeps its metadata in the one database opened here and shares its transactions:
a nested :meth:`StoreDB.transaction` joins the outer one, and work registered with
:meth:`StoreDB.after_commit` (deleting files) runs only once the outermost one commits.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from pybk.core.errors import StoreError
from pybk.core.fs.files import private_dir, remove_path
from pybk.core.paths import STORE_SOCKET
from pybk.core.store import locks as lockmod

SCHEMA_VERSION = 1


class StoreFullError(StoreError):
    """The store's database could not be written: its filesystem is full."""


def _full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL

#: directories under the root
LAYOUT = ("content", "snapshots", "cachemounts", "locals", "locks", "tmp")

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
"""


def root_mode(root: str | os.PathLike[str]) -> int:
    """The mode of a store's root: 0700; 0711 (search only, no listing) while the socket of a
    daemon serving other users lies in it (``ROOT/pybkd.sock`` handed to another user or group
    by ``[grpc] uid``/``gid``), so they can reach it."""
    try:
        sock = os.lstat(os.path.join(root, STORE_SOCKET))
        own = os.stat(root)
    except OSError:
        return 0o700
    if stat.S_ISSOCK(sock.st_mode) and (sock.st_uid, sock.st_gid) != (own.st_uid, own.st_gid):
        return 0o711
    return 0o700


def secure_root(root: str | os.PathLike[str]) -> None:
    """Make (or tighten) a store's root and its top-level entries, whatever the umask: the root
    :func:`root_mode`, every directory in it 0700 (:data:`LAYOUT` made if missing; the
    executor's, caches', sessions' … directories too), every regular file 0600. Nobody else
    reaches what images and build contexts put there (setuid files, device nodes, secrets in
    context copies). Run each time a store is opened, and by pybkd once its socket is bound."""
    if not os.path.isdir(root):
        private_dir(root)
    for sub in LAYOUT:
        private_dir(os.path.join(root, sub))
    _tighten_entries(root)
    mode = root_mode(root)
    if stat.S_IMODE(os.stat(root).st_mode) != mode:
        os.chmod(root, mode)


def _tighten_entries(root: str | os.PathLike[str]) -> None:
    """Directories directly in ``root`` to 0700, regular files to 0600 (sockets and symbolic
    links left alone)."""
    with os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                wanted = (0o700 if stat.S_ISDIR(st.st_mode)
                          else 0o600 if stat.S_ISREG(st.st_mode) else None)
                if wanted is not None and stat.S_IMODE(st.st_mode) != wanted:
                    os.chmod(entry.path, wanted)


def new_id() -> str:
    """A random id (25 lowercase base-36 characters, like BuildKit's record ids)."""
    n = int.from_bytes(secrets.token_bytes(16), "big")
    digits = []
    for _ in range(25):
        n, d = divmod(n, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[d])
    return "".join(digits)


class StoreDB:
    """A store root with its metadata database open. One object per process (not shared across
    fork): a forked child opens its own connection on first use."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(os.path.realpath(root))
        secure_root(self.root)
        self.locks = lockmod.Locks(self.root / "locks")
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._tx_depth = 0
        self._after_tx: list[Callable[[], None]] = []
        with self._lock:
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
        _tighten_entries(self.root)  # the database file (its -wal and -shm take its mode)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def identity(self) -> str:
        """This process's identity (boot id, pid, start time), the owner of what it holds."""
        return lockmod.process_identity()

    # ---- database ---------------------------------------------------------------------------

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
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for several reads in a row (no transaction)."""
        with self._lock:
            yield self._connection()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one.

        Work registered with :meth:`after_commit` runs once the outermost one commits.
        """
        with self._lock:
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
            except BaseException as e:
                self._tx_depth = 0
                self._after_tx.clear()
                if db.in_transaction:  # sqlite rolls back by itself after some errors
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error) and _full(e):
                    raise self._full_error() from e
                raise
            self._tx_depth = 0
            try:
                db.execute("COMMIT")
            except BaseException as e:
                # e.g. a full disk: nothing of the transaction happened, so neither may the
                # work waiting for it (sqlite may already have rolled back)
                self._after_tx.clear()
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error) and _full(e):
                    raise self._full_error() from e
                raise
            pending, self._after_tx = self._after_tx, []
        for work in pending:
            work()

    def _full_error(self) -> StoreFullError:
        return StoreFullError(
            f"no space left on device: the store at {self.root} is full, its database "
            "cannot be written; free some space (pybk prune) and build again")

    def after_commit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after the current transaction commits (now when there is none)."""
        with self._lock:
            if self._tx_depth:
                self._after_tx.append(work)
                return
        work()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def get_meta(self, key: str) -> Any:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return orjson.loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)",
                       (key, orjson.dumps(value).decode()))

    # ---- files ------------------------------------------------------------------------------

    def proc_dir(self, identity: str) -> Path:
        """The scratch directory of the process ``identity``."""
        return self.root / "tmp" / ("proc_" + identity.replace(":", "_"))

    def process_tmp(self, name: str | None = None) -> Path:
        """This process's scratch directory (or a path in it); put temporary mountpoints here."""
        directory = self.proc_dir(self.identity)
        directory.mkdir(exist_ok=True)
        return directory / name if name else directory

    def discard_path(self, path: str | os.PathLike[str]) -> None:
        """Delete ``path`` after the current transaction commits (moved to trash, then removed)."""
        def work() -> None:
            trash = self.process_tmp(f"trash-{secrets.token_hex(6)}")
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return
            remove_path(str(trash))

        self.after_commit(work)
