"""bench/curves: the generated contexts and Dockerfiles, the command lines of the curves'
builds, builds at once, the process-tree memory sampler and the growth fit."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
MODULES = ("curvegen", "curvereport", "curves", "memory", "engines", "harness")


@pytest.fixture
def bench(monkeypatch):
    """The bench modules, with every build command recorded instead of run."""
    monkeypatch.syspath_prepend(str(BENCH))
    for name in MODULES:
        sys.modules.pop(name, None)
    engines = importlib.import_module("engines")
    ran: list[list[str]] = []
    lock = threading.Lock()

    def fake_timed(cmds, env=None):
        with lock:
            ran.extend(cmds)
        return 0.01

    monkeypatch.setattr(engines, "timed", fake_timed)
    modules = {name: importlib.import_module(name) for name in MODULES}
    modules["ran"] = ran
    yield modules
    for name in MODULES:
        sys.modules.pop(name, None)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# generated inputs -------------------------------------------------------------------------------


def test_context_has_the_number_of_small_files_spread_over_directories(bench, tmp_path):
    gen = bench["curvegen"]
    total = gen.generate_files(str(tmp_path / "a"), 1234)
    files = _files(tmp_path / "a")
    assert len(files) == 1234
    sizes = [p.stat().st_size for p in files]
    assert min(sizes) >= 100 and max(sizes) <= 1024 and sum(sizes) == total
    per_dir: dict[Path, int] = {}
    for p in files:
        per_dir[p.parent] = per_dir.get(p.parent, 0) + 1
    assert len(per_dir) == 13 and max(per_dir.values()) == 100
    assert (tmp_path / "a" / gen.files_change_file(1234)).is_file()
    gen.generate_files(str(tmp_path / "b"), 1234)  # the same for every engine and run
    assert all((tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() == p.read_bytes()
               for p in files)


def test_100k_files_nest_two_directory_levels(bench):
    gen = bench["curvegen"]
    assert gen.file_path(0) == os.path.join("d00", "d00", "f000000.txt")
    assert gen.file_path(99_999) == os.path.join("d09", "d99", "f099999.txt")


@pytest.mark.parametrize("steps,stages", [(5, [5]), (10, [10]), (100, [100]),
                                          (250, [100, 100, 50]), (400, [100] * 4)])
def test_steps_dockerfile_counts_and_stage_split(bench, tmp_path, steps, stages):
    gen = bench["curvegen"]
    assert gen.stage_split(steps) == stages
    text = gen.steps_dockerfile(steps)
    counts = gen.count_steps(text)
    assert counts == {"copy": (steps + 1) // 2, "run": steps // 2, "stages": len(stages)}
    # each stage: FROM, WORKDIR and at most 100 steps; then one COPY --from per stage
    blocks = text.split("FROM ")[1:]
    assert [len(b.strip().splitlines()) - 2 for b in blocks[:-1]] == stages
    assert blocks[-1].strip().splitlines()[1:] == [
        f"COPY --from=s{i} /steps /s{i}" for i in range(len(stages))]
    ctx = tmp_path / "ctx"
    assert gen.generate_steps(str(ctx), steps) == (steps + 1) // 2
    copied = [ln.split()[1] for ln in text.splitlines() if ln.startswith("COPY files/")]
    assert all((ctx / name).is_file() for name in copied)
    change = gen.steps_change_file(steps)
    assert change in copied and (ctx / change).is_file()
    assert gen.steps_change_step(steps) == 2 * copied.index(change)


def test_concurrent_contexts_differ(bench, tmp_path):
    gen = bench["curvegen"]
    for i in range(2):
        gen.generate_concurrent(str(tmp_path / str(i)), i)
    a, b = (sorted(_files(tmp_path / str(i))) for i in range(2))
    assert len(a) == gen.CONCURRENT_FILES + 1
    assert (tmp_path / "0/src/m00.txt").read_text() != (tmp_path / "1/src/m00.txt").read_text()
    assert "RUN sleep" in (tmp_path / "0/Dockerfile").read_text()


# command lines and runs -------------------------------------------------------------------------


def _args(bench, tmp_path, *extra):
    return bench["curves"].parse_args(["--workdir", str(tmp_path / "work"), *extra])


def test_defaults_and_point_syntax(bench, tmp_path):
    curves = bench["curves"]
    args = _args(bench, tmp_path)
    assert args.files == [(1000, 3), (10000, 3), (100000, 2)]
    assert args.steps == [(10, 3), (100, 3), (400, 3)]
    assert args.concurrency == [(1, 3), (4, 3), (8, 3)]
    assert args.engines == ["pybk", "pybkd", "buildkit"] and args.only == list(curves.CURVES)
    quick = _args(bench, tmp_path, "--files", "1000,200", "--steps", "5,20", "--concurrency",
                  "1,2", "--reps", "1", "--only", "files,concurrency")
    assert quick.files == [(200, 1), (1000, 1)] and quick.only == ["files", "concurrency"]
    with pytest.raises(SystemExit):
        _args(bench, tmp_path, "--engines", "buildah")
    with pytest.raises(SystemExit):
        _args(bench, tmp_path, "--files", "0")


def test_curve_builds_use_the_registry_base_and_a_tag(bench, tmp_path):
    curves, engines = bench["curves"], bench["engines"]
    cb = curves.CurveBench(_args(bench, tmp_path, "--engines", "pybk,pybkd,buildkit"))
    case = cb.curve_case("steps", 20)
    ctx, _ = cb.make_context(case)
    assert Path(ctx, case.change_file).is_file()
    assert Path(ctx, "Dockerfile").read_text() == bench["curvegen"].steps_dockerfile(20)
    base = engines.BaseImage("busybox", "/L", "127.0.0.1:5000/busybox:latest")
    request = engines.BuildRequest(case=case.name, context=ctx,
                                   dockerfile=os.path.join(ctx, "Dockerfile"), base=base,
                                   output_dir=str(tmp_path / "out"))
    pybk, pybkd, buildkit = engines.make_engines(["pybk", "pybkd", "buildkit"], 3)
    pybk.root, pybkd.socket = "/store", "/s.sock"
    for engine in (pybk, pybkd, buildkit):
        engine.build(request)
    for cmd in bench["ran"]:
        assert cmd[cmd.index("-t") + 1] == "bench-steps-20"
        assert "BASE=127.0.0.1:5000/busybox:latest" in cmd and cmd[-1] == ctx
        assert cmd[cmd.index("--network") + 1] == "none"
    assert bench["ran"][0][1:3] == ["--root", "/store"]
    assert bench["ran"][1][1:3] == ["--addr", "unix:///s.sock"]
    assert bench["ran"][2][:2] == [engines.DOCKER_CLIENT, "build"]


class FakeDaemon:
    """An engine that sleeps instead of building and counts how many builds overlap."""

    def __init__(self, name, seconds=0.2):
        self.name = self.label = name
        self.unavailable = None
        self.seconds = seconds
        self.requests = []
        self.running = self.most = self.resets = 0
        self.lock = threading.Lock()

    def reset(self):
        self.resets += 1

    def unsupported(self, request):
        return None

    def gateway(self):
        return None

    def build(self, request):
        with self.lock:
            self.requests.append(request)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return self.seconds


def test_builds_at_once_are_distinct_and_overlap(bench, tmp_path):
    curves, engines = bench["curves"], bench["engines"]
    cb = curves.CurveBench(_args(bench, tmp_path, "--only", "concurrency",
                                 "--concurrency", "4:2"))
    cb.bases = {"busybox": engines.BaseImage("busybox", "/L", "127.0.0.1:5000/busybox:latest")}
    pybkd, buildkit, pybk = FakeDaemon("pybkd"), FakeDaemon("buildkit"), FakeDaemon("pybk")
    cb.engines = [pybk, pybkd, buildkit]
    started = time.monotonic()
    cb.run()
    assert time.monotonic() - started < 8 * 0.2 * 2  # the four builds ran side by side
    assert pybkd.most == 4 and buildkit.most == 4 and not pybk.requests  # no daemon: left out
    assert pybkd.resets == 2  # a cold batch per repetition
    assert len({r.context for r in pybkd.requests}) == 4
    assert {r.case for r in pybkd.requests} == {f"concurrent-{i}" for i in range(4)}
    assert {r.build_args for r in pybkd.requests} == {(("BUILD_ID", str(i)),) for i in range(4)}
    cells = {(c["phase"], c["engine"]): c for c in cb.concurrency_cells()}
    assert set(cells) == {(p, e) for p in ("cold", "warm") for e in ("pybkd", "buildkit")}
    cold = cells["cold", "pybkd"]
    assert len(cold["times"]) == 2 and len(cold["builds"]) == 8
    assert 0.2 <= cold["median"] < 0.6 and cold["build_median"] == 0.2
    # the real command lines of a batch: one tag and one BUILD_ID per build
    (real,) = engines.make_engines(["buildkit"], 3)
    wall, times = cb.run_batch(real, cb.concurrent_requests(3))
    tags = sorted(cmd[cmd.index("-t") + 1] for cmd in bench["ran"])
    assert tags == ["bench-concurrent-0", "bench-concurrent-1", "bench-concurrent-2"]
    assert len(times) == 3 and wall >= 0


def test_a_failed_build_fails_its_batch_and_the_later_ones(bench, tmp_path):
    curves, engines = bench["curves"], bench["engines"]
    cb = curves.CurveBench(_args(bench, tmp_path, "--only", "concurrency",
                                 "--concurrency", "2:2"))
    cb.bases = {"busybox": engines.BaseImage("busybox", "/L", "ref")}
    broken = FakeDaemon("pybkd", 0.01)

    def fail(request):
        raise engines.EngineFailure(f"error: no space left on device in {cb.workdir}")

    broken.build = fail
    cb.engines = [broken]
    cb.run()
    cells = {c["phase"]: c for c in cb.concurrency_cells()}
    assert cells["cold"]["failure"] in {
        f"build {i} of 2: error: no space left on device in WORKDIR" for i in (1, 2)}
    assert cells["warm"]["failure"].startswith("not run") and cells["warm"]["median"] is None


def test_the_cold_warm_change_loop_on_a_generated_case(bench, tmp_path):
    curves = bench["curves"]
    cb = curves.CurveBench(_args(bench, tmp_path, "--files", "30", "--reps", "2",
                                 "--only", "files", "--engines", "pybkd,buildkit"))
    cb.bases = {"busybox": None}
    a, b = FakeDaemon("pybkd", 0.0), FakeDaemon("buildkit", 0.0)
    cb.engines = [a, b]
    cb.run()
    cells = cb.curve_cells("files")
    assert {(c["phase"], c["engine"]) for c in cells} == {
        (p, e) for p in ("cold", "warm", "change") for e in ("pybkd", "buildkit")}
    assert all(len(c["times"]) == 2 and c["x"] == 30 for c in cells)
    assert len(a.requests) == 6 and a.resets == 2
    assert a.requests[0].case == "files-30"
    assert not os.path.exists(a.requests[0].context)  # the context is removed after its point
    assert [s[0] for s in cb.spans] == ["files-30"]


# memory -----------------------------------------------------------------------------------------

TREE = textwrap.dedent("""
    import os, sys, time
    MiB = 1 << 20
    kids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            block = b"x" * (40 * MiB)  # written, so resident
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
    block = b"y" * (20 * MiB)
    time.sleep(1.0)
    print(" ".join(map(str, kids)), flush=True)
    time.sleep(60)
