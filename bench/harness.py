"""Side-by-side build benchmark: pybk, BuildKit (in dockerd) and buildah on the same machine.

Each case (a folder under ``cases/`` with a Dockerfile and a ``context.py`` generator) is built
cold (empty caches), warm (identical rebuild) and after a change (one line appended to one
context file), by every engine in turn, ``--reps`` times. Engines are interleaved within each
run so a busy machine slows all of them alike. The table shows medians in seconds and the
pybk/BuildKit ratio. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from engines import (
    PYBK_BASES,
    BaseImage,
    BuildRequest,
    Engine,
    EngineFailure,
    FileServer,
    Registry,
    make_engines,
    remove_tree,
    run_checked,
)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
CASES_DIR = os.path.join(BENCH_DIR, "cases")
PHASES = ("cold", "warm", "change")
ENGINE_NAMES = ("pybk", "pybkd", "pybkd-tcp", "buildkit", "buildah")
# Debian package -> a file it installs; an engine whose package is missing is skipped.
PACKAGES = {
    "docker.io": "/usr/sbin/dockerd",
    "buildah": "/usr/bin/buildah",
    "docker-registry": "/usr/bin/docker-registry",
    "skopeo": "/usr/bin/skopeo",
    "busybox-static": "/bin/busybox",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Case:
    """A case folder: its Dockerfile, generator module and what a change touches."""

    name: str
    folder: str
    description: str
    change_file: str
    base: str
    exports: tuple
    module: object
    network: bool = False  # RUN steps use the engine's default network
    rerun: bool = False  # every build passes a new RUN_ID build arg: its RUN steps always run

    @property
    def serves(self) -> bool:
        """The case's steps fetch files the harness serves (``serve(directory)``)."""
        return hasattr(self.module, "serve")

    @property
    def variants(self) -> list[str | None]:
        return list(self.exports) or [None]

    def row_name(self, variant: str | None) -> str:
        return f"{self.name} ({variant})" if variant else self.name


