"""``pybk prune --dry-run`` lists exactly what a prune would remove and removes nothing;
``pybk du --explain`` says, for each record, which GC policy would delete it or why each keeps
it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from support.engine import need_runc

ID = re.compile(r"^([a-z0-9]{25})\*?\s", re.M)


def _pybk(root, *args, config=None):
    cmd = [sys.executable, "-m", "pybk.core.cli.entry", "--addr", "", "--root", str(root)]
    if config is not None:
        cmd += ["--config", str(config)]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYBK_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def store(tmp_path):
    """A store with the records of two builds: a local context, COPY results."""
    need_runc()
    for name, size in (("one", 200_000), ("two", 50_000)):
        ctx = tmp_path / name
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.bin /a.bin\nCOPY b.txt /b.txt\n")
        (ctx / "a.bin").write_bytes(os.urandom(size))
        (ctx / "b.txt").write_text(name)
        _pybk(tmp_path / "store", "build", "-q", "-o", f"type=tar,dest={tmp_path}/{name}.tar",
              str(ctx))
    return tmp_path / "store"


def _ids(text):
    return sorted(ID.findall(text))


def test_prune_dry_run_lists_what_prune_removes_and_removes_nothing(store):
    before = _pybk(store, "du", "-v")
    dry = _pybk(store, "prune", "--all", "--dry-run")
    assert "Would free:" in dry and "dry run: nothing removed" in dry
    assert _pybk(store, "du", "-v") == before  # nothing changed
    real = _pybk(store, "prune", "--all")
    assert _ids(dry) == _ids(real) and len(_ids(real)) >= 4
    freed = re.search(r"Would free:\s+(\S+)", dry).group(1)
    assert re.search(r"Total:\s+(\S+)", real).group(1) == freed
    assert _ids(_pybk(store, "du")) == []


def test_prune_dry_run_with_a_size_target_and_a_filter(store):
    dry = _pybk(store, "prune", "--all", "--keep-storage", "0.1", "--dry-run")
    dry_filtered = _pybk(store, "prune", "--all", "--filter", "type==source.local",
                         "--dry-run")
    real = _pybk(store, "prune", "--all", "--keep-storage", "0.1")
    assert _ids(dry) == _ids(real)
    assert 0 < len(_ids(real)) < 6  # the size target stops it before everything goes
    assert len(_ids(dry_filtered)) == 2  # the two contexts


def test_du_explain_names_the_policy_that_deletes_and_why_others_keep(store, tmp_path):
    config = tmp_path / "buildkitd.toml"
    config.write_text(
        '[worker.oci]\ngc = true\n'
        '[[worker.oci.gcpolicy]]\nfilters = ["type==source.local"]\nall = true\n'
        '[[worker.oci.gcpolicy]]\nkeepDuration = "1h"\nall = true\n')
    out = _pybk(store, "du", "--explain", config=config)
    assert "1: filters=type==source.local all" in out and "2: keep-duration=1h0m0s all" in out
    rows = [line for line in out.splitlines() if ID.match(line)]
    assert len(rows) == 6
    deleted = [r for r in rows if "would be deleted by policy 1" in r]
    kept = [r for r in rows if "kept: policy 1: does not match type==source.local" in r]
    assert len(deleted) == 2 and len(kept) == 4
    assert all(re.search(r"policy 2: used within 1h0m0s \(eligible in (59m|1h0m0s)", r)
               for r in kept)
    # nothing changed, and --filter narrows the rows
    assert len(_ids(_pybk(store, "du"))) == 6
    narrowed = _pybk(store, "du", "--explain", "--filter", "type==source.local", config=config)
    assert len([line for line in narrowed.splitlines() if ID.match(line)]) == 2
    # gc = false: no policy, every record kept and said so
    config.write_text("[worker.oci]\ngc = false\n")
    assert "kept: no GC policy" in _pybk(store, "du", "--explain", config=config)
