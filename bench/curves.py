"""Scaling curves and memory: how build time grows with the context's size, the number of steps
and the number of builds at once, and how much memory the daemons take meanwhile.

Uses the side-by-side benchmark's machinery (``harness.Bench``: packages, the busybox base in a
local registry, the engines, clean-up; ``engines``: the command lines) with generated inputs
(``curvegen``), samples the daemons' process trees (``memory``) and renders the report as
tables and plots (``curvereport``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import curvegen
import curvereport
from engines import BuildRequest, Engine, EngineFailure, remove_tree
from harness import PACKAGES, PHASES, Bench, Case, log, run_to_the_end
from memory import TreeSampler, TreeUsage, mib, peak

CURVES = ("files", "steps", "concurrency")
ENGINE_NAMES = ("pybk", "pybkd", "buildkit")
#: engine -> the daemon whose process tree is sampled for it
DAEMONS = {"pybkd": "pybkd", "buildkit": "dockerd"}
CONCURRENT_PHASES = ("cold", "warm")
#: the default points; ``N:R`` runs point N R times instead of ``--reps`` (chosen so the
#: default run takes about 25 minutes on the reference machine, see bench/README.md)
DEFAULT_FILES = "1000,10000,100000:2"
DEFAULT_STEPS = "10,100,400"
DEFAULT_CONCURRENCY = "1,4,8"
DEFAULT_REPS = 3


def parse_points(text: str, reps: int) -> list[tuple[int, int]]:
    """``"1000,10000,100000:1"`` -> [(1000, reps), (10000, reps), (100000, 1)], sorted."""
    points = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        value, _, count = item.partition(":")
        n, r = int(value), int(count) if count else reps
        if n < 1 or r < 1:
            raise ValueError(f"{item}: sizes and repetitions must be at least 1")
        points[n] = r
    return sorted(points.items())


@dataclass
class Batch:
    """The measurements of one engine for ``n`` builds at once, one phase."""

    walls: list[float] = field(default_factory=list)  # the whole batch, one per repetition
    builds: list[float] = field(default_factory=list)  # every single build
    failure: str | None = None
    not_applicable: str | None = None


class CurveBench(Bench):
    """The curves' run: set-up and clean-up from ``Bench``; generated cases; a batch runner
    for builds at once; a memory sampler over the whole run."""

    packages = {name: marker for name, marker in PACKAGES.items() if name != "buildah"}

    def __init__(self, args: argparse.Namespace):
        args.cases = []
        super().__init__(args)
        self.points: dict[str, list[tuple[int, int]]] = {
            "files": args.files, "steps": args.steps, "concurrency": args.concurrency}
        self.sampler: TreeSampler | None = None
        self.memory_cells: dict[tuple, list[TreeUsage]] = {}  # (curve, x, phase, engine)
        self.idle: dict[str, list[dict]] = {}  # daemon -> idle samples after warm builds
        self.batches: dict[tuple, Batch] = {}  # (x, phase, engine)
        self.windows: dict[str, tuple[float, float]] = {}  # concurrency run -> times
        self.spans: list[tuple[str, float, float]] = []  # every point: name, start, end
        self.started_at = time.monotonic()
        self.case_x: dict[str, tuple[str, int]] = {}  # case name -> (curve, x)

    # set-up ---------------------------------------------------------------------------------

    def set_up(self) -> None:
        super().set_up()
        roots = {DAEMONS[e.name]: self.root_of(e) for e in self.started if e.name in DAEMONS}
        self.sampler = TreeSampler(roots, self.args.sample_interval).start()

    @staticmethod
    def root_of(engine: Engine):
        """The pid of the engine's daemon now (pybkd's changes on every cold reset)."""
        def pid() -> int | None:
            proc = getattr(engine, "proc", None)
            return proc.pid if proc is not None and proc.poll() is None else None
        return pid

    def curve_case(self, curve: str, n: int) -> Case:
        """A generated case the harness's cold/warm/change loop can run."""
        name = f"{curve}-{n}"
        folder = os.path.join(self.workdir, "curve-cases", name)
        os.makedirs(folder, exist_ok=True)
        if curve == "files":
            dockerfile = curvegen.FILES_DOCKERFILE
            module = types.SimpleNamespace(
                generate=lambda ctx: curvegen.generate_files(ctx, n))
            change = curvegen.files_change_file(n)
            description = f"COPY of a context of {n} small files"
        else:
            dockerfile = curvegen.steps_dockerfile(n)
            module = types.SimpleNamespace(generate=lambda ctx: curvegen.generate_steps(ctx, n))
            change = curvegen.steps_change_file(n)
            stages = len(curvegen.stage_split(n))
            description = (f"{n} steps (COPY/RUN) in {stages} stage(s); the change hits "
                           f"step {curvegen.steps_change_step(n) + 1}")
        with open(os.path.join(folder, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        self.case_x[name] = (curve, n)
        return Case(name, folder, description, change, "busybox", (), module)

    # runs -----------------------------------------------------------------------------------

    def run(self) -> None:
        for curve in self.args.only:
            for n, reps in self.points[curve]:
                start = time.monotonic()
                if curve == "concurrency":
                    self.run_concurrency(n, reps)
                else:
                    case = self.curve_case(curve, n)
                    self.run_case(case, reps)
                    if not self.args.keep:  # a 100k-file context is not needed any more
                        remove_tree(os.path.join(self.workdir, "contexts", case.name))
                self.spans.append((f"{curve}-{n}", start, time.monotonic()))

    def measure(self, case: Case, variant, phase: str, engine: Engine, ctx: str, rep: int,
                failed: dict[str, str]) -> None:
        start = time.monotonic()
        super().measure(case, variant, phase, engine, ctx, rep, failed)
        curve, x = self.case_x[case.name]
        self.record_memory((curve, x, phase, engine.name), engine, start)
        if phase == "warm" and rep == 0 and engine.name not in failed:
            self.record_idle(engine, curve, x)

    def record_memory(self, key: tuple, engine: Engine, start: float) -> None:
        daemon = DAEMONS.get(engine.name)
        if daemon and self.sampler:
            self.memory_cells.setdefault(key, []).extend(
                self.sampler.window(daemon, start))

    def record_idle(self, engine: Engine, curve: str, x: int) -> None:
        daemon = DAEMONS.get(engine.name)
        if not daemon or not self.sampler:
            return
        usage = self.sampler.settle(daemon)
        if usage:
            self.idle.setdefault(daemon, []).append(
                {"curve": curve, "x": x, "rss_mib": mib(usage.rss), "pss_mib": mib(usage.pss),
                 "procs": usage.procs})

    def concurrent_requests(self, n: int) -> list[BuildRequest]:
        """``n`` distinct small builds: own context, own ``BUILD_ID``, own tag."""
        requests = []
        for i in range(n):
            ctx = os.path.join(self.workdir, "contexts", f"concurrent-{i}")
            if not os.path.exists(os.path.join(ctx, "Dockerfile")):
                curvegen.generate_concurrent(ctx, i)
            requests.append(BuildRequest(
                case=f"concurrent-{i}", context=ctx, dockerfile=os.path.join(ctx, "Dockerfile"),
                base=self.bases["busybox"], output_dir=os.path.join(self.workdir, "out"),
                build_args=(("BUILD_ID", str(i)),)))
        return requests

    def run_concurrency(self, n: int, reps: int) -> None:
        """``reps`` rounds of ``n`` builds at once on one daemon, cold then warm, the daemons
        in turn (pybk embedded has no daemon to share: not in this curve)."""
        log(f"== concurrency-{n}: {n} distinct small builds at once on one daemon")
        requests = self.concurrent_requests(n)
        daemons = [e for e in self.engines if not e.unavailable and e.name in DAEMONS]
        failed: set[str] = set()
        start = time.monotonic()
        for rep in range(reps):
            shift = rep % len(daemons) if daemons else 0
            order = daemons[shift:] + daemons[:shift]
            for phase in CONCURRENT_PHASES:
                for engine in order:
                    batch = self.batches.setdefault((n, phase, engine.name), Batch())
                    if engine.name in failed:
                        batch.failure = batch.failure or "not run: an earlier batch failed"
                        continue
                    began = time.monotonic()
                    try:
                        if phase == "cold":
                            engine.reset()
                        wall, times = self.run_batch(engine, requests)
                    except EngineFailure as e:
                        batch.failure = re.sub(r"store-\d+", "store",
                                               str(e).replace(self.workdir, "WORKDIR"))
                        failed.add(engine.name)
                        log(f"  concurrency-{n} {phase} #{rep + 1} {engine.label}: FAILED {e}")
                        continue
                    finally:
                        self.record_memory(("concurrency", n, phase, engine.name), engine,
                                           began)
                    batch.walls.append(wall)
                    batch.builds.extend(times)
                    log(f"  concurrency-{n} {phase} #{rep + 1} {engine.label}: batch "
                        f"{wall:.2f} s, per build {statistics.median(times):.2f} s")
                    if phase == "warm" and rep == 0:
                        self.record_idle(engine, "concurrency", n)
        self.windows[f"concurrency-{n}"] = (start, time.monotonic())

    @staticmethod
    def run_batch(engine: Engine, requests: list[BuildRequest]) -> tuple[float, list[float]]:
        """Start every build at once (one thread each, released together); return the wall
        time until the last one ended and each build's own time. Raises the first failure."""
        times: list[float | None] = [None] * len(requests)
        errors: list[str] = []
        gate = threading.Barrier(len(requests) + 1)

        def one(i: int) -> None:
            gate.wait()
            try:
                times[i] = engine.build(requests[i])
            except EngineFailure as e:
                errors.append(f"build {i + 1} of {len(requests)}: {e}")
            except Exception as e:  # reported as a failure, not a hung batch
                errors.append(f"build {i + 1} of {len(requests)}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=one, args=(i,), daemon=True)
                   for i in range(len(requests))]
        for thread in threads:
            thread.start()
        gate.wait()
        start = time.perf_counter()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
        wall = time.perf_counter() - start
        if errors:
            raise EngineFailure(errors[0])
        return wall, [t for t in times if t is not None]

    # results --------------------------------------------------------------------------------

    def memory_of(self, key: tuple) -> dict | None:
        samples = self.memory_cells.get(key)
        if not samples:
            return None
        return {"rss_mib": mib(peak(samples, "rss")), "pss_mib": mib(peak(samples, "pss")),
                "largest_process_mib": mib(peak(samples, "largest")),
                "samples": len(samples)}

    def curve_cells(self, curve: str) -> list[dict]:
        cells = []
        for x, reps in self.points[curve]:
            for phase in PHASES:
                for engine in self.engines:
                    cell = self.results.get((f"{curve}-{x}", phase, engine.name))
                    cells.append({
                        "x": x, "reps": reps, "phase": phase, "engine": engine.name,
                        "times": cell.times if cell else [],
                        "median": cell.median if cell else None,
                        "failure": cell.failure if cell else None,
                        "not_applicable": engine.unavailable or (
                            cell.not_applicable if cell else None),
                        "memory": self.memory_of((curve, x, phase, engine.name))})
        return cells

    def concurrency_cells(self) -> list[dict]:
        cells = []
        for x, reps in self.points["concurrency"]:
            for phase in CONCURRENT_PHASES:
                for engine in (e for e in self.engines if e.name in DAEMONS):
                    batch = self.batches.get((x, phase, engine.name))
                    cells.append({
                        "x": x, "reps": reps, "phase": phase, "engine": engine.name,
                        "times": batch.walls if batch else [],
                        "median": statistics.median(batch.walls) if batch and batch.walls
                        else None,
                        "builds": batch.builds if batch else [],
                        "build_median": statistics.median(batch.builds)
                        if batch and batch.builds else None,
                        "failure": batch.failure if batch else None,
                        "not_applicable": engine.unavailable or (
                            batch.not_applicable if batch else None),
                        "memory": self.memory_of(("concurrency", x, phase, engine.name))})
        return cells

    def memory_report(self) -> dict:
        out = {}
        if not self.sampler:
            return out
        for daemon, series in self.sampler.series.items():
            if not series:
                continue
            concurrent = {}
            for name, (start, end) in self.windows.items():
                window = self.sampler.window(daemon, start, end)
                if window:
                    concurrent[name.split("-")[1]] = {"rss_mib": mib(peak(window, "rss")),
                                                      "pss_mib": mib(peak(window, "pss"))}
            out[daemon] = {
                "peak_rss_mib": mib(peak(series, "rss")),
                "peak_pss_mib": mib(peak(series, "pss")),
                "root_hwm_mib": mib(peak(series, "root_hwm")),
                "largest_process_mib": mib(peak(series, "largest")),
                "max_processes": peak(series, "procs"),
                "samples": len(series),
                "concurrent": concurrent,
                "idle": self.idle.get(daemon, []),
                "series": downsample(series, self.started_at),
            }
        return out

    def report(self) -> dict:
        report = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                        "python": platform.python_version()},
            "points": {curve: self.points[curve] for curve in self.args.only},
            "sample_interval": self.args.sample_interval,
            "engines": [{"name": e.name, "label": e.label, "unavailable": e.unavailable}
                        for e in self.engines],
            "versions": self.versions(),
            "curves": {},
            "memory": self.memory_report(),
            # when each point ran, seconds since the start (the memory series' time axis)
            "spans": [[name, round(start - self.started_at, 1), round(end - self.started_at, 1)]
                      for name, start, end in self.spans],
        }
        for curve in self.args.only:
            report["curves"][curve] = (self.concurrency_cells() if curve == "concurrency"
                                       else self.curve_cells(curve))
        report["growth"] = curvereport.growth_report(report)
        return report

    def clean_up(self) -> None:
        if self.sampler:
            self.sampler.stop()
        super().clean_up()