def load_case(name: str) -> Case:
    folder = os.path.join(CASES_DIR, name)
    spec = importlib.util.spec_from_file_location(f"bench_case_{name.replace('-', '_')}",
                                                  os.path.join(folder, "context.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Case(name, folder, module.DESCRIPTION, module.CHANGE_FILE,
                getattr(module, "BASE", "busybox"), tuple(getattr(module, "EXPORTS", ())),
                module, bool(getattr(module, "NETWORK", False)),
                bool(getattr(module, "RERUN", False)))


def all_case_names() -> list[str]:
    order = ["noop-rebuild", "one-file-change", "big-context", "multistage-parallel",
             "unused-stage", "many-steps", "pull-unpack", "export", "run-fetch"]
    present = sorted(d for d in os.listdir(CASES_DIR)
                     if os.path.isfile(os.path.join(CASES_DIR, d, "Dockerfile")))
    return [n for n in order if n in present] + [n for n in present if n not in order]


@dataclass
class Cell:
    """The measurements of one engine for one case, variant and phase."""

    times: list[float] = field(default_factory=list)
    failure: str | None = None
    not_applicable: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def install_packages(packages: dict[str, str] = PACKAGES) -> dict[str, str]:
    """apt-get install what is missing of ``packages`` ({package: a file it installs});
    return {package: reason} for those that failed."""
    failed: dict[str, str] = {}
    updated = False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for package, marker in packages.items():
        if os.path.exists(marker):
            continue
        log(f"installing {package} ...")
        for attempt in range(2):
            proc = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode == 0 and os.path.exists(marker):
                break
            if attempt == 0 and not updated:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
                updated = True
                continue
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            failed[package] = (lines[-1] if lines else f"exit {proc.returncode}")[:200]
            log(f"  could not install {package}: {failed[package]}")
            break
    return failed


class Bench:
    """One benchmark run: services, engines, contexts and the results table."""

    #: the Debian packages the run installs when they are missing
    packages = PACKAGES

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="pybk-bench-", dir="/var/tmp")
        os.makedirs(self.workdir, exist_ok=True)
        self.engines: list[Engine] = []  # made by set_up, once packages are installed
        self.cases = [load_case(name) for name in args.cases]
        self.registry: Registry | None = None
        self.bases: dict[str, BaseImage] = {}
        self.started: list[Engine] = []
        self.results: dict[tuple, Cell] = {}
        self.notes: dict[str, str] = {}
        self.file_server: FileServer | None = None
        self.fetches: dict[str, int] = {}  # case -> files one build must fetch

    # set-up ---------------------------------------------------------------------------------

    def mark_unavailable(self, engine_names: tuple, reason: str) -> None:
        for engine in self.engines:
            if engine.name in engine_names and not engine.unavailable:
                engine.unavailable = reason

    def registry_users(self) -> tuple[str, ...]:
        """The engines that pull ``FROM`` from the local registry."""
        return tuple(e.name for e in self.engines if e.uses_registry)

    def set_up(self) -> None:
        failed_packages = {} if self.args.no_install else install_packages(self.packages)
        self.engines = make_engines(self.args.engines, self.args.buildah_jobs,
                                    network=any(case.network for case in self.cases),
                                    baseline_dir=self.args.baseline,
                                    pybk_base=self.args.pybk_base)
        for package, reason in failed_packages.items():
            users = {"docker.io": ("buildkit",), "buildah": ("buildah",),
                     "docker-registry": self.registry_users(),
                     "skopeo": self.registry_users(),
                     "busybox-static": tuple(e.name for e in self.engines)}[package]
            self.mark_unavailable(users, f"apt-get install {package} failed: {reason}")
        self.make_bases()
        for engine in self.engines:
            if engine.unavailable:
                log(f"{engine.label}: skipped ({engine.unavailable})")
                continue
            try:
                engine.start(os.path.join(self.workdir, engine.name), self.registry)
                self.started.append(engine)
            except EngineFailure as e:
                engine.unavailable = f"could not start: {e}"
                log(f"{engine.label}: skipped ({engine.unavailable})")
        self.start_file_server()

    def start_file_server(self) -> None:
        """Serve the files of the cases that fetch some, on every started engine's gateway
        address (the only addresses their steps are given)."""
        serving = [case for case in self.cases if case.serves]
        if not serving:
            return
        directory = os.path.join(self.workdir, "served")
        os.makedirs(directory, exist_ok=True)
        for case in serving:
            self.fetches[case.name] = case.module.serve(directory)
        gateways = sorted({g for g in (e.gateway() for e in self.started) if g})
        self.file_server = FileServer(directory)
        self.file_server.start(gateways)
        log(f"serving {directory} on port {self.file_server.port} of {', '.join(gateways)}")

    def make_bases(self) -> None:
        layouts = os.path.join(self.workdir, "layouts")
        os.makedirs(layouts, exist_ok=True)
        busybox = os.path.join(layouts, "busybox")
        try:
            run_checked([sys.executable, os.path.join(REPO_DIR, "examples", "busybox_layout.py"),
                         busybox])
        except EngineFailure as e:
            self.mark_unavailable(ENGINE_NAMES, f"no busybox base image: {e}")
            return
        layouts_by_name = {"busybox": busybox}
        if any(case.base == "bigbase" for case in self.cases):
            log("making the 200 MB base image ...")
            big = os.path.join(layouts, "bigbase")
            spec = importlib.util.spec_from_file_location(
                "bench_base_image", os.path.join(CASES_DIR, "pull-unpack", "base_image.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.build(big, busybox)
            layouts_by_name["bigbase"] = big
        refs = {name: "" for name in layouts_by_name}
        needs_registry = any(e.uses_registry and not e.unavailable for e in self.engines)
        if needs_registry:
            try:
                self.registry = Registry(os.path.join(self.workdir, "registry"))
                self.registry.start()
                for name, layout in layouts_by_name.items():
                    refs[name] = self.registry.push_layout(layout, name)
            except EngineFailure as e:
                self.mark_unavailable(self.registry_users(), f"local registry: {e}")
        self.bases = {name: BaseImage(name, layout, refs[name])
                      for name, layout in layouts_by_name.items()}

    def make_context(self, case: Case) -> tuple[str, bytes]:
        ctx = os.path.join(self.workdir, "contexts", case.name)
        remove_tree(ctx)
        os.makedirs(ctx)
        case.module.generate(ctx)
        shutil.copy(os.path.join(case.folder, "Dockerfile"), os.path.join(ctx, "Dockerfile"))
        with open(os.path.join(ctx, case.change_file), "rb") as f:
            return ctx, f.read()

    # runs -----------------------------------------------------------------------------------

    def cell(self, case: Case, variant, phase: str, engine: Engine) -> Cell:
        return self.results.setdefault((case.row_name(variant), phase, engine.name), Cell())

    def run(self) -> None:
        for case in self.cases:
            self.run_case(case, self.args.reps)

    def run_case(self, case: Case, reps: int) -> None:
        """``reps`` rounds of cold, warm and change builds of one case, engines in turn."""
        active = [e for e in self.engines if not e.unavailable]
        log(f"== {case.name}: {case.description}")
        try:
            ctx, original = self.make_context(case)
        except Exception as e:  # a broken case must not stop the others
            reason = f"case set-up failed: {type(e).__name__}: {e}"
            log(f"  {reason}")
            for variant in case.variants:
                for phase in PHASES:
                    for engine in active:
                        self.cell(case, variant, phase, engine).failure = reason
            return
        change_path = os.path.join(ctx, case.change_file)
        for variant in case.variants:
            failed: dict[str, str] = {}
            for rep in range(reps):
                with open(change_path, "wb") as f:
                    f.write(original)
                shift = rep % len(active) if active else 0
                order = active[shift:] + active[:shift]
                for phase in PHASES:
                    if phase == "change":
                        with open(change_path, "a") as f:
                            f.write(f"changed in run {rep + 1}\n")
                    for engine in order:
                        self.measure(case, variant, phase, engine, ctx, rep, failed)

    def measure(self, case: Case, variant, phase: str, engine: Engine, ctx: str, rep: int,
                failed: dict[str, str]) -> None:
        cell = self.cell(case, variant, phase, engine)
        out = os.path.join(self.workdir, "out", engine.name, case.name)
        build_args = []
        if case.serves and self.file_server and engine.gateway():
            build_args.append(("FETCH_URL", self.file_server.url(engine.gateway())))
        if case.rerun:
            build_args.append(("RUN_ID", f"{rep + 1}-{phase}"))
        request = BuildRequest(case=case.name, context=ctx,
                               dockerfile=os.path.join(ctx, "Dockerfile"),
                               base=self.bases[case.base], output_dir=out, export=variant,
                               network=case.network, build_args=tuple(build_args))
        reason = engine.unsupported(request)
        if not reason and case.network and not engine.gateway():
            reason = "no default network for RUN steps"
        if f"{engine.name}:{case.name}" in self.args.skip:
            reason = "left out of this run (--skip)"
        if reason:
            cell.not_applicable = reason
            return
        if engine.name in failed:
            cell.failure = cell.failure or failed[engine.name]
            return
        try:
            if phase == "cold":
                engine.reset()
            remove_tree(out)
            os.makedirs(out)
            served = self.file_server.served if self.file_server else 0
            seconds = engine.build(request)
            if case.name in self.fetches:
                fetched = self.file_server.served - served
                if fetched != self.fetches[case.name]:
                    raise EngineFailure(f"the build fetched {fetched} files, not "
                                        f"{self.fetches[case.name]}")
        except EngineFailure as e:
            message = re.sub(r"store-\d+", "store", str(e).replace(self.workdir, "WORKDIR"))
            message = f"{phase} build failed: {message}" if phase != "cold" else message
            cell.failure = message
            failed[engine.name] = f"not run: {phase} build failed"
            log(f"  {case.row_name(variant)} {phase} #{rep + 1} {engine.label}: FAILED {e}")
            return
        cell.times.append(seconds)
        log(f"  {case.row_name(variant)} {phase} #{rep + 1} {engine.label}: {seconds:.2f} s")

    # results --------------------------------------------------------------------------------

    def rows(self):
        for case in self.cases:
            for variant in case.variants:
                for phase in PHASES:
                    yield case, variant, phase

    def text_for(self, cell: Cell | None, engine: Engine, footnotes: dict[str, int]) -> str:
        def note(text: str) -> str:
            key = f"{engine.label}: {text}"
            footnotes.setdefault(key, len(footnotes) + 1)
            return f"[{footnotes[key]}]"

        if engine.unavailable:
            return "n/a " + note(engine.unavailable)
        if cell is None:
            return "–"
        if cell.not_applicable:
            return "n/a " + note(cell.not_applicable)
        if cell.failure and not cell.times:
            return "failed " + note(cell.failure)
        text = f"{cell.median:.2f}"
        if cell.failure:
            text += " " + note(cell.failure)
        return text

    def table(self) -> str:
        footnotes: dict[str, int] = {}
        labels = [e.label for e in self.engines]
        by_name = {e.name: e for e in self.engines}
        ratios = [n for n in ("pybk", "pybkd", "pybkd-tcp", "pybk-base", "pybkd-base")
                  if n in by_name] if "buildkit" in by_name else []
        header = ["case", "run", *labels] + [f"{by_name[n].label} / BuildKit" for n in ratios]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for case, variant, phase in self.rows():
            row_name = case.row_name(variant)
            cells = {e.name: self.results.get((row_name, phase, e.name)) for e in self.engines}
            row = [row_name, phase] + [self.text_for(cells[e.name], e, footnotes)
                                       for e in self.engines]
            for name in ratios:
                mine, theirs = cells[name], cells["buildkit"]
                if mine and theirs and mine.median is not None and theirs.median:
                    row.append(f"{mine.median / theirs.median:.2f}")
                else:
                    row.append("–")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += [f"[{n}] {text}" for text, n in footnotes.items()]
        return "\n".join(lines)

    def versions(self) -> dict[str, str]:
        return {e.name: (e.version() if e in self.started else f"n/a ({e.unavailable})")
                for e in self.engines}

    def report(self) -> dict:
        cells = []
        for case, variant, phase in self.rows():
            for engine in self.engines:
                cell = self.results.get((case.row_name(variant), phase, engine.name))
                cells.append({
                    "case": case.name, "variant": variant, "phase": phase,
                    "engine": engine.name, "times": cell.times if cell else [],
                    "median": cell.median if cell else None,
                    "failure": cell.failure if cell else None,
                    "not_applicable": (engine.unavailable
                                       or (cell.not_applicable if cell else None)),
                })
        return {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                        "python": platform.python_version()},
            "reps": self.args.reps, "pybk_base": self.args.pybk_base,
            "versions": self.versions(), "cells": cells,
        }

    def plot(self, path: str) -> None:
        plot_report(self.report(), path)

    def clean_up(self) -> None:
        for engine in reversed(self.started):
            try:
                engine.stop()
            except Exception as e:  # clean-up goes on whatever one engine does
                log(f"stopping {engine.label}: {e}")
        if self.registry:
            self.registry.stop()
        if self.file_server:
            self.file_server.stop()
            log("files served, by client address: " + ", ".join(
                f"{client}: {n}" for client, n in sorted(self.file_server.clients.items())))
        if not self.args.keep:
            remove_tree(self.workdir)


def ratio_series(report: dict) -> tuple[list[str], dict[str, list[float]]]:
    """From a ``--json`` report: the row labels that have a BuildKit median and, for every
    other engine, its median over BuildKit's per row (NaN where it has none)."""
    medians: dict[tuple, float | None] = {}
    rows: list[tuple] = []
    engines: list[str] = []
    for cell in report["cells"]:
        row = (cell["case"], cell["variant"], cell["phase"])
        if row not in rows:
            rows.append(row)
        if cell["engine"] not in engines:
            engines.append(cell["engine"])
        medians[(*row, cell["engine"])] = cell["median"]
    others = [e for e in engines if e != "buildkit"]
    labels: list[str] = []
    series: dict[str, list[float]] = {e: [] for e in others}
    for case, variant, phase in rows:
        base = medians.get((case, variant, phase, "buildkit"))
        if not base:
            continue
        labels.append(f"{case if variant is None else f'{case} ({variant})'} {phase}")
        for e in others:
            value = medians.get((case, variant, phase, e))
            series[e].append(value / base if value is not None else float("nan"))
    return labels, series


def plot_report(report: dict, path: str) -> None:
    """Bars of each engine's median over BuildKit's, per case and run, from a ``--json``
    report (``bench/run --replot REPORT --plot PNG`` draws an earlier run again)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    labels, series = ratio_series(report)
    if not labels:
        log("no BuildKit numbers: no plot")
        return
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.45), 5))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("median time / BuildKit's (log scale; 1 = as fast)")
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.legend()
    ax.set_title("Build time relative to BuildKit 0.8 (dockerd 20.10); missing bar = n/a")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Build benchmark: pybk side by side with BuildKit and buildah.")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per cell (default 5)")
    parser.add_argument("--engines", default=",".join(ENGINE_NAMES),
                        help="comma-separated subset of pybk,pybkd,buildkit,buildah")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--json", metavar="OUT", help="write every measurement as JSON")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of ratios to BuildKit")
    parser.add_argument("--replot", metavar="REPORT",
                        help="draw --plot from an earlier run's --json report; build nothing")
    parser.add_argument("--buildah-jobs", type=int, default=3,
                        help="buildah --jobs (stages built in parallel; default 3)")
    parser.add_argument("--workdir", help="where engines keep state (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-install", action="store_true", help="do not run apt-get")
    parser.add_argument("--skip", default="", metavar="ENGINE:CASE,...",
                        help="cells not to run (e.g. buildah:many-steps); they read n/a")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run pybk and pybkd with the pybk/pybkd executables in DIR "
                             "(another pybk, e.g. the previous release) in the same rotation")
    parser.add_argument("--pybk-base", choices=PYBK_BASES, default="registry",
                        help="where pybk/pybkd get FROM: 'registry' (default: the local "
                             "registry, like BuildKit and buildah, result tagged bench-CASE) "
                             "or 'layout' (the old command line: an OCI-layout named context, "
                             "nothing tagged; columns labelled [layout])")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engines) - set(ENGINE_NAMES)
    names = all_case_names()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()] or names
    unknown |= set(args.cases) - set(names)
    if unknown:
        parser.error(f"unknown engine or case: {', '.join(sorted(unknown))}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        if not args.plot:
            log("--replot needs --plot PNG")
            return 2
        with open(args.replot) as f:
            plot_report(json.load(f), args.plot)
        return 0
    if args.list:
        for name in all_case_names():
            print(f"{name:22} {load_case(name).description}")
        return 0
    if os.geteuid() != 0:
        log("bench/run needs root (runc, dockerd, buildah, apt-get)")
        return 2

    bench = Bench(args)

    def report() -> None:
        if not bench.results:
            return
        print(bench.table())
        print("\n" + "; ".join(f"{k}: {v}" for k, v in bench.versions().items()))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(bench.report(), f, indent=1)
        if args.plot:
            bench.plot(args.plot)

    return run_to_the_end(bench, report)


def run_to_the_end(bench: Bench, report) -> int:
    """Set up and run ``bench``; on Ctrl-C or SIGTERM stop measuring. Either way ``report()``
    what was measured, then clean up. The exit code: 0, or 130 when interrupted."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    interrupted = False
    try:
        bench.set_up()
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: printing what was measured, then cleaning up")
    finally:
        try:
            report()
        finally:
            bench.clean_up()
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