""")


@pytest.fixture
def tree():
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    kids = [int(p) for p in proc.stdout.readline().split()]
    yield proc, kids
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    proc.kill()
    proc.wait()


def test_tree_usage_sums_the_whole_process_tree(bench, tree):
    memory = bench["memory"]
    proc, kids = tree
    whole = memory.tree_usage(proc.pid)
    root_only = memory.status_kib(proc.pid)["VmRSS"]
    assert whole.procs == 3
    assert whole.rss >= 100 * 1024 and whole.rss >= root_only + 80 * 1024
    assert 40 * 1024 <= whole.largest < whole.rss
    assert whole.root_hwm >= root_only >= 20 * 1024
    assert 0 < whole.pss <= whole.rss
    assert memory.tree_pids(kids[0], memory.parent_table()) == [kids[0]]
    assert memory.tree_usage(2**22 + 12345).procs == 0  # no such process


def test_sampler_follows_the_tree_and_settles_when_it_shrinks(bench, tree):
    memory = bench["memory"]
    proc, kids = tree
    pid = {"now": proc.pid}
    sampler = memory.TreeSampler({"tree": lambda: pid["now"], "gone": lambda: None},
                                 interval=0.02).start()
    start = time.monotonic()
    time.sleep(0.3)
    os.kill(kids[0], 9)
    idle = sampler.settle("tree", timeout=5, quiet=0.3)
    sampler.stop()
    series = sampler.series["tree"]
    assert len(series) >= 5 and not sampler.series["gone"]
    assert memory.peak(series) >= 100 * 1024
    assert memory.peak(sampler.window("tree", start, start + 0.25)) >= 100 * 1024
    assert idle.rss < memory.peak(series) - 30 * 1024
    assert idle.rss >= 60 * 1024
    assert sampler.window("tree", time.monotonic() + 10) == []


# the report -------------------------------------------------------------------------------------


def test_growth_fit_reads_linear_and_worse(bench):
    report = bench["curvereport"]
    xs = [1000, 10000, 100000]
    linear = report.growth(xs, [0.5 + 0.002 * x for x in xs])
    assert linear["slope"] == pytest.approx(0.002) and linear["intercept"] == pytest.approx(0.5)
    assert [s for _, _, s in linear["segments"]] == pytest.approx([0.002, 0.002])
    assert linear["exponent"] < 1
    square = report.growth(xs, [1e-6 * x * x for x in xs])
    assert square["exponent"] == pytest.approx(2)
    first, second = (s for _, _, s in square["segments"])
    assert second > 5 * first
    assert report.growth([10], [1.0]) is None and report.growth([1, 2], [1.0, None]) is None


def _cell(x, phase, engine, median, **extra):
    return {"x": x, "reps": 1, "phase": phase, "engine": engine, "median": median,
            "times": [] if median is None else [median], "failure": None,
            "not_applicable": None, "memory": None, **extra}


def test_tables_ratios_growth_and_plots_from_a_report(bench, tmp_path):
    curvereport = bench["curvereport"]
    report = {
        "engines": [{"name": "pybkd", "label": "pybkd", "unavailable": None},
                    {"name": "buildkit", "label": "BuildKit", "unavailable": None}],
        "curves": {
            "files": [_cell(1000, "cold", "pybkd", 1.0, memory={"rss_mib": 120.4,
                                                                "pss_mib": 80.0}),
                      _cell(1000, "cold", "buildkit", 2.0),
                      _cell(10000, "cold", "pybkd", 9.0),
                      _cell(10000, "cold", "buildkit", None, failure="error: boom")],
            "concurrency": [_cell(1, "cold", "pybkd", 1.0, build_median=1.0),
                            _cell(4, "cold", "pybkd", 1.5, build_median=1.2),
                            _cell(1, "cold", "buildkit", 1.0, build_median=1.0),
                            _cell(4, "cold", "buildkit", 3.0, build_median=2.5)]},
        "memory": {"pybkd": {"peak_rss_mib": 200.0, "peak_pss_mib": 110.0,
                             "root_hwm_mib": 57.0, "largest_process_mib": 60.0,
                             "max_processes": 5, "samples": 10,
                             "concurrent": {"4": {"rss_mib": 190.0, "pss_mib": 100.0}},
                             "idle": [{"curve": "files", "x": 1000, "rss_mib": 57.0,
                                       "pss_mib": 46.0, "procs": 1}],
                             "series": [[0.0, 57.0, 46.0, 1], [1.0, 200.0, 110.0, 5]]}},
        "spans": [["files-1000", 0.0, 1.0]],
        "versions": {"pybkd": "pybk 0.1.0"},
    }
    report["growth"] = curvereport.growth_report(report)
    fit = report["growth"]["files"]["pybkd"]["cold"]
    assert fit["slope"] == pytest.approx(8 / 9)  # seconds per 1k files
    text = curvereport.render(json.loads(json.dumps(report)))  # as --replot reads it
    assert "| 1,000 | cold | 1.00 | 2.00 | 0.50 | 120 / 80 | – |" in text
    assert "| 10,000 | cold | 9.00 | failed [1] | – | – | – |" in text
    assert "[1] BuildKit: error: boom" in text
    assert "| 4 | cold | 1.50 | 1.20 | 3.00 | 2.50 | 0.50 | – | – |" in text
    assert "+0.889 s per 1k files" in text
    assert "| pybkd | 200 | 110 | 57 | 60 | 190 / 100 | 57 / 46 → 57 / 46" in text
    written = curvereport.plot(report, str(tmp_path / "plots"), log=lambda m: None)
    if written:  # matplotlib installed
        assert sorted(os.path.basename(p) for p in written) == [
            "concurrency.png", "files.png", "memory.png"]
        assert all(os.path.getsize(p) > 10_000 for p in written)


def test_bench_run_hands_curves_to_the_curves_script(tmp_path):
    out = tmp_path / "empty.json"
    out.write_text(json.dumps({"engines": [], "curves": {}, "versions": {"x": "1"}}))
    done = subprocess.run([sys.executable, str(BENCH / "run"), "--curves", "--replot", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "x: 1"
