#!/usr/bin/env python3
"""What a cached ``pybk build`` imports, and what each import costs.

Builds a one-``COPY`` Dockerfile into a fresh store twice (the second build is fully cached:
the frontend-result cache answers, every step is a cache hit), then runs the same build a
third time under ``python -X importtime`` and prints:

- the total import time (the sum of every module's own time) and the module count;
- the time by package (pybk's by room, ``pybk.core.llb``, ``pybk.core.config`` …; others by
  top-level package), the heaviest first;
- with ``--modules``, every module with its own and cumulative time.

Usage: ``python3 bench/imports.py [--pybk PATH] [--runs N] [--registry] [--modules]
[--json OUT]``. With ``--registry`` the build is the one ``bench/run`` times: ``FROM`` a
busybox image in a local Distribution registry (started by the script; needs
``docker-registry`` and ``skopeo``), a ``RUN`` and ``-t`` (an image export into pybk's store),
so the figures include resolving the tag; without it, ``FROM scratch`` and one ``COPY``.
``--pybk`` is the ``pybk`` executable (default: the one on ``$PATH``). Each figure is the
median over ``--runs`` runs (default 5). ``-X importtime`` adds its own overhead, so compare
figures from this script with each other, not with wall times. Needs no network and no root
(the build runs no step).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_reasons import reason  # noqa: E402  (a file beside this script)

DOCKERFILE = "FROM scratch\nCOPY a.txt /a.txt\n"
REGISTRY_DOCKERFILE = "ARG BASE=busybox\nFROM ${BASE}\nCOPY a.txt /a.txt\nRUN cat /a.txt\n"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
#: runs the pybk script (argv[2:]) as __main__, then writes sys.modules' names to argv[1]
RUN_AND_LIST = (
    "import atexit, runpy, sys\n"
    "out, script = sys.argv[1], sys.argv[2]\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sys.modules)))\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_path(script, run_name='__main__')\n"
)


def group(module: str) -> str:
    """``pybk.core.llb.ops`` → ``pybk.core.llb``; ``pybk.frontends.dockerfile.x`` →
    ``pybk.frontends.dockerfile``; ``asyncio.events`` → ``asyncio``."""
    parts = module.split(".")
    if parts[0] == "pybk":
        return ".".join(parts[:3])
    return parts[0]


def parse(stderr: str) -> dict[str, tuple[int, int]]:
    """``{module: (self µs, cumulative µs)}`` from ``-X importtime`` output."""
    out = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        out[name.strip()] = (int(own), int(cumulative))
    return out


def start_registry(work: str):
    """A Distribution registry holding busybox (bench/engines.py's): ``(registry, ref)``."""
    from engines import Registry, run_checked

    layout = os.path.join(work, "busybox")
    run_checked([sys.executable, os.path.join(os.path.dirname(BENCH_DIR), "examples",
                                              "busybox_layout.py"), layout])
    registry = Registry(os.path.join(work, "registry"))
    registry.start()
    return registry, registry.push_layout(layout, "busybox")


def measure(pybk: str, runs: int, from_registry: bool = False
            ) -> tuple[dict[str, tuple[int, int]], list[int]]:
    work = tempfile.mkdtemp(prefix="pybk-imports-")
    registry = None
    try:
        context = os.path.join(work, "ctx")
        os.makedirs(context)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(REGISTRY_DOCKERFILE if from_registry else DOCKERFILE)
        with open(os.path.join(context, "a.txt"), "w") as f:
            f.write("a\n")
        cmd = [pybk, "--root", os.path.join(work, "store"), "build", "--progress", "quiet",
               "--network", "none", context]
        if from_registry:
            registry, ref = start_registry(work)
            cmd[-1:-1] = ["--build-arg", f"BASE={ref}", "-t", "imports-bench"]
        env = {**os.environ, "PYBK_CONFIG": ""}
        for _ in range(2):
            subprocess.run(cmd, check=True, env=env, stdin=subprocess.DEVNULL)
        samples = []
        loaded_list = os.path.join(work, "loaded")
        for _ in range(runs):
            done = subprocess.run([sys.executable, "-X", "importtime", "-c", RUN_AND_LIST,
                                   loaded_list, *cmd], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, check=True)
            with open(loaded_list) as f:
                loaded = set(f.read().split())
            # -X importtime also lists imports that failed (optional modules probed and absent,
            # modules kept out): only what is in sys.modules at exit was loaded
            sample = {m: t for m, t in parse(done.stderr).items() if m in loaded}
            # an import running while another thread imports gets the other's time taken off
            # its own: the totals would be wrong, so say so
            for module, (own, _) in sample.items():
                if own < 0:
                    print(f"warning: {module}: self time {own} us (imported while another "
                          "thread was importing): the total is too low", file=sys.stderr)
            samples.append(sample)
    finally:
        if registry is not None:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    modules = set().union(*samples)
    medians = {m: (int(statistics.median(s.get(m, (0, 0))[0] for s in samples)),
                   int(statistics.median(s.get(m, (0, 0))[1] for s in samples)))
               for m in modules}
    totals = [sum(own for own, _ in s.values()) for s in samples]
    return medians, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pybk", default=shutil.which("pybk"), help="the pybk executable")
    parser.add_argument("--runs", type=int, default=5, help="runs to take the median of")
    parser.add_argument("--registry", action="store_true",
                        help="FROM a local registry, a RUN and -t, as bench/run builds")
    parser.add_argument("--modules", action="store_true", help="list every module")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not args.pybk:
        parser.error("no pybk on $PATH; give --pybk")
    with open(args.pybk, "rb") as f:
        if b"python" not in f.readline():
            parser.error(f"{args.pybk} is not a Python script (a wrapper such as a pyenv shim? "
                         "give the installed script with --pybk)")
    modules, totals = measure(args.pybk, args.runs, args.registry)
    by_group: collections.Counter[str] = collections.Counter()
    for name, (own, _) in modules.items():
        by_group[group(name)] += own
    ours = [m for m in modules if m.startswith("pybk")]
    what = "cached rebuild FROM a registry tag, with -t" if args.registry else "cached rebuild"
    print(f"{what}: {len(modules)} modules ({len(ours)} of pybk), imports "
          f"{statistics.median(totals) / 1000:.1f} ms (median of {args.runs}; "
          f"{min(totals) / 1000:.1f}-{max(totals) / 1000:.1f})")
    print("\n| package | ms | why |\n|---|---|---|")
    for name, own in by_group.most_common():
        if own >= 500:
            print(f"| {name} | {own / 1000:.1f} | {reason(name, own) or '?'} |")
    if args.modules:
        print("\n| module | own ms | cumulative ms |\n|---|---|---|")
        for name, (own, cumulative) in sorted(modules.items(), key=lambda kv: -kv[1][0]):
            print(f"| {name} | {own / 1000:.2f} | {cumulative / 1000:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"totals_us": totals, "modules": modules, "groups_us": dict(by_group),
                       "unexplained": sorted(g for g, own in by_group.items()
                                             if reason(g, own) is None)},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
