"""Automatic GC after ``pybk build``: the worker's gcpolicy, at most once a minute per store,
off with ``gc = false``."""

from __future__ import annotations

import os
import time

import pytest
from support.engine import require_runc

from pybk.core.cli.commands import main
from pybk.core.store.store import Store

POLICY = """\
[worker.oci]
gc = {gc}

[[worker.oci.gcpolicy]]
all = true
keepDuration = "1h"
"""


@pytest.fixture
def setup(tmp_path, busybox_layout):
    require_runc()
    root = tmp_path / "store"
    for name in ("a", "b"):
        ctx = tmp_path / name
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN echo {name} > /{name}\n")

    def build(name, *, gc=True):
        config = tmp_path / f"gc-{gc}.toml"
        config.write_text(POLICY.format(gc=str(gc).lower()))
        code = main(["--root", str(root), "--config", str(config), "build", "--progress",
                     "quiet", "--build-context", f"busybox=oci-layout://{busybox_layout}",
                     str(tmp_path / name)])
        assert code == 0

    return root, build


def _age_everything(root, seconds):
    store = Store.open(str(root))
    try:
        with store.transaction() as db:
            db.execute("UPDATE records SET last_used=?, created=?",
                       (time.time() - seconds, time.time() - seconds))
        return {u.id for u in store.du()}
    finally:
        store.close()


def _records(root):
    store = Store.open(str(root))
    try:
        return {u.id for u in store.du()}
    finally:
        store.close()


def _parents(root):
    store = Store.open(str(root))
    try:
        return {p for u in store.du() for p in u.parents}
    finally:
        store.close()


def test_build_prunes_what_the_policy_says(setup):
    root, build = setup
    build("a")
    old = _age_everything(root, 7200)
    assert old
    stamp = root / "gc.stamp"  # the first build started the once-a-minute clock
    assert stamp.exists()
    os.utime(stamp, (time.time() - 61, time.time() - 61))  # a minute later
    build("b")
    left = _records(root)
    assert old - left  # a's step, unused for two hours: pruned
    assert left - old  # b's step, used just now: kept
    assert old & left <= _parents(root)  # and the base image both share


def test_gc_runs_at_most_once_a_minute(setup):
    root, build = setup
    build("a")
    old = _age_everything(root, 7200)
    build("b")  # within a minute of the first build: not due
    assert old <= _records(root)


def test_a_new_store_is_not_collected_by_its_first_build(setup):
    """The clock starts with the first build (BuildKit's first GC runs a minute after it),
    so a cold build never walks the snapshots it just made to size them."""
    root, build = setup
    build("a")
    store = Store.open(str(root))
    try:
        sizes = [r[0] for r in store.db.query("SELECT size FROM records")]
    finally:
        store.close()
    assert sizes and all(size is None for size in sizes)  # nothing was sized: no GC pass ran


def test_gc_false_prunes_nothing(setup):
    root, build = setup
    build("a", gc=False)
    old = _age_everything(root, 7200)
    build("b", gc=False)
    assert old <= _records(root)
    assert not (root / "gc.stamp").exists()


def test_a_process_that_answers_first_collects_after_the_answer(setup, monkeypatch):
    """pybkd's per-connection child answers the client, then runs the GC (BuildKit's GC too
    runs after the solve has returned): the build's answer never waits for it."""
    from pybk.core.engine import build as buildmod

    root, build = setup
    build("a")
    old = _age_everything(root, 7200)
    stamp = root / "gc.stamp"
    os.utime(stamp, (time.time() - 61, time.time() - 61))
    monkeypatch.setattr(buildmod, "_AFTER_ANSWER", None)
    buildmod.answer_first()
    build("b")
    assert old <= _records(root)  # answered: nothing collected yet
    buildmod.run_after_answer()
    assert old - _records(root)  # then a's step, unused for two hours, went


def test_pybkd_collects_after_answering(setup, tmp_path, busybox_layout):
    import subprocess
    import sys

    root, build = setup
    build("a")
    old = _age_everything(root, 7200)
    os.utime(root / "gc.stamp", (time.time() - 61, time.time() - 61))
    config = tmp_path / "gc-True.toml"
    sock = tmp_path / "d.sock"
    with open(tmp_path / "pybkd.log", "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                                   str(root), "--config", str(config), "--addr",
                                   f"unix://{sock}"], stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from pybk.core.cli.entry import main; "
             "sys.exit(main())", "--addr", f"unix://{sock}", "build", "--progress", "quiet",
             "--build-context", f"busybox=oci-layout://{busybox_layout}", str(tmp_path / "b")],
            capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stderr == b""  # nothing of the GC reaches the client
        deadline = time.monotonic() + 30
        while not old - _records(root):  # the child collects after the answer
            assert time.monotonic() < deadline, "the GC never ran"
            time.sleep(0.2)
    finally:
        daemon.terminate()
        daemon.wait(60)
