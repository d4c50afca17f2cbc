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