def downsample(series: list[TreeUsage], origin: float, step: float = 1.0) -> list[list]:
    """The largest sample of every ``step`` seconds: [seconds since origin, RSS MiB, PSS
    MiB, processes]."""
    buckets: dict[int, TreeUsage] = {}
    for s in series:
        key = int((s.time - origin) // step)
        if key not in buckets or s.rss > buckets[key].rss:
            buckets[key] = s
    return [[round(s.time - origin, 1), mib(s.rss), mib(s.pss), s.procs]
            for _, s in sorted(buckets.items())]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/curves",
        description="Scaling curves (context size, step count, builds at once) and daemon "
                    "memory: pybk, pybkd and BuildKit in dockerd side by side.")
    parser.add_argument("--files", default=DEFAULT_FILES, metavar="N[:R],...",
                        help=f"context sizes in files (default {DEFAULT_FILES}; N:R runs "
                             "that point R times instead of --reps)")
    parser.add_argument("--steps", default=DEFAULT_STEPS, metavar="N[:R],...",
                        help=f"step counts (default {DEFAULT_STEPS})")
    parser.add_argument("--concurrency", default=DEFAULT_CONCURRENCY, metavar="N[:R],...",
                        help=f"builds at once (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--only", default=",".join(CURVES),
                        help="comma-separated subset of files,steps,concurrency")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS,
                        help=f"repetitions of a point without :R (default {DEFAULT_REPS})")
    parser.add_argument("--engines", default=",".join(ENGINE_NAMES),
                        help="comma-separated subset of pybk,pybkd,buildkit")
    parser.add_argument("--json", metavar="OUT", help="write every measurement as JSON")
    parser.add_argument("--plot-dir", metavar="DIR",
                        help="write files.png, steps.png, concurrency.png, memory.png")
    parser.add_argument("--replot", metavar="JSON",
                        help="no run: print the tables (and --plot-dir plots) of an earlier "
                             "--json output")
    parser.add_argument("--sample-interval", type=float, default=0.1, metavar="SECONDS",
                        help="how often the daemons' memory is sampled (default 0.1)")
    parser.add_argument("--workdir", help="where engines keep state (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-install", action="store_true", help="do not run apt-get")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = (set(args.engines) - set(ENGINE_NAMES)) | (set(args.only) - set(CURVES))
    if unknown:
        parser.error(f"unknown engine or curve: {', '.join(sorted(unknown))}")
    if args.reps < 1 or args.sample_interval <= 0:
        parser.error("--reps must be at least 1 and --sample-interval positive")
    try:
        for curve in CURVES:
            setattr(args, curve, parse_points(getattr(args, curve), args.reps))
    except ValueError as e:
        parser.error(str(e))
    args.only = [c for c in CURVES if c in args.only and getattr(args, c)]
    # what Bench reads and the curves do not choose
    args.buildah_jobs, args.baseline, args.pybk_base, args.skip = 3, None, "registry", set()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            report = json.load(f)
        print(curvereport.render(report))
        if args.plot_dir:
            curvereport.plot(report, args.plot_dir, log)
        return 0
    if os.geteuid() != 0:
        log("bench/curves needs root (runc, dockerd, apt-get)")
        return 2

    bench = CurveBench(args)
    began = time.monotonic()

    def report() -> None:
        if bench.sampler:
            bench.sampler.stop()
        if bench.results or bench.batches:
            out = bench.report()
            out["duration_s"] = round(time.monotonic() - began, 1)
            print(curvereport.render(out))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
            if args.plot_dir:
                curvereport.plot(out, args.plot_dir, log)
        log(f"took {time.monotonic() - began:.0f} s")

    return run_to_the_end(bench, report)


if __name__ == "__main__":
    sys.exit(main())
