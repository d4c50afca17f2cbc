"""``pybk debug fsck``: a store after builds is clean; each kind of damage made by hand is
reported with its kind (exit 1), and ``--repair`` makes the next fsck clean and the next build
succeed. fsck refuses while the store is open elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.engine import require_runc

PYBK = [sys.executable, "-m", "pybk.core.cli.commands"]

DOCKERFILE = """\
FROM busybox AS base
RUN echo base > /base.txt
FROM base AS one
RUN --mount=type=cache,target=/cache echo one >> /cache/log && cp /cache/log /one.txt
FROM base AS two
COPY hello.txt /two.txt
RUN cat /two.txt /base.txt > /both.txt
FROM busybox
COPY --from=one /one.txt /
COPY --from=two /both.txt /
"""


def pybk(root, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}
    return subprocess.run([*PYBK, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def build(root, context, layout, out):
    return pybk(root, "build", "--progress", "quiet", "--build-context",
                f"busybox=oci-layout://{layout}", "-o", f"type=local,dest={out}", str(context))


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctx")
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "hello.txt").write_text("hello\n")
    return d


@pytest.fixture
def built(tmp_path, context, busybox_layout):
    """A store after two builds (the second one cached)."""
    require_runc()
    root = tmp_path / "store"
    for i in range(2):
        r = build(root, context, busybox_layout, tmp_path / f"out{i}")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "out1" / "both.txt").read_text() == "hello\nbase\n"
    return root


def fsck(root, *args):
    r = pybk(root, "debug", "fsck", *args)
    return r.returncode, r.stdout, r.stderr


def problems(out):
    return [line.split(": ", 2)[1:] for line in out.splitlines()
            if line.startswith("fsck: ") and line.count(": ") >= 2
            and not line.startswith(("fsck: repaired", "fsck: after"))]


def test_clean_store_after_builds(built):
    code, out, err = fsck(built)
    assert code == 0, out + err
    assert problems(out) == []
    assert out.splitlines()[-1].startswith("fsck: clean (")


def _dead_identity() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    from pybk.core.store.locks import _boot_id

    return f"{_boot_id()}:{proc.pid}:12345"


def _committed_snapshot_dirs(root):
    import sqlite3

    db = sqlite3.connect(root / "metadata.db")
    try:
        return [root / "snapshots" / name / str(i) for name, i in db.execute(
            "SELECT s.snapshotter, s.id FROM snapshots s JOIN records r ON"
            " r.snapshotter = s.snapshotter AND r.snapshot = s.key WHERE s.kind='committed'"
            " ORDER BY s.id DESC")]
    finally:
        db.close()


def _damage_snapshot(root):
    from pybk.core.fs.files import remove_path

    remove_path(str(_committed_snapshot_dirs(root)[0]))


def _damage_blob(root):
    blobs = sorted((root / "content" / "blobs" / "sha256").iterdir())
    assert blobs
    with open(blobs[0], "ab") as f:
        f.write(b"garbage")


def _damage_orphan(root):
    base = next(p for p in (root / "snapshots").iterdir() if p.is_dir())
    (base / "99999" / "fs").mkdir(parents=True)
    (base / "99999" / "fs" / "junk").write_text("x")


def _damage_temp(root):
    d = root / "tmp" / ("proc_" + _dead_identity().replace(":", "_"))
    (d / "scratch").mkdir(parents=True)
    (root / "content" / "ingest").mkdir(exist_ok=True)
    (root / "content" / "ingest" / "999999999-deadbeef").write_bytes(b"half")


def _damage_mount(root):
    from pybk.core.interfaces import Mount
    from pybk.core.store.mounts import mount_all

    d = root / "tmp" / ("proc_" + _dead_identity().replace(":", "_")) / "rootfs"
    d.mkdir(parents=True)
    mount_all([Mount("tmpfs", "tmpfs", ())], str(d))


def _damage_named_dir(root):
    (root / "cachemounts" / "forgotten-0123456789ab" / "data").mkdir(parents=True)


def _damage_lease(root):
    import sqlite3

    db = sqlite3.connect(root / "metadata.db")
    try:
        with db:
            (record,) = db.execute("SELECT id FROM records WHERE mutable=0 LIMIT 1").fetchone()
            db.execute("INSERT INTO leases(id, owner, created) VALUES ('stalelease', ?, ?)",
                       (_dead_identity(), time.time()))
            db.execute("INSERT INTO lease_refs(lease_id, record_id) VALUES ('stalelease', ?)",
                       (record,))
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.parametrize("damage, kinds", [
    (_damage_snapshot, {"missing-snapshot"}),
    (_damage_blob, {"bad-blob"}),
    (_damage_orphan, {"orphan-snapshot"}),
    (_damage_temp, {"temp"}),
    (_damage_lease, {"stale-lease"}),
    (_damage_mount, {"mount", "temp"}),
    (_damage_named_dir, {"orphan-dir"}),
], ids=["snapshot", "blob", "orphan", "temp", "lease", "mount", "named-dir"])
def test_damage_is_reported_and_repaired(built, damage, kinds, tmp_path, context,
                                         busybox_layout):
    damage(built)
    code, out, err = fsck(built)
    assert code == 1, out + err
    found = problems(out)
    assert {k for k, _ in found} == kinds, out
    code, out, err = fsck(built, "--repair")
    assert code == 0, out + err
    assert "fsck: repaired: " in out and "fsck: after repair: clean" in out
    code, out, err = fsck(built)
    assert code == 0, out + err
    r = build(built, context, busybox_layout, tmp_path / "again")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again" / "both.txt").read_text() == "hello\nbase\n"
    assert fsck(built)[0] == 0


def test_refuses_while_the_store_is_open(tmp_path):
    from pybk.core.store.store import Store

    root = tmp_path / "store"
    with Store.open(root, snapshotter="native"):
        code, out, err = fsck(root)
        assert code == 2 and "in use" in err, out + err
    code, out, err = fsck(root)
    assert code == 0, out + err


def test_wait_waits_for_the_store_to_close(tmp_path):
    from pybk.core.store.store import Store

    root = tmp_path / "store"
    store = Store.open(root, snapshotter="native")
    proc = subprocess.Popen([*PYBK, "--root", str(root), "debug", "fsck", "--wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert proc.poll() is None
    store.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err


def test_a_store_opened_during_fsck_waits_for_it(tmp_path):
    import threading

    from pybk.core.store.fsck import exclusive
    from pybk.core.store.store import Store

    root = tmp_path / "store"
    Store.open(root, snapshotter="native").close()
    opened = []
    with exclusive(root):
        t = threading.Thread(target=lambda: opened.append(Store.open(root, snapshotter="native")))
        t.start()
        time.sleep(0.5)
        assert not opened
    t.join(30)
    assert opened
    opened[0].close()


def test_a_corrupt_database_is_reported_not_repaired(tmp_path):
    from pybk.core.store.store import Store

    root = tmp_path / "store"
    with Store.open(root, snapshotter="native") as store:
        with store.transaction() as db:
            for i in range(300):
                db.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"k{i}", '"' + "v" * 200 + '"'))
        store.query("PRAGMA wal_checkpoint(TRUNCATE)")
    path = root / "metadata.db"
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 7):
        data[i] = 0xAB
    path.write_bytes(bytes(data))
    code, out, err = fsck(root)
    assert code == 1 and problems(out)[0][0] == "database", out + err
    code, out, err = fsck(root, "--repair")
    assert code == 1 and "nothing here can be repaired" in out, out + err


def test_a_committed_snapshot_no_record_uses_is_an_orphan(tmp_path):
    from pybk.core.store.store import Store

    root = tmp_path / "store"
    with Store.open(root, snapshotter="native") as store:
        sn = store.snapshotter
        sn.prepare("active-a")
        sn.commit("lower", "active-a")
        sn.prepare("active-b", "lower")
        sn.commit("upper", "active-b")
    code, out, err = fsck(root)
    assert code == 1 and sorted(k for k, _ in problems(out)) == ["orphan-snapshot"] * 2, out
    code, out, err = fsck(root, "--repair")
    assert code == 0 and "removed 2 snapshot(s)" in out, out + err
    assert fsck(root)[0] == 0
    assert [p for p in (root / "snapshots" / "native").iterdir() if p.name.isdigit()] == []
