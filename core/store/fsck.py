"""``pybk debug fsck``: check a store's consistency and, on request, repair it.

What is checked (each problem has a *kind*):

``database``         sqlite's ``PRAGMA integrity_check`` (not repairable here)
``missing-snapshot`` a record whose snapshot row or directory is gone, or a snapshot row whose
                     directory is gone (repair: drop it, the snapshots built on it and the
                     records using any of them, with their cache keys)
``uncommitted``      an immutable record whose snapshot is not committed (repair: as above)
``stale-lease``      a lease of a process that is gone (repair: release it)
``stale-owner``      a mutable record or uncommitted snapshot of a process that is gone
                     (repair: drop it, as the next ``Store.open`` would)
``orphan-snapshot``  a snapshot directory without a row, or a committed snapshot no record,
                     lease or other snapshot needs (repair: remove it)
``orphan-dir``       a directory under ``cachemounts/`` or ``locals/`` no record names (a
                     crash after prune forgot it; repair: remove it)
``bad-blob``         a content-store blob whose digest is not its name (repair: delete it)
``temp``             scratch left by dead processes: ``tmp/`` entries, ``content/ingest/``
                     files, runc bundles (repair: remove them)
``mount``            something mounted under the store (repair: lazy unmount)
``container``        a runc container of a dead build in ``executor/runc`` (repair:
                     ``runc delete --force``)

fsck must see the store at rest: it holds the store's ``store`` lock exclusively, which every
:meth:`pybk.core.store.store.Store.open` (builds, ``du``, ``prune``, pybkd's per-command
children) holds shared until it closes the store. When a build runs, fsck refuses
(:class:`StoreBusy`) unless asked to wait; a build starting meanwhile waits for fsck. It opens the
store without :meth:`Store.recover`, so it sees what dead processes left.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from pybk.core.errors import StoreError
from pybk.core.fs.files import remove_path
from pybk.core.model import Factory, Model, field
from pybk.core.store import locks as lockmod
from pybk.core.store import mounts as mountlib
from pybk.core.store.content import ContentStore
from pybk.core.store.db import StoreDB
from pybk.core.store.localdirs import LOCAL_SYNC_STATE_SUFFIX
from pybk.core.store.recovery import release_dead_owners
from pybk.core.store.snapshots import StoreSnapshotter
from pybk.core.store.snapshotters import SNAPSHOTTERS, NativeSnapshotter, OverlaySnapshotter

#: the lock every open store holds shared and fsck exclusively
STORE_LOCK = "store"

KINDS = ("database", "missing-snapshot", "uncommitted", "stale-lease", "stale-owner",
         "orphan-snapshot", "orphan-dir", "bad-blob", "temp", "mount", "container")


class StoreBusy(StoreError):
    """The store is in use (a build, ``du``, ``prune`` or a pybkd command holds it open)."""


class Problem(Model):
    kind: str
    what: str
    #: how to repair it (None: fsck cannot)
    fix: Callable[[], str] | None = field(default=None, eq=False, repr=False)

    def line(self) -> str:
        return f"fsck: {self.kind}: {self.what}"


class Report(Model, frozen=False):
    problems: list[Problem] = Factory(list)
    #: what was counted: records, snapshots, blobs
    counts: dict[str, int] = Factory(dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, what: str, fix: Callable[[], str] | None = None) -> None:
        self.problems.append(Problem(kind, what, fix))


@contextlib.contextmanager
def exclusive(root: str | os.PathLike[str], *, wait: bool = False) -> Iterator[None]:
    """Hold the store's ``store`` lock exclusively (no open store in any process)."""
    locks = lockmod.Locks(Path(root) / "locks")
    if wait:
        lock = locks.lock(STORE_LOCK)
        lock.acquire()
    else:
        found = locks.try_lock(STORE_LOCK)
        if found is None:
            raise StoreBusy(f"store {root} is in use (a build, du, prune or pybkd command has it"
                            " open); try again when it is done, or pass --wait")
        lock = found
    try:
        yield
    finally:
        lock.release()


