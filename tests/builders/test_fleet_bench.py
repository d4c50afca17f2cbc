"""bench/fleet.py end to end, small: one project built twice (the second time changed) through
a one-node builder with a per-project moto S3 cache, then on a fresh node. Checks what the
benchmark reports (routing, cached steps, CPU, the fresh node's cache hits), never how fast."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
from support.engine import need_runc
from support.registry import registry_available

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_fleet_bench_reports_routing_cache_hits_and_cpu(tmp_path, monkeypatch, capsys):
    need_runc()
    if not registry_available():
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is missing (CI=true: required)")
        pytest.skip("docker-registry is missing")
    pytest.importorskip("moto.server")
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("fleet", None)
    fleet = importlib.import_module("fleet")
    out = tmp_path / "fleet.json"
    assert fleet.main(["--reps", "1", "--projects", "1", "--rounds", "2", "--clients", "1",
                       "--configs", "nodes1", "--shared-cache", "s3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    [run] = data["runs"]
    assert run["config"] == "nodes1" and run["routing_checked"] and run["history_counts"] == {
        "solo": 2}
    first, second = run["builds"]
    assert (first["kind"], second["kind"]) == ("cold", "changed")
    assert first["ok"] and second["ok"] and first["node"] == second["node"] == "solo"
    assert (first["cached_steps"], first["steps"]) == (0, 5)
    assert (second["cached_steps"], second["steps"]) == (3, 5)  # up to the changed COPY
    assert first["node_cpu_s"] > second["node_cpu_s"] > 0  # the cold build hashes 400 MB more
    assert run["shared_cache_bytes"] > 0 and run["store_bytes"]["solo"] > 0
    [fresh] = run["fresh_node"]
    assert (fresh["cached_steps"], fresh["steps"]) == (5, 5)  # every step from the S3 cache
    summary = data["summary"]["nodes1"]
    assert summary["routing"] == {"solo": [0]} and summary["failed"] == 0
    assert "fresh node with the shared cache" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--configs", "nodes7"], "--configs: unknown nodes7"),
    (["--reps", "0"], "--reps must be at least 1"),
    (["--clients", "0"], "--clients must be at least 1"),
    (["--shared-cache", "gcs"], "invalid choice: 'gcs'"),
])
def test_fleet_bench_refuses_bad_flags(args, message, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("fleet", None)
    fleet = importlib.import_module("fleet")
    with pytest.raises(SystemExit) as exc:
        fleet.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err
