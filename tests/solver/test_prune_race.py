"""A build and a concurrent ``prune`` on one store (the race the concurrency campaign found, see
docs/reliability.md): the prune runs, in process and on the real store, at the two points where
a build used to hold a result without a lease — right after a cache lookup found it, and between
the end of the solve and the export reading it. The build must export the right files either
way (the record kept, or the step computed again), never fail and never export a partial tree.
"""

from __future__ import annotations

import pytest

import pybk.exporters.local as local_exporter
from pybk.core import llb
from pybk.core.store.store import Store

FILES = {f"f{i}.txt": f"context file {i}\n" * (i + 1) for i in range(4)}


def _context(path):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (path / name).write_text(text)
    return path


def _graph():
    """The campaign's shape without a RUN: a ``work`` stage (``COPY . /ctx/``, then a step
    writing ``/sum``), and a scratch stage copying ``/sum`` then ``/ctx`` from it."""
    work = (llb.scratch()
            .file(llb.copy(llb.local("context"), "/", "/ctx/", create_dest_path=True))
            .file(llb.mkfile("/sum", 0o644, "sum\n")))
    return (llb.scratch()
            .file(llb.copy(work, "/sum", "/sum"))
            .file(llb.copy(work, "/ctx", "/ctx")))


def _exported(path):
    return {p.relative_to(path).as_posix(): p.read_text() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


EXPECTED = {"ctx": None, "sum": "sum\n", **{f"ctx/{n}": t for n, t in FILES.items()}}


def _build(client, ctx, out):
    return client.solve(_graph(), local_dirs={"context": str(ctx)}, progress=None,
                        outputs=[{"type": "local", "dest": str(out)}])


def _prune(client):
    """``pybk prune --all`` on the client's store, as another process would run it."""
    with Store.open(client.worker().store.root) as other:
        return other.prune(all=True)


def test_prune_right_after_a_cache_hit_is_looked_up(client, tmp_path, monkeypatch):
    ctx = _context(tmp_path / "ctx")
    first = _build(client, ctx, tmp_path / "out1")
    assert _exported(tmp_path / "out1") == EXPECTED
    head = first.snapshot
    store = client.worker().store
    # the records the next build finds in the cache may go now: nothing holds them
    assert head in {r.id for r in store.records()}

    from pybk.core.store.records import Records

    real = Records.get_cache
    pruned = []

    def lookup_then_prune(self, cache_key, output=0, **kwargs):
        found = real(self, cache_key, output, **kwargs)
        if found is not None and found.id == head and not pruned:
            pruned.append([i.id for i in _prune(client)])
        return found

    monkeypatch.setattr(Records, "get_cache", lookup_then_prune)
    second = _build(client, ctx, tmp_path / "out2")
    assert pruned, "the head step was not found in the cache"
    assert _exported(tmp_path / "out2") == EXPECTED
    # the record the lookup found was held from the lookup on: the prune left it alone
    assert head not in pruned[0]
    assert second.snapshot == head and store.get_record(head) is not None


def test_prune_between_the_solve_and_the_export(client, tmp_path, monkeypatch):
    ctx = _context(tmp_path / "ctx")
    real = local_exporter.copy_tree
    pruned = []

    def prune_then_copy(src, dest, **kwargs):
        # the result is mounted (read_ref found its record): now a prune runs
        pruned.append([i.id for i in _prune(client)])
        return real(src, dest, **kwargs)

    monkeypatch.setattr(local_exporter, "copy_tree", prune_then_copy)
    for n in (1, 2):  # a cold build, then one answered from the cache
        result = _build(client, ctx, tmp_path / f"out{n}")
        assert _exported(tmp_path / f"out{n}") == EXPECTED, f"build {n}"
        assert result.snapshot not in pruned[-1]


@pytest.mark.parametrize("gone", ["record", "snapshot row"])
def test_a_cache_record_gone_anyway_is_a_miss(client, tmp_path, gone):
    """Whatever removed a cached result (a prune the build could not stop, a repair), the
    next build computes the step again; it never fails on it or exports something else."""
    ctx = _context(tmp_path / "ctx")
    head = _build(client, ctx, tmp_path / "out1").snapshot
    store = client.worker().store
    with store.transaction() as db:
        if gone == "record":
            db.execute("DELETE FROM records WHERE id=?", (head,))
        else:
            db.execute("DELETE FROM snapshots WHERE key=?", (head,))
    result = _build(client, ctx, tmp_path / "out2")
    assert _exported(tmp_path / "out2") == EXPECTED
    assert result.snapshot != head
