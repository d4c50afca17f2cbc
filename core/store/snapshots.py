"""Snapshots: what every snapshotter of the store shares (:class:`StoreSnapshotter`).

The snapshotters (``overlayfs`` and ``native``, in :mod:`pybk.core.store.snapshotters`) keep their metadata in the store's ``metadata.db`` (table ``snapshots``) and their files
under ``<store>/snapshots/<name>/<id>/``. Every snapshot has

- *contents*: what its mounts show;
- a *layer*: its own changes relative to the snapshots below it, with overlay-style whiteouts
  (a ``0:0`` character device for a deleted path, ``trusted.overlay.opaque=y`` on a directory
  that replaces the one below) — what an exporter turns into an OCI layer;
- a *layer chain*: the keys whose layers, stacked bottom to top, make its contents
  (``parent``'s chain plus itself; a merge concatenates its inputs' chains).

Committed snapshots are immutable and only ever mounted read-only. ``merge`` and ``diff`` create
committed snapshots for BuildKit's MergeOp and DiffOp.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import orjson

from pybk.core.errors import StoreError
from pybk.core.fs.files import remove_path
from pybk.core.interfaces import Mount, Snapshotter
from pybk.core.model import Model
from pybk.core.store import mounts as mountlib
from pybk.core.store.db import StoreDB
from pybk.core.store.trees import (
    apply_layer,
    disk_usage,
)

#: file in a snapshot's directory naming the directories whose files its layer links to
_LINKED_FROM = "linked-from"

# --------------------------------------------------------------------------------------------
# Snapshot metadata
# --------------------------------------------------------------------------------------------


class SnapshotInfo(Model):
    """One row of the ``snapshots`` table."""

    key: str
    id: int
    kind: str  # "active" | "view" | "committed"
    parent: str | None
    #: keys of the layers below this one, bottom to top (the parent's chain for a plain child)
    layers: tuple[str, ...]
    #: the own layer may hold whiteouts (mount it over an empty dir to hide them)
    whiteouts: bool
    owner: str | None
    created: float
    size: int | None

    @property
    def chain(self) -> tuple[str, ...]:
        return (*self.layers, self.key)


_COLUMNS = "key, id, kind, parent, layers, whiteouts, owner, created, size"


def _info(row: Sequence) -> SnapshotInfo:
    key, id_, kind, parent, layers, whiteouts, owner, created, size = row
    return SnapshotInfo(key, id_, kind, parent, tuple(orjson.loads(layers)), bool(whiteouts),
                        owner, created, size)


def as_db(db_or_root: StoreDB | str | os.PathLike[str]) -> StoreDB:
    return db_or_root if isinstance(db_or_root, StoreDB) else StoreDB(db_or_root)


class StoreSnapshotter(Snapshotter):
    """What both snapshotters share: metadata in the store's database, layer chains, merge and
    diff. Made with the store's :class:`StoreDB` (or a store root, whose database it opens)."""

    name: ClassVar[str]

    def __init__(self, db: StoreDB | str | os.PathLike[str]):
        self.db = as_db(db)
        self.base = self.db.root / "snapshots" / self.name
        self.base.mkdir(parents=True, exist_ok=True)

    # ---- metadata ---------------------------------------------------------------------------

    def info(self, key: str) -> SnapshotInfo | None:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM snapshots WHERE snapshotter=? AND key=?", (self.name, key))
        return _info(rows[0]) if rows else None

    def _require(self, key: str, *kinds: str) -> SnapshotInfo:
        info = self.info(key)
        if info is None:
            raise StoreError(f"snapshot {key!r} does not exist")
        if kinds and info.kind not in kinds:
            raise StoreError(f"snapshot {key!r} is {info.kind}, not {' or '.join(kinds)}")
        return info

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def list(self) -> list[SnapshotInfo]:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM snapshots WHERE snapshotter=? ORDER BY id", (self.name,))
        return [_info(r) for r in rows]

    def dependents(self, key: str) -> list[str]:
        """Snapshots that need ``key`` (children, views, merges and diffs made from it)."""
        rows = self.db.query(
            "SELECT key FROM snapshot_deps WHERE snapshotter=? AND dep=?", (self.name, key))
        return [r[0] for r in rows]

    def dir(self, info: SnapshotInfo) -> Path:
        return self.base / str(info.id)

    def _insert(self, key: str, kind: str, *, parent: str | None = None,
                layers: Sequence[str] = (), deps: Sequence[str] = (),
                whiteouts: bool = False) -> SnapshotInfo:
        """Add a row (and its dependencies) and create the snapshot's directory."""
        owner = None if kind == "committed" else self.db.identity
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM snapshots WHERE snapshotter=? AND key=?",
                          (self.name, key)).fetchone():
                raise StoreError(f"snapshot {key!r} already exists")
            for dep in deps:
                row = db.execute("SELECT kind FROM snapshots WHERE snapshotter=? AND key=?",
                                 (self.name, dep)).fetchone()
                if row is None or row[0] != "committed":
                    raise StoreError(f"snapshot {dep!r} is not a committed snapshot")
            cur = db.execute(
                "INSERT INTO snapshots(snapshotter, key, kind, parent, layers, whiteouts, owner,"
                " created) VALUES (?,?,?,?,?,?,?,?)",
                (self.name, key, kind, parent, orjson.dumps(list(layers)).decode(),
                 int(whiteouts), owner, time.time()))
            db.executemany("INSERT OR IGNORE INTO snapshot_deps(snapshotter, key, dep)"
                           " VALUES (?,?,?)", [(self.name, key, d) for d in deps])
            info = _info(db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE id=?",
                                    (cur.lastrowid,)).fetchone())
        directory = self.dir(info)
        if directory.exists():  # left by a crash between a row's deletion and its directory's
            remove_path(str(directory))
        directory.mkdir()
        return info

    # ---- containerd-shaped API --------------------------------------------------------------

    def prepare(self, key: str, parent: str | None = None) -> list[Mount]:
        parent_info = self._require(parent, "committed") if parent else None
        layers = parent_info.chain if parent_info else ()
        info = self._insert(key, "active", parent=parent, layers=layers,
                            deps=[parent] if parent else [])
        try:
            self._create_active(info, parent_info)
        except BaseException:
            self.remove(key)
            raise
        return self.mounts(key)

    def view(self, key: str, parent: str | None = None) -> list[Mount]:
        parent_info = self._require(parent, "committed") if parent else None
        info = self._insert(key, "view", parent=parent,
                            layers=parent_info.chain if parent_info else (),
                            deps=[parent] if parent else [])
        (self.dir(info) / "fs").mkdir()
        return self.mounts(key)

    def mounts(self, key: str) -> list[Mount]:
        """Mounts of an active (read-write) or view / committed (read-only) snapshot."""
        info = self._require(key)
        if info.kind == "active":
            return self._active_mounts(info)
        if info.kind == "view":
            return self.mounts(info.parent) if info.parent else self._bind(info, ro=True)
        return self._readonly_mounts(info)

    def commit(self, name: str, key: str) -> None:
        with self.db.transaction() as db:
            row = db.execute("SELECT kind FROM snapshots WHERE snapshotter=? AND key=?",
                             (self.name, key)).fetchone()
            if row is None or row[0] != "active":
                raise StoreError(f"snapshot {key!r} is not an active snapshot")
            if db.execute("SELECT 1 FROM snapshots WHERE snapshotter=? AND key=?",
                          (self.name, name)).fetchone():
                raise StoreError(f"snapshot {name!r} already exists")
            db.execute("UPDATE snapshots SET key=?, kind='committed', owner=NULL, created=?"
                       " WHERE snapshotter=? AND key=?", (name, time.time(), self.name, key))
            db.execute("UPDATE snapshot_deps SET key=? WHERE snapshotter=? AND key=?",
                       (name, self.name, key))
            info = self._require(name)
            self.db.after_commit(lambda: self._after_commit(info))

    def remove(self, key: str) -> None:
        """Remove a snapshot; refused while other snapshots depend on it."""
        with self.db.transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE snapshotter=? AND key=?",
                             (self.name, key)).fetchone()
            if row is None:
                raise StoreError(f"snapshot {key!r} does not exist")
            info = _info(row)
            children = [r[0] for r in db.execute(
                "SELECT key FROM snapshot_deps WHERE snapshotter=? AND dep=?", (self.name, key))]
            if children:
                raise StoreError(f"snapshot {key!r} is still needed by {', '.join(children)}")
            db.execute("DELETE FROM snapshot_deps WHERE snapshotter=? AND key=?", (self.name, key))
            db.execute("DELETE FROM snapshots WHERE snapshotter=? AND key=?", (self.name, key))
        self.db.discard_path(self.dir(info))

    def usage(self, key: str) -> int:
        info = self._require(key)
        if info.size is not None:
            return info.size
        size = disk_usage(self.dir(info))
        if info.kind == "committed":
            with self.db.transaction() as db:
                db.execute("UPDATE snapshots SET size=? WHERE snapshotter=? AND key=?",
                           (size, self.name, key))
        return size

    def _forget_size(self, info: SnapshotInfo) -> None:
        with self.db.transaction() as db:
            db.execute("UPDATE snapshots SET size=NULL WHERE snapshotter=? AND key=?",
                       (self.name, info.key))

    # ---- contents, layers -------------------------------------------------------------------

    def layer_chain(self, key: str) -> list[str]:
        """Keys whose layers, stacked bottom to top, make the contents of ``key``."""
        return list(self._require(key).chain)

    @contextlib.contextmanager
    def contents(self, key: str) -> Iterator[str]:
        """A directory showing a committed snapshot's contents, for reading only."""
        info = self._require(key, "committed")
        mounts = self._readonly_mounts(info)
        if len(mounts) == 1 and mounts[0].type == "bind":
            yield mounts[0].source
            return
        target = self.db.process_tmp(f"view-{secrets.token_hex(6)}")
        target.mkdir()
        mountlib.mount_all(mounts, str(target))
        try:
            yield str(target)
        finally:
            mountlib.unmount_all(str(target))
            target.rmdir()

    def _bind(self, info: SnapshotInfo, *, ro: bool) -> list[Mount]:
        return [Mount("bind", str(self.dir(info) / "fs"), ("rbind", "ro" if ro else "rw"))]

    def _new_committed(self, key: str | None, *, layers: Sequence[str], deps: Sequence[str],
                       whiteouts: bool = False) -> tuple[SnapshotInfo, str]:
        """Start a snapshot that becomes committed under ``key`` once :meth:`_finish` runs."""
        temp = f"tmp-{secrets.token_hex(8)}"
        info = self._insert(temp, "active", layers=layers, deps=deps, whiteouts=whiteouts)
        return info, key or f"sha256-{secrets.token_hex(16)}"

    def _finish(self, temp: SnapshotInfo, key: str) -> str:
        try:
            self.commit(key, temp.key)
        except BaseException:
            self.remove(temp.key)
            raise
        return key

    def merge(self, keys: Sequence[str], key: str | None = None) -> str:
        """A committed snapshot with the inputs' layers stacked in order (MergeOp)."""
        if not keys:
            raise StoreError("merge needs at least one snapshot")
        stack: list[str] = []
        for k in keys:
            stack.extend(self._require(k, "committed").chain)
        stackable = len(set(stack)) == len(stack) and not self._links_repeat(stack)
        temp, key = self._new_committed(key, layers=stack if stackable else (),
                                        deps=list(dict.fromkeys(keys)))
        try:
            self._fill_merge(temp, stack)
        except BaseException:
            self.remove(temp.key)
            raise
        return self._finish(temp, key)

    def diff(self, lower: str | None, upper: str, key: str | None = None) -> str:
        """A committed snapshot with only the changes from ``lower`` to ``upper`` (DiffOp).

        Stacked on ``lower`` it shows ``upper``; deletions are whiteouts in its layer.
        """
        upper_chain = self._require(upper, "committed").chain
        lower_chain = self._require(lower, "committed").chain if lower else ()
        if upper_chain[:len(lower_chain)] == lower_chain:
            extra = upper_chain[len(lower_chain):]
            temp, key = self._new_committed(key, layers=extra, deps=[upper])
            try:
                self._fill_stack(temp, extra)
            except BaseException:
                self.remove(temp.key)
                raise
            return self._finish(temp, key)
        temp, key = self._new_committed(key, layers=(), deps=(), whiteouts=True)
        try:
            self._fill_tree_diff(temp, lower, upper)
        except BaseException:
            self.remove(temp.key)
            raise
        return self._finish(temp, key)

    # ---- layers holding hard links to outside files ----------------------------------------

    def own_layer(self, key: str) -> str | None:
        """The directory an active snapshot's own changes live in, where files may be linked in
        while it is not mounted; None when the snapshotter has no such directory."""
        return None

    def mark_linked(self, key: str, source: str) -> None:
        """Record that files of directory ``source`` are hard-linked into ``key``'s layer."""
        with open(self.dir(self._require(key)) / _LINKED_FROM, "a", encoding="utf-8") as f:
            f.write(source + "\n")

    def linked_sources(self, chain: Sequence[str]) -> list[set[str]]:
        """For each layer of ``chain``, the directories whose files are linked into it."""
        ids = dict(self.db.query(
            f"SELECT key, id FROM snapshots WHERE snapshotter=? AND key IN"
            f" ({','.join('?' * len(chain))})", (self.name, *chain))) if chain else {}
        out: list[set[str]] = []
        for key in chain:
            if key not in ids:
                raise StoreError(f"snapshot {key!r} does not exist")
            try:
                with open(self.base / str(ids[key]) / _LINKED_FROM, encoding="utf-8") as f:
                    out.append(set(f.read().splitlines()))
            except FileNotFoundError:
                out.append(set())
        return out

    def _links_repeat(self, stack: Sequence[str]) -> bool:
        """Whether two layers of ``stack`` link files of one source directory (stacked, the
        view would show one file under two names)."""
        seen: set[str] = set()
        for sources in self.linked_sources(stack):
            if seen & sources:
                return True
            seen |= sources
        return False

    def _build_once(self, info: SnapshotInfo, target: Path,
                    fill: Callable[[str], None]) -> None:
        """Fill a fresh directory with ``fill(path)`` and rename it to ``target``; another
        process that got there first wins (its copy is the same)."""
        temp = self.db.process_tmp(f"{target.name}-{secrets.token_hex(6)}")
        temp.mkdir()
        try:
            fill(str(temp))
            os.rename(temp, target)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        finally:
            remove_path(str(temp))
        self._forget_size(info)

    def _apply_chain(self, chain: Sequence[str], target: str) -> None:
        for k in chain:
            apply_layer(self.layer_dir(k), target)

    # ---- per snapshotter --------------------------------------------------------------------

    @abc.abstractmethod
    def layer_dir(self, key: str) -> str:
        ...

    @abc.abstractmethod
    def _create_active(self, info: SnapshotInfo, parent: SnapshotInfo | None) -> None:
        ...

    @abc.abstractmethod
    def _active_mounts(self, info: SnapshotInfo) -> list[Mount]:
        ...

    @abc.abstractmethod
    def _readonly_mounts(self, info: SnapshotInfo) -> list[Mount]:
        ...

    def _after_commit(self, info: SnapshotInfo) -> None:
        """File work after an active snapshot became committed."""

    @abc.abstractmethod
    def _fill_merge(self, info: SnapshotInfo, stack: Sequence[str]) -> None:
        ...

    @abc.abstractmethod
    def _fill_stack(self, info: SnapshotInfo, layers: Sequence[str]) -> None:
        ...

    @abc.abstractmethod
    def _fill_tree_diff(self, info: SnapshotInfo, lower: str | None, upper: str) -> None:
        ...