def _snapshotter(db: StoreDB, name: str) -> StoreSnapshotter | None:
    cls = SNAPSHOTTERS.get(name)
    if cls is OverlaySnapshotter:
        return OverlaySnapshotter(db, options=())  # options matter only for mounting
    if cls is NativeSnapshotter:
        return NativeSnapshotter(db)
    return None


class Checker:
    """The checks of one store (the caller holds :func:`exclusive`)."""

    def __init__(self, root: str | os.PathLike[str], *, runc: str = "runc"):
        self.root = Path(os.path.realpath(root))
        self.runc = runc
        self.db: StoreDB | None = None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ---- the checks -------------------------------------------------------------------------

    def check(self) -> Report:
        report = Report()
        self._check_mounts(report)
        self._check_containers(report)
        self._check_temp(report)
        if self._check_database(report):
            self._check_leases_and_owners(report)
            self._check_snapshots(report)
            self._check_named_dirs(report)
        self._check_blobs(report)
        return report

    def _check_database(self, report: Report) -> bool:
        if not (self.root / "metadata.db").exists():
            report.add("database", f"{self.root / 'metadata.db'} does not exist")
            return False
        try:
            self.db = self.db or StoreDB(self.root)
            rows = [r[0] for r in self.db.query("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as e:
            report.add("database", f"cannot read {self.root / 'metadata.db'}: {e}")
            return False
        if rows != ["ok"]:
            for row in rows[:20]:
                report.add("database", f"integrity_check: {row}")
            return False
        fk = self.db.query("PRAGMA foreign_key_check")
        for table, rowid, parent, _ in fk[:20]:
            report.add("database", f"foreign_key_check: {table} row {rowid} refers to a missing"
                       f" {parent} row")
        return True

    def _check_leases_and_owners(self, report: Report) -> None:
        db = self.db
        assert db is not None
        sets = StoreSnapshotterSet(db)

        def release() -> str:
            release_dead_owners(db, sets)  # type: ignore[arg-type]
            return "released the leases, records and snapshots of dead processes"

        for lease_id, owner in db.query("SELECT id, owner FROM leases ORDER BY created"):
            if not lockmod.is_alive(owner):
                n = db.query("SELECT count(*) FROM lease_refs WHERE lease_id=?", (lease_id,))[0][0]
                report.add("stale-lease", f"lease {lease_id} of dead process {owner} holds"
                           f" {n} record(s)", release)
        for record_id, owner in db.query(
                "SELECT id, owner FROM records WHERE owner IS NOT NULL ORDER BY created"):
            if not lockmod.is_alive(owner):
                report.add("stale-owner", f"record {record_id} being built by dead process"
                           f" {owner}", release)
        for name, key, owner in db.query(
                "SELECT snapshotter, key, owner FROM snapshots WHERE owner IS NOT NULL"
                " ORDER BY id"):
            if not lockmod.is_alive(owner):
                report.add("stale-owner", f"{name} snapshot {key} of dead process {owner}",
                           release)

    def _check_snapshots(self, report: Report) -> None:
        db = self.db
        assert db is not None
        rows = db.query("SELECT snapshotter, key, id, kind, owner FROM snapshots")
        by_key = {(name, key): (id_, kind, owner) for name, key, id_, kind, owner in rows}
        deps: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for name, key, dep in db.query("SELECT snapshotter, key, dep FROM snapshot_deps"):
            deps.setdefault((name, dep), set()).add((name, key))
        records = db.query("SELECT id, snapshotter, snapshot, mutable, owner FROM records")
        report.counts["records"] = len(records)
        report.counts["snapshots"] = len(rows)

        broken: set[tuple[str, str]] = set()
        for (name, key), (id_, _kind, _owner) in by_key.items():
            if not (self.root / "snapshots" / name / str(id_)).is_dir():
                broken.add((name, key))
        for record_id, name, snapshot, mutable, _owner in records:
            if snapshot is None:
                continue
            found = by_key.get((name, snapshot))
            if found is None:
                report.add("missing-snapshot", f"record {record_id}: {name} snapshot {snapshot}"
                           " has no row", self._fix_broken)
            elif (name, snapshot) in broken:
                report.add("missing-snapshot", f"record {record_id}: {name} snapshot {snapshot}"
                           f" directory snapshots/{name}/{found[0]} is gone", self._fix_broken)
            elif not mutable and found[1] != "committed":
                report.add("uncommitted", f"record {record_id} is immutable but its {name}"
                           f" snapshot {snapshot} is {found[1]}", self._fix_broken)
        used = {(name, snapshot) for _, name, snapshot, _, _ in records if snapshot}
        for name, key in sorted(broken - used):
            report.add("missing-snapshot", f"{name} snapshot {key}: directory snapshots/{name}/"
                       f"{by_key[(name, key)][0]} is gone", self._fix_broken)

        # orphans: committed rows nothing needs (no record, no snapshot built on them)
        needed: set[tuple[str, str]] = set()
        stack = [k for k in used if k in by_key]
        stack += [k for k, (_, kind, owner) in by_key.items()
                  if kind != "committed" and owner is not None]
        parents: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for dep, dependents in deps.items():
            for d in dependents:
                parents.setdefault(d, set()).add(dep)
        while stack:
            k = stack.pop()
            if k in needed:
                continue
            needed.add(k)
            stack.extend(parents.get(k, ()))
        for (name, key), (id_, _kind, owner) in sorted(by_key.items(), key=lambda i: i[1][0]):
            if (name, key) in needed or (name, key) in broken or owner is not None:
                continue
            report.add("orphan-snapshot", f"{name} snapshot {key} (snapshots/{name}/{id_}) is"
                       " used by no record", self._fix_orphan_rows)
        known = {(name, str(id_)) for (name, _key), (id_, _, _) in by_key.items()}
        for base in sorted((self.root / "snapshots").iterdir()):
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                if entry.name.isdigit() and (base.name, entry.name) not in known:
                    report.add("orphan-snapshot", f"snapshots/{base.name}/{entry.name} has no"
                               " row", _remover(entry))

    def _check_named_dirs(self, report: Report) -> None:
        db = self.db
        assert db is not None
        paths = {p.rstrip("/") for (p,) in db.query(
            "SELECT path FROM records WHERE path IS NOT NULL")}
        for sub in ("cachemounts", "locals"):
            base = self.root / sub
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                rel = f"{sub}/{entry.name}"
                if rel.endswith(LOCAL_SYNC_STATE_SUFFIX):
                    rel = rel[:-len(LOCAL_SYNC_STATE_SUFFIX)]
                if rel not in paths:
                    report.add("orphan-dir", f"{sub}/{entry.name} belongs to no record",
                               _remover(entry))

    def _check_blobs(self, report: Report) -> None:
        content = ContentStore(self.root)
        n = 0
        for digest, _size in content.walk():
            n += 1
            path = content.path(digest)
            algorithm = digest.partition(":")[0]
            h = hashlib.new(algorithm)
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError as e:
                report.add("bad-blob", f"{digest}: {e}", _remover(path))
                continue
            if h.hexdigest() != digest.partition(":")[2]:
                report.add("bad-blob", f"{digest}: content has digest {algorithm}:"
                           f"{h.hexdigest()}", _remover(path))
        report.counts["blobs"] = n
        if content.ingest_dir.is_dir():
            for entry in sorted(content.ingest_dir.iterdir()):
                pid = entry.name.partition("-")[0]
                if pid.isdigit() and lockmod.pid_alive(int(pid)):
                    continue
                report.add("temp", f"content/ingest/{entry.name}: an interrupted blob write",
                           _remover(entry))

    def _check_temp(self, report: Report) -> None:
        tmp = self.root / "tmp"
        if tmp.is_dir():
            for entry in sorted(tmp.iterdir()):
                if entry.name.startswith("proc_"):
                    identity = ":".join(entry.name[5:].rsplit("_", 2))
                    if lockmod.is_alive(identity):
                        continue
                    report.add("temp", f"tmp/{entry.name}: scratch of dead process {identity}",
                               _remover(entry, unmount=True))
                else:
                    report.add("temp", f"tmp/{entry.name}", _remover(entry, unmount=True))
        bundles = self.root / "executor" / "bundles"
        if bundles.is_dir():
            for entry in sorted(bundles.iterdir()):
                parts = entry.name.split("-")
                if len(parts) == 3 and parts[1].isdigit() and lockmod.pid_alive(int(parts[1])):
                    continue
                report.add("temp", f"executor/bundles/{entry.name}: the bundle of a dead run",
                           _remover(entry, unmount=True))

    def _check_mounts(self, report: Report) -> None:
        netns = str(self.root / "executor" / "net" / "ns") + "/"
        for point in mountlib.find_mounts_under(str(self.root)):
            if point.startswith(netns):
                continue  # the network pool's namespaces (its own recovery handles them)
            report.add("mount", f"{point} is mounted", _unmounter(point))

    def _check_containers(self, report: Report) -> None:
        state = self.root / "executor" / "runc"
        if not state.is_dir() or not any(state.iterdir()) or shutil.which(self.runc) is None:
            return
        try:
            out = subprocess.run([self.runc, "--root", str(state), "list", "-q"],
                                 capture_output=True, text=True, check=True,
                                 stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            report.add("container", f"cannot list runc containers in {state}: {e}")
            return
        for cid in out.split():
            parts = cid.split("-")
            if len(parts) == 3 and parts[1].isdigit() and lockmod.pid_alive(int(parts[1])):
                continue
            report.add("container", f"runc container {cid} of a dead build",
                       self._container_remover(str(state), cid))

    # ---- repairs ----------------------------------------------------------------------------

    def _container_remover(self, state: str, cid: str) -> Callable[[], str]:
        def fix() -> str:
            subprocess.run([self.runc, "--root", state, "delete", "--force", cid],
                           capture_output=True, check=False, stdin=subprocess.DEVNULL)
            return f"deleted runc container {cid}"
        return fix

    def _fix_broken(self) -> str:
        """Drop broken snapshots (row or directory gone, or immutable record on an uncommitted
        one), everything built on them, and the records using any of them."""
        db = self.db
        assert db is not None
        dropped_records = dropped_snapshots = 0
        with db.transaction() as tx:
            rows = tx.execute("SELECT snapshotter, key, id, kind FROM snapshots").fetchall()
            by_key = {(n, k): (i, kind) for n, k, i, kind in rows}
            bad = {(n, k) for (n, k), (i, _) in by_key.items()
                   if not (self.root / "snapshots" / n / str(i)).is_dir()}
            records = tx.execute(
                "SELECT id, snapshotter, snapshot, mutable FROM records").fetchall()
            bad_records = set()
            for rid, n, s, mutable in records:
                if s is None:
                    continue
                found = by_key.get((n, s))
                if found is None:
                    bad_records.add(rid)
                elif not mutable and found[1] != "committed":
                    bad_records.add(rid)
                    bad.add((n, s))
            dependents: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for n, k, dep in tx.execute("SELECT snapshotter, key, dep FROM snapshot_deps"):
                dependents.setdefault((n, dep), []).append((n, k))
            stack = list(bad)
            while stack:
                k = stack.pop()
                for d in dependents.get(k, ()):
                    if d not in bad:
                        bad.add(d)
                        stack.append(d)
            bad_records |= {rid for rid, n, s, _ in records if s and (n, s) in bad}
            children: dict[str, list[str]] = {}
            for rid, parent in tx.execute("SELECT record_id, parent_id FROM record_parents"):
                children.setdefault(parent, []).append(rid)
            stack = list(bad_records)
            while stack:
                r = stack.pop()
                for c in children.get(r, ()):
                    if c not in bad_records:
                        bad_records.add(c)
                        stack.append(c)
            # children first (record_parents.parent_id has no ON DELETE CASCADE)
            for rid in bad_records:
                tx.execute("DELETE FROM record_parents WHERE record_id=?", (rid,))
            for rid in bad_records:
                tx.execute("DELETE FROM records WHERE id=?", (rid,))
                prefix = f"record-checksum:{rid}:"
                tx.execute("DELETE FROM meta WHERE key >= ? AND key < ?",
                           (prefix, prefix[:-1] + ";"))
                dropped_records += 1
            for n, k in bad:
                tx.execute("DELETE FROM snapshot_deps WHERE snapshotter=? AND (key=? OR dep=?)",
                           (n, k, k))
                tx.execute("DELETE FROM snapshots WHERE snapshotter=? AND key=?", (n, k))
                db.discard_path(self.root / "snapshots" / n / str(by_key[(n, k)][0]))
                dropped_snapshots += 1
        return (f"dropped {dropped_records} record(s) (with their cache keys) and"
                f" {dropped_snapshots} snapshot(s) whose data was gone or built on it")

    def _fix_orphan_rows(self) -> str:
        """Remove committed snapshots nothing needs, the ones built on others first."""
        db = self.db
        assert db is not None
        removed = 0
        while True:
            rows = db.query(
                "SELECT s.snapshotter, s.key FROM snapshots s WHERE s.owner IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.snapshotter = s.snapshotter"
                " AND r.snapshot = s.key)"
                " AND NOT EXISTS (SELECT 1 FROM snapshot_deps d WHERE d.snapshotter ="
                " s.snapshotter AND d.dep = s.key)")
            progress = False
            for name, key in rows:
                sn = _snapshotter(db, name)
                if sn is not None:
                    sn.remove(key)
                    removed += 1
                    progress = True
            if not progress:
                break
        return f"removed {removed} snapshot(s) no record used"

    # ---- running ----------------------------------------------------------------------------

    def repair(self, report: Report) -> list[str]:
        """Run each distinct fix once (in the order of the checks); what was done."""
        done: list[str] = []
        seen: set[int] = set()
        for problem in report.problems:
            fix = problem.fix
            if fix is None:
                continue
            key = id(getattr(fix, "__func__", fix))
            if getattr(fix, "__self__", None) is None:
                key = id(fix)
            if key in seen:
                continue
            seen.add(key)
            try:
                done.append(fix())
            except Exception as e:  # noqa: BLE001 - report it and go on with the other fixes
                done.append(f"could not repair {problem.kind} ({problem.what}): {e}")
        return done


class StoreSnapshotterSet:
    """Just enough of :class:`~pybk.core.store.snapshotters.SnapshotterSet` for
    :func:`release_dead_owners`, without probing or choosing a default snapshotter."""

    def __init__(self, db: StoreDB):
        self.db = db
        self._named: dict[str, StoreSnapshotter] = {}

    def named(self, name: str) -> StoreSnapshotter:
        if name not in self._named:
            sn = _snapshotter(self.db, name)
            if sn is None:
                raise StoreError(f"unknown snapshotter {name!r}")
            self._named[name] = sn
        return self._named[name]


def _remover(path: Path, *, unmount: bool = False) -> Callable[[], str]:
    def fix() -> str:
        if unmount:
            mountlib.cleanup_stale_mounts(str(path))
        remove_path(str(path))
        return f"removed {path}"
    return fix


def _unmounter(point: str) -> Callable[[], str]:
    def fix() -> str:
        mountlib.cleanup_stale_mounts(point)
        return f"unmounted {point}"
    return fix


def fsck(root: str | os.PathLike[str], *, repair: bool = False, wait: bool = False,
         runc: str = "runc") -> tuple[Report, list[str], Report | None]:
    """Check the store at ``root``; with ``repair``, fix what can be fixed and check again.

    Returns (first report, what the repair did, the report after repairing or None).
    Raises :class:`StoreBusy` when the store is open elsewhere and ``wait`` is False.
    """
    if not (Path(root) / "metadata.db").exists():
        raise StoreError(f"{root} is not a pybk store (no metadata.db)")
    with exclusive(root, wait=wait):
        checker = Checker(root, runc=runc)
        try:
            report = checker.check()
            if not repair or report.clean:
                return report, [], None
            done: list[str] = []
            after = report
            if all(p.fix is None for p in report.problems):
                return report, done, report
            for _ in range(3):  # a repair may uncover more (a dropped record's parents)
                done += checker.repair(after)
                after = checker.check()
                if all(p.fix is None for p in after.problems):
                    break
            return report, done, after
        finally:
            checker.close()
            own = Path(os.path.realpath(root)) / "tmp" / (
                "proc_" + lockmod.process_identity().replace(":", "_"))
            if own.is_dir():  # the trash of the repairs
                mountlib.cleanup_stale_mounts(str(own))
                remove_path(str(own))
