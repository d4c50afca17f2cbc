"""Automatic GC after ``pybk build``: the worker's gcpolicy, at most once a minute per store,
off with ``gc = false``."""

from __future__ import annotations

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
    (root / "gc.stamp").unlink()  # the first build's GC ran a moment ago: let the next one run
    build("b")
    left = _records(root)
    assert old - left  # a's step, unused for two hours: pruned
    assert left - old  # b's step, used just now: kept
    assert old & left <= _parents(root)  # and the base image both share


def test_gc_runs_at_most_once_a_minute(setup):
    root, build = setup
    build("a")
    old = _age_everything(root, 7200)
    build("b")  # within a minute of the first build's GC
    assert old <= _records(root)


def test_gc_false_prunes_nothing(setup):
    root, build = setup
    build("a", gc=False)
    old = _age_everything(root, 7200)
    build("b", gc=False)
    assert old <= _records(root)
    assert not (root / "gc.stamp").exists()
