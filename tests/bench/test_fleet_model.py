"""bench/fleet_model.py: the fleet simulation's invariants and its command line, and
bench/fleet.py's build plan and progress counting (no daemon: the benchmark itself starts them)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def model(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("fleet_model", None)
    return importlib.import_module("fleet_model")


def _inputs(model, **changes):
    return dataclasses.replace(model.Inputs(hours=3, warmup_hours=0.5, projects=20,
                                            cpu_cold=120, cpu_changed=30, cpu_unchanged=3,
                                            overhead=2, cache_mb=300, delta_mb=30, cores=2,
                                            slots=2), **changes)


def test_no_arrivals_nothing_queues(model):
    row = model.simulate(_inputs(model, rate=0))
    assert row["builds"] == 0 and row["queue_p95_s"] == 0 and row["utilisation"] == 0


def test_more_nodes_never_queue_longer_for_the_same_seed(model):
    for routing in ("sticky", "random"):
        rows = [model.simulate(_inputs(model, rate=200, nodes=m, routing=routing, zipf=0.6))
                for m in range(1, 6)]
        p95 = [r["queue_p95_s"] for r in rows]
        assert all(b <= a for a, b in zip(p95, p95[1:], strict=False)), (routing, p95)
        assert p95[0] > 60 and p95[-1] < p95[0]  # one node is overloaded, five are not
        assert len({r["builds"] for r in rows}) == 1  # the same arrivals every time


def test_littles_law(model):
    row = model.simulate(_inputs(model, rate=200, nodes=3, hours=6, warmup_hours=1))
    expected = row["throughput_per_s"] * row["latency_mean_s"]
    assert row["in_system_mean"] == pytest.approx(expected, rel=0.1)


def test_a_light_load_has_no_queue_and_latency_is_the_build(model):
    row = model.simulate(_inputs(model, rate=2, nodes=2, change=0, projects=1))
    # one project, never changed, after the warm-up: every build is all cached
    assert row["queue_p95_s"] == 0 and row["all_cached"] == 1 and row["cold"] == 0
    assert row["latency_p50_s"] == pytest.approx(2 + 3, abs=0.01)


def test_sticky_routing_keeps_more_builds_cached_without_a_shared_cache(model):
    base = _inputs(model, rate=120, nodes=4, shared_cache=False)
    sticky = model.simulate(base)
    scattered = model.simulate(dataclasses.replace(base, routing="random"))
    assert sticky["all_cached"] > scattered["all_cached"]
    assert sticky["cpu_s_per_build"] < scattered["cpu_s_per_build"]
    assert sticky["shared_cache_mb"] == 0 and scattered["from_shared"] == 0
    shared = model.simulate(dataclasses.replace(base, routing="random", shared_cache=True))
    assert shared["from_shared"] > 0 and shared["shared_cache_mb"] > 0
    assert shared["all_cached"] > scattered["all_cached"]


def test_rendezvous_matches_the_builders_hash_property(model):
    # removing the last node moves only the projects that were on it
    before = {p: model.rendezvous(p, 5) for p in range(200)}
    after = {p: model.rendezvous(p, 4) for p in range(200)}
    assert all(after[p] == before[p] for p in before if before[p] != 4)
    assert len(set(before.values())) == 5


def test_command_line(model, tmp_path, capsys):
    out = tmp_path / "model.json"
    assert model.main(["--rate", "300", "--max-nodes", "3", "--hours", "1",
                       "--warmup-hours", "0.5", "--work-scale", "40", "--compare-random",
                       "--target-queue", "20", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["nodes"], r["routing"]) for r in data["rows"]] == [
        (1, "sticky"), (1, "random"), (2, "sticky"), (2, "random"), (3, "sticky"),
        (3, "random")]
    assert data["inputs"]["cpu_cold"] == pytest.approx(model.MEASURED["cpu_cold"] * 40)
    assert data["inputs"]["cache_mb"] == pytest.approx(model.MEASURED["cache_mb"] * 40)
    assert data["target_queue_s"] == 20 and set(data["smallest"]) == {"sticky", "random"}
    assert "fewest nodes with p95 queueing < 20 s" in capsys.readouterr().out
    model.main(["--max-nodes", "1", "--hours", "1", "--warmup-hours", "0", "--no-shared-cache",
                "--cpu-cold", "7", "--work-scale", "3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["inputs"]["shared_cache"] is False and data["inputs"]["cpu_cold"] == 7
    assert data["inputs"]["cpu_changed"] == pytest.approx(model.MEASURED["cpu_changed"] * 3)
    assert data["rows"][0]["shared_cache_mb"] == 0


def test_from_bench_takes_the_builds_that_ran_alone(model, tmp_path):
    runs = {"runs": [{"builds": [
        {"ok": True, "overlapped": False, "kind": "cold", "node_cpu_s": 3.0, "latency_s": 3.5},
        {"ok": True, "overlapped": True, "kind": "cold", "node_cpu_s": 9.0, "latency_s": 9.0},
        {"ok": True, "overlapped": False, "kind": "changed", "node_cpu_s": 0.5,
         "latency_s": 1.0},
        {"ok": True, "overlapped": False, "kind": "unchanged", "node_cpu_s": 0.1,
         "latency_s": 0.6}]}]}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(runs))
    assert model.from_bench(str(path)) == pytest.approx(
        {"cpu_cold": 3.0, "cpu_changed": 0.5, "cpu_unchanged": 0.1, "overhead": 0.5})
    out = tmp_path / "m.json"
    model.main(["--from-bench", str(path), "--max-nodes", "1", "--hours", "1",
                "--warmup-hours", "0", "--json", str(out)])
    assert json.loads(out.read_text())["inputs"]["cpu_changed"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--cores", "0"], "--cores must be at least 1"),
    (["--change", "2"], "--change is a share between 0 and 1"),
    (["--warmup-hours", "9"], "--warmup-hours < --hours"),
    (["--work-scale", "0"], "--work-scale must be positive"),
    (["--import-mbps", "0"], "--import_mbps must be positive".replace("_", "-")),
    (["--routing", "random", "--compare-random"], "--compare-random compares with sticky"),
    (["--from-bench", "/nonexistent.json"], "--from-bench:"),
])
def test_bad_inputs_exit_2(model, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        model.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_fleet_bench_plan_and_step_counting(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("fleet", None)
    fleet = importlib.import_module("fleet")
    plan = fleet.schedule(4, 3)
    assert len(plan) == 12 and [b["project"] for b in plan[:5]] == [0, 1, 2, 3, 0]
    kinds = {(b["project"], b["round"]): b["kind"] for b in plan}
    assert kinds[(0, 1)] == "cold" and kinds[(0, 2)] == "changed" and kinds[(1, 3)] == "changed"
    assert kinds[(1, 2)] == "unchanged" and kinds[(0, 3)] == "unchanged"
    stderr = ("#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n"
              "#5 [2/5] WORKDIR /app\n#5 CACHED\n#6 [3/5] COPY deps.txt .\n#6 CACHED\n"
              "#7 [4/5] RUN dd if=/dev/zero\n#7 DONE 1.2s\n#9 exporting cache\n#9 CACHED\n")
    assert fleet.count_steps(stderr) == (2, 3)
    with pytest.raises(SystemExit):
        fleet.main(["--configs", "nodes7"])


def test_fleet_bench_cache_flags_and_project_spread(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("fleet", None)
    fleet = importlib.import_module("fleet")
    from pybk.core.cli.builders import rendezvous_order, routing_key

    class S3:
        def attrs(self, **extra):
            return {"bucket": "b", **extra}

    per_project = fleet.CacheFlags("s3", S3(), "nodes3-0/")
    assert per_project.builder() == []
    assert per_project.build("project1") == [
        "--cache-from", "type=s3,bucket=b,prefix=nodes3-0/,name=project1",
        "--cache-to", "type=s3,bucket=b,prefix=nodes3-0/,name=project1,mode=max"]
    on_builder = fleet.CacheFlags("s3-builder", S3(), "p/")
    assert on_builder.build("project1") == []
    assert on_builder.builder() == ["--cache-from", "type=s3,bucket=b,prefix=p/",
                                    "--cache-to", "type=s3,bucket=b,prefix=p/,mode=max"]
    assert fleet.CacheFlags("none", None, "p/").build("x") == []

    nodes = ("alpha", "beta", "gamma")
    names = fleet.project_names(tmp_path, 4, nodes)
    assert len(set(names)) == 4 and all(n.startswith(f"project{i}") for i, n in enumerate(names))
    placed = [rendezvous_order(routing_key(str(tmp_path / n), None, None), list(nodes))[0]
              for n in names]
    assert sorted(placed.count(n) for n in nodes) == [1, 1, 2]


def test_fleet_bench_cpu_seconds_of_a_process_tree():
    import os
    import signal
    import subprocess
    import time

    fleet = _fleet_module()
    child = subprocess.Popen([sys.executable, "-c",
                              "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                              "'import time\\nend = time.process_time() + 0.3\\n"
                              "while time.process_time() < end: pass\\ntime.sleep(30)'])"],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while fleet.cpu_seconds(child.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the grandchild's CPU counts while it is still running
        assert fleet.cpu_seconds(child.pid) >= 0.25
        assert fleet.cpu_seconds(os.getpid()) > 0
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the grandchild
        child.wait()


def _fleet_module():
    sys.path.insert(0, str(BENCH))
    try:
        sys.modules.pop("fleet", None)
        return importlib.import_module("fleet")
    finally:
        sys.path.remove(str(BENCH))


_BASE = ["--rate", "400", "--max-nodes", "2", "--hours", "1", "--warmup-hours", "0.2",
         "--cpu-cold", "100", "--cpu-changed", "40", "--cache-mb", "300", "--delta-mb", "30",
         "--cores", "2", "--slots", "2", "--projects", "10"]


@pytest.mark.parametrize("flag, value, key", [
    ("--rate", "200", "rate"), ("--projects", "3", "projects"), ("--zipf", "2", "zipf"),
    ("--change", "0.1", "change"), ("--cores", "4", "cores"), ("--slots", "1", "slots"),
    ("--seed", "7", "seed"), ("--cpu-cold", "200", "cpu_cold"),
    ("--cpu-changed", "10", "cpu_changed"), ("--cpu-unchanged", "9", "cpu_unchanged"),
    ("--overhead", "5", "overhead"), ("--import-mbps", "5", "import_mbps"),  # random: imports
    ("--export-mbps", "5", "export_mbps"), ("--cache-mb", "900", "cache_mb"),
    ("--delta-mb", "300", "delta_mb"), ("--hours", "2", "hours"),
    ("--warmup-hours", "0.5", "warmup_hours"), ("--routing", "random", "routing"),
])
def test_every_model_input_changes_the_result(model, tmp_path, flag, value, key):
    """Each input reaches the simulation: the rows differ from the same run without it."""
    context = ["--routing", "random"] if key == "import_mbps" else []

    def rows(extra):
        out = tmp_path / "m.json"
        assert model.main([*_BASE, *context, *extra, "--json", str(out)]) == 0
        return json.loads(out.read_text())

    base = rows([])
    changed = rows([flag, value])
    expected = value if key == "routing" else pytest.approx(float(value))
    assert changed["inputs"][key] == expected
    assert changed["rows"] != base["rows"], flag
