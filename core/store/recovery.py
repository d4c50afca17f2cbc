"""Cleaning up after processes that died using a store: their scratch directories and mounts
under ``tmp/``, their interrupted blob writes under ``content/ingest/``, their leases, their
uncommitted records and snapshots, and snapshot directories whose row is gone. Whatever a process leaves behind carries its identity (boot id, pid, start
time), so another process can tell when it is gone."""

from __future__ import annotations

from pybk.core.fs.files import remove_path
from pybk.core.store import locks as lockmod
from pybk.core.store import mounts as mountlib
from pybk.core.store.content import ContentStore
from pybk.core.store.db import StoreDB
from pybk.core.store.snapshotters import SnapshotterSet


def recover(db: StoreDB, snapshotters: SnapshotterSet) -> None:
    """Clean up after every process that died using this store (run by ``Store.open``)."""
    with db.locks.lock("recovery"):
        for entry in (db.root / "tmp").iterdir():
            if entry.name.startswith("proc_"):
                identity = ":".join(entry.name[5:].rsplit("_", 2))
                if lockmod.is_alive(identity):
                    continue
                mountlib.cleanup_stale_mounts(str(entry))
            remove_path(str(entry))
        # a blob write killed midway (a pull, an import, a cache export) leaves its file here
        ContentStore(db.root).clean_ingest()
        release_dead_owners(db, snapshotters)
        remove_orphan_snapshot_dirs(db)


def release_dead_owners(db: StoreDB, snapshotters: SnapshotterSet) -> None:
    """Drop the leases, uncommitted records and snapshots of processes that are gone."""
    dead_owners = {
        owner for (owner,) in db.query(
            "SELECT owner FROM leases UNION SELECT owner FROM records WHERE owner IS NOT NULL"
            " UNION SELECT owner FROM snapshots WHERE owner IS NOT NULL")
        if not lockmod.is_alive(owner)
    }
    if not dead_owners:
        return
    marks = ",".join("?" * len(dead_owners))
    with db.transaction() as tx:
        tx.execute(f"DELETE FROM leases WHERE owner IN ({marks})", tuple(dead_owners))
        records = tx.execute(
            f"SELECT id, snapshotter, snapshot FROM records WHERE owner IN ({marks})",
            tuple(dead_owners)).fetchall()
        snapshots = tx.execute(
            f"SELECT snapshotter, key FROM snapshots WHERE owner IN ({marks})",
            tuple(dead_owners)).fetchall()
        tx.executemany("DELETE FROM records WHERE id=?", [(r[0],) for r in records])
        leftovers = {(r[1], r[2]) for r in records if r[2]} | set(snapshots)
        for snapshotter, key in leftovers:
            sn = snapshotters.named(snapshotter)
            if sn.exists(key) and not sn.dependents(key):
                sn.remove(key)


def remove_orphan_snapshot_dirs(db: StoreDB) -> None:
    """Snapshot directories whose row is gone (a crash after the row's deletion)."""
    known = {(name, str(i)) for name, i in db.query("SELECT snapshotter, id FROM snapshots")}
    for base in (db.root / "snapshots").iterdir():
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if entry.name.isdigit() and (base.name, entry.name) not in known:
                db.discard_path(entry)
