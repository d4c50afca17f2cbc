"""Small seeded runs of the reliability campaigns (bench/crashes.py, bench/concurrency.py; see
docs/reliability.md): builds killed with SIGKILL (embedded and in pybkd's per-command child) leave
a store the next build and ``pybk debug fsck`` find sound; concurrent builds, prune and du give
the same exports round after round and a clean fsck."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.engine import require_runc

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script, tmp_path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    require_runc()
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, str(BENCH / script), "--workdir", str(tmp_path / "w"),
                        "--json", str(out), *args], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text()), r.stdout


@pytest.mark.slow
def test_crash_campaign_three_points(tmp_path):
    result, stdout = _run("crashes.py", tmp_path, "--points", "3", "--seed", "7")
    assert result["summary"]["points"] == 3 and result["summary"]["failed"] == 0, stdout
    assert result["summary"]["by_mode"] == {"embedded": 2, "daemon": 1}
    assert all(p["outcome"] == "ok" for p in result["points"])


@pytest.mark.slow
def test_concurrency_campaign_two_rounds(tmp_path):
    result, stdout = _run("concurrency.py", tmp_path, "--rounds", "2", "--seed", "3")
    assert result["summary"]["rounds"] == 2 and result["summary"]["failed_rounds"] == 0, stdout


@pytest.mark.slow
def test_campaign_options(tmp_path):
    """``--builds``, ``--no-run`` and ``--keep`` of the concurrency campaign, ``--modes`` of the
    crash campaign: each changes what runs (and what is left)."""
    result, _ = _run("concurrency.py", tmp_path / "c", "--rounds", "1", "--builds", "2",
                     "--no-run", "--keep")
    assert result["summary"]["builds_per_round"] == 2 and result["summary"]["builds"] == 2
    assert result["summary"]["run_steps"] is False
    assert (tmp_path / "c" / "w").is_dir()  # kept
    result, _ = _run("crashes.py", tmp_path / "k", "--points", "1", "--modes", "embedded")
    assert result["summary"]["by_mode"] == {"embedded": 1}
    assert not (tmp_path / "k" / "w").exists()  # not kept


def test_fuzz_command_line(tmp_path):
    """bench/fuzz.py's ``--target`` (repeatable), ``--examples``, ``--seed`` and ``--json``."""
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(BENCH / "fuzz.py"), "--examples", "3", "--seed", "1",
                        "--target", "llb", "--target", "dockerignore", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())
    assert [(row["target"], row["examples"], row["crashes"]) for row in rows] == [
        ("llb", 3, []), ("dockerignore", 3, [])]
