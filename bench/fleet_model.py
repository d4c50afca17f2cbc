"""A fleet of pybkd nodes, simulated: how many nodes a build load needs.

A discrete-event simulation (standard library only, seeded): builds arrive as a Poisson
stream (``--rate`` builds per hour), each of one of ``--projects`` projects drawn with
Zipf popularity (exponent ``--zipf``); a build is routed to one of the nodes — ``sticky``
(rendezvous hashing of the project over the node names, as ``pybk build --builder`` does) or
``random`` — and waits in that node's queue for one of its ``--slots`` build slots. A node
has ``--cores`` cores shared by the builds in their CPU phase (processor sharing, one core
at most per build). What a build costs depends on what its node holds:

- a build is of the project's newest version; with probability ``--change`` it brings a
  new one (a commit). A node that built this version has every step cached; one that built
  an older version runs the changed steps (``changed``: the dependency step is cached);
- the node never built it but the shared cache has it (on unless ``--no-shared-cache``): its
  cache (``--cache-mb``) is imported at ``--import-mbps`` first, then as above (a node
  with an older version imports what the newer one added, ``--delta-mb``, and has every
  step cached);
- neither: ``cold`` (every step runs).

Each build then spends ``--overhead`` seconds outside the CPU (client, session, solve) and,
with a shared cache, exports what it made at ``--export-mbps`` (a cold build the project's
cache, a changed one ``--delta-mb``). Stores are never pruned. The defaults come from
measurements on this repository's machine (:data:`MEASURED`; ``--from-bench`` takes the CPU
seconds and the overhead from another bench/fleet.py JSON); ``--work-scale`` multiplies the
measured CPU seconds and MB to model projects bigger than the benchmark's. A cache enters
the shared cache when its build starts (not when its export ends), and the shared cache is
one store the whole fleet reaches at the same speed.

For 1..``--max-nodes`` nodes it prints CPU utilisation, queueing delay and build latency
(p50/p95), the share of builds that were cold, that had every step cached, that imported
from the shared cache, the store MB of the fullest node and the shared cache's MB, and the fewest nodes whose p95 queueing is
under ``--target-queue`` seconds; ``--compare-random`` adds random routing beside sticky.

    python bench/fleet_model.py [--rate 300] [--max-nodes 6] [--json OUT]
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import hashlib
import heapq
import json
import random
import sys
from collections import deque
from typing import Any

#: Figures measured on 2026-12-06 (docs/scale-out.md, "Sizing a fleet"): the CPU seconds and
#: the overhead are medians of the 16 builds of each kind in docs/bench/fleet-2026-12-06-c1.json
#: (``bench/fleet.py --clients 1 --shared-cache s3``: every build alone on its node; they
#: include the daemon's S3 cache import and export); the MB/s are moto S3's on 127.0.0.1 from
#: ``bench/cache_bench.py --size 50 --backends s3,local``; the MB are that run's shared cache
#: (1.05 MB for four projects, the 1 MB base layer included) — the benchmark's layers are tiny.
MEASURED = {
    "cpu_cold": 3.63,       # daemon CPU seconds of a cold build
    "cpu_changed": 1.16,    # … of a build whose source file changed (dependency step cached)
    "cpu_unchanged": 0.70,  # … of a build with every step cached
    "overhead": 0.31,       # wall seconds of a build beyond its daemon CPU (client, session)
    "import_mbps": 65.0,    # S3 import, MB/s (65 in both runs)
    "export_mbps": 57.0,    # S3 export, MB/s (59 and 56 in two runs)
    "cache_mb": 0.26,       # a project's cache (its layers and its share of the base), MB
    "delta_mb": 0.005,      # what a changed build adds, MB
}


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything one simulation depends on."""

    rate: float = 300.0            # builds per hour
    projects: int = 40
    zipf: float = 1.0
    change: float = 0.6            # share of builds with a changed source
    nodes: int = 1
    cores: int = 4
    slots: int = 4                 # builds a node runs at once
    routing: str = "sticky"
    shared_cache: bool = True
    cpu_cold: float = MEASURED["cpu_cold"]
    cpu_changed: float = MEASURED["cpu_changed"]
    cpu_unchanged: float = MEASURED["cpu_unchanged"]
    overhead: float = MEASURED["overhead"]
    import_mbps: float = MEASURED["import_mbps"]
    export_mbps: float = MEASURED["export_mbps"]
    cache_mb: float = MEASURED["cache_mb"]
    delta_mb: float = MEASURED["delta_mb"]
    hours: float = 8.0
    warmup_hours: float = 1.0
    seed: int = 1


@dataclasses.dataclass
class Build:
    id: int
    project: int
    arrival: float
    changed: bool
    version: int = 0
    cpu: float = 0.0
    cached: bool = False           # every step cached (locally or from the shared cache)
    node: int = -1
    start: float = 0.0
    finish: float = 0.0
    source: str = ""               # cold / local / shared
    phases: list = dataclasses.field(default_factory=list)


class Node:
    def __init__(self, index: int, cores: int):
        self.index = index
        self.cores = cores
        self.queue: deque[Build] = deque()
        self.busy = 0               # slots in use
        self.cpu_jobs: dict[int, float] = {}  # build id -> CPU seconds left
        self.last = 0.0
        self.version = 0            # bumps when the CPU set changes: older events are stale
        self.core_seconds = 0.0
        self.projects: dict[int, int] = {}  # project -> newest version built or imported
        self.store_mb = 0.0

    def rate(self) -> float:
        n = len(self.cpu_jobs)
        return min(1.0, self.cores / n) if n else 0.0

    def advance(self, now: float) -> None:
        dt = now - self.last
        if dt > 0 and self.cpu_jobs:
            r = self.rate()
            for key in self.cpu_jobs:
                self.cpu_jobs[key] -= dt * r
            self.core_seconds += dt * min(len(self.cpu_jobs), self.cores)
        self.last = now


def rendezvous(project: int, nodes: int) -> int:
    """The node of highest SHA-256 score for the project, as ``pybk build --builder`` routes."""
    key = f"/src/project{project}".encode()
    return max(range(nodes), key=lambda n: hashlib.sha256(key + b"\0" + b"node%d" % n).digest())


def zipf_weights(n: int, s: float) -> list[float]:
    weights = [1.0 / (k ** s) for k in range(1, n + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def simulate(inp: Inputs) -> dict:
    """Run one simulation; returns its figures (measured after the warm-up)."""
    return Simulation(inp).run()


class Simulation:
    """One fleet, one arrival stream: events in a heap of ``(time, seq, kind, payload)``."""

    def __init__(self, inp: Inputs):
        if inp.nodes < 1 or inp.cores < 1 or inp.slots < 1 or inp.projects < 1:
            raise ValueError("nodes, cores, slots and projects must be at least 1")
        self.inp = inp
        self.route_rng = random.Random(inp.seed + 1)
        self.horizon = inp.hours * 3600.0
        self.warmup = inp.warmup_hours * 3600.0
        self.nodes = [Node(i, inp.cores) for i in range(inp.nodes)]
        self.shared: dict[int, int] = {}     # project -> newest version in the shared cache
        self.shared_mb = 0.0
        self.versions = [0] * inp.projects
        self.events: list = []
        self.seq = 0
        self.done: list[Build] = []
        self.running: dict[int, Build] = {}
        self.in_system = 0
        self.area = 0.0                      # integral of builds in the system, the window
        self.last_t = self.warmup
        self._arrivals()

    def _arrivals(self) -> None:
        """The whole arrival stream, from the seed alone: the same for every fleet."""
        inp = self.inp
        rng = random.Random(inp.seed)
        cumulative = []
        acc = 0.0
        for w in zipf_weights(inp.projects, inp.zipf):
            acc += w
            cumulative.append(acc)
        t, count, lam = 0.0, 0, inp.rate / 3600.0
        while lam > 0:
            t += rng.expovariate(lam)
            if t >= self.horizon:
                break
            project = min(bisect.bisect_left(cumulative, rng.random()), inp.projects - 1)
            changed = rng.random() < inp.change
            self.push(t, "arrive", Build(id=count, project=project, arrival=t, changed=changed))
            count += 1

    def push(self, t: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def account(self, now: float) -> None:
        if now > self.warmup:
            self.area += self.in_system * (now - max(self.last_t, self.warmup))
            self.last_t = now

    def plan(self, build: Build, node: Node) -> None:
        """The build's phases, from what its node and the shared cache hold."""
        inp = self.inp
        have = node.projects.get(build.project, -1)
        cached = self.shared.get(build.project, -1) if inp.shared_cache else -1
        v = build.version
        imported = 0.0
        if have >= v:                       # this node built this version: all cached
            build.source, cpu, made = "local", inp.cpu_unchanged, 0.0
        elif cached >= v:                   # another node built it: its steps from the cache
            build.source, cpu, made = "shared", inp.cpu_unchanged, 0.0
            imported = inp.delta_mb if have >= 0 else inp.cache_mb
        elif have >= 0:                     # an older version here: the changed steps run
            build.source, cpu, made = "local", inp.cpu_changed, inp.delta_mb
        elif cached >= 0:                   # an older version in the cache
            build.source, cpu, made = "shared", inp.cpu_changed, inp.delta_mb
            imported = inp.cache_mb
        else:
            build.source, cpu, made = "cold", inp.cpu_cold, inp.cache_mb
        build.cpu = cpu
        build.cached = made == 0.0 and build.source != "cold"
        phases = []
        if imported:
            phases.append(("io", imported / inp.import_mbps))
        node.store_mb += imported + made
        node.projects[build.project] = max(have, v)
        phases.append(("io", inp.overhead))
        phases.append(("cpu", cpu))
        if inp.shared_cache and made:
            phases.append(("io", made / inp.export_mbps))
            self.shared[build.project] = max(cached, v)
            self.shared_mb += made
        build.phases = phases

    def start(self, build: Build, node: Node, now: float) -> None:
        node.busy += 1
        build.start = now
        self.plan(build, node)
        self.next_phase(build, node, now)

    def next_phase(self, build: Build, node: Node, now: float) -> None:
        while build.phases:
            kind, amount = build.phases.pop(0)
            if amount <= 0:
                continue
            if kind == "io":
                self.push(now + amount, "io", (build, node))
            else:
                node.advance(now)
                node.cpu_jobs[build.id] = amount
                self.running[build.id] = build
                self.reschedule(node, now)
            return
        build.finish = now
        self.account(now)
        self.in_system -= 1
        self.done.append(build)
        node.busy -= 1
        if node.queue:
            self.start(node.queue.popleft(), node, now)

    def reschedule(self, node: Node, now: float) -> None:
        """The next CPU completion on ``node``; earlier ones scheduled become stale."""
        node.version += 1
        if node.cpu_jobs:
            key = min(node.cpu_jobs, key=node.cpu_jobs.__getitem__)
            self.push(now + max(node.cpu_jobs[key], 0.0) / node.rate(), "cpu",
                      (node, node.version))

    def arrive(self, build: Build, now: float) -> None:
        if build.changed:                   # a new commit of the project, built now
            self.versions[build.project] += 1
        build.version = self.versions[build.project]
        self.account(now)
        self.in_system += 1
        if self.inp.routing == "sticky":
            index = rendezvous(build.project, self.inp.nodes)
        else:
            index = self.route_rng.randrange(self.inp.nodes)
        node = self.nodes[index]
        build.node = index
        if node.busy < self.inp.slots:
            self.start(build, node, now)
        else:
            node.queue.append(build)

    def cpu_done(self, node: Node, version: int, now: float) -> None:
        if version != node.version:
            return
        node.advance(now)
        finished = [k for k, left in node.cpu_jobs.items() if left <= 1e-9]
        for k in finished:
            del node.cpu_jobs[k]
        self.reschedule(node, now)
        for k in finished:
            self.next_phase(self.running.pop(k), node, now)

    def run(self) -> dict:
        while self.events:
            now, _, kind, payload = heapq.heappop(self.events)
            if kind == "arrive":
                self.arrive(payload, now)
            elif kind == "io":
                self.next_phase(payload[0], payload[1], now)
            else:
                self.cpu_done(payload[0], payload[1], now)
        return self.report()

    def report(self) -> dict:
        inp, nodes = self.inp, self.nodes
        end = max([b.finish for b in self.done] + [self.horizon])
        for node in nodes:
            node.advance(end)
        self.account(end)
        window = [b for b in self.done if b.arrival >= self.warmup]
        queue = [b.start - b.arrival for b in window]
        latency = [b.finish - b.arrival for b in window]
        span = end - self.warmup
        n = len(window) or 1
        return {
            "nodes": inp.nodes, "routing": inp.routing, "builds": len(window),
            "utilisation": round(sum(x.core_seconds for x in nodes)
                                 / (inp.cores * inp.nodes * end), 4),
            "queue_p50_s": round(quantile(queue, 0.5), 3),
            "queue_p95_s": round(quantile(queue, 0.95), 3),
            "latency_p50_s": round(quantile(latency, 0.5), 3),
            "latency_p95_s": round(quantile(latency, 0.95), 3),
            "latency_mean_s": round(sum(latency) / n, 4),
            "in_system_mean": round(self.area / span, 4),
            "throughput_per_s": round(len(window) / span, 6),
            "cold": round(sum(b.source == "cold" for b in window) / n, 4),
            "all_cached": round(sum(b.cached for b in window) / n, 4),
            "from_shared": round(sum(b.source == "shared" for b in window) / n, 4),
            "cpu_s_per_build": round(sum(b.cpu for b in window) / n, 4),
            "store_mb_per_node_max": round(max(x.store_mb for x in nodes), 2),
            "store_mb_total": round(sum(x.store_mb for x in nodes), 2),
            "shared_cache_mb": round(self.shared_mb, 2),
        }


def sweep(base: Inputs, max_nodes: int, routings: list[str]) -> list[dict]:
    return [simulate(dataclasses.replace(base, nodes=m, routing=r))
            for m in range(1, max_nodes + 1) for r in routings]


def smallest(rows: list[dict], target: float, routing: str) -> int | None:
    for row in rows:
        if row["routing"] == routing and row["queue_p95_s"] < target:
            return row["nodes"]
    return None


def from_bench(path: str) -> dict:
    """Model inputs from a bench/fleet.py JSON: the median daemon CPU seconds of each kind of
    build and the wall seconds beyond them, from the builds that had their node alone."""
    with open(path) as f:
        data = json.load(f)
    builds = [b for run in data["runs"] for b in run["builds"]
              if b.get("ok") and not b.get("overlapped")]
    out = {}
    for kind, key in (("cold", "cpu_cold"), ("changed", "cpu_changed"),
                      ("unchanged", "cpu_unchanged")):
        cpu = [b["node_cpu_s"] for b in builds if b["kind"] == kind]
        if not cpu:
            raise ValueError(f"{path}: no {kind} build ran alone on its node")
        out[key] = quantile(cpu, 0.5)
    out["overhead"] = max(0.0, quantile([b["latency_s"] - b["node_cpu_s"] for b in builds], 0.5))
    return out


def print_rows(rows: list[dict], inp: Inputs, target: float) -> None:
    print(f"{inp.rate:g} builds/h, {inp.projects} projects (Zipf {inp.zipf:g}), "
          f"change {inp.change:g}, {inp.cores} cores and {inp.slots} slots per node, "
          f"shared cache {'on' if inp.shared_cache else 'off'}, {inp.hours:g} h "
          f"(first {inp.warmup_hours:g} h not counted), seed {inp.seed}")
    print(f"{'nodes':>5} {'routing':<7} {'util':>5} {'queue p50':>9} {'p95':>7} "
          f"{'latency p50':>11} {'p95':>7} {'cold':>5} {'cached':>6} {'shared':>6} "
          f"{'store MB/node':>13} {'shared MB':>9}")
    for r in rows:
        print(f"{r['nodes']:>5} {r['routing']:<7} {r['utilisation']:5.2f} "
              f"{r['queue_p50_s']:9.2f} {r['queue_p95_s']:7.2f} {r['latency_p50_s']:11.2f} "
              f"{r['latency_p95_s']:7.2f} {r['cold']:5.2f} {r['all_cached']:6.2f} "
              f"{r['from_shared']:6.2f} {r['store_mb_per_node_max']:13.1f} "
              f"{r['shared_cache_mb']:9.1f}")
    for routing in sorted({r["routing"] for r in rows}):
        m = smallest(rows, target, routing)
        print(f"{routing}: fewest nodes with p95 queueing < {target:g} s: "
              f"{m if m is not None else 'more than ' + str(max(r['nodes'] for r in rows))}")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Inputs]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Inputs()
    p.add_argument("--rate", type=float, default=d.rate, help="builds per hour")
    p.add_argument("--projects", type=int, default=d.projects)
    p.add_argument("--zipf", type=float, default=d.zipf, help="popularity exponent")
    p.add_argument("--change", type=float, default=d.change,
                   help="share of builds with a changed source (0..1)")
    p.add_argument("--cores", type=int, default=d.cores)
    p.add_argument("--slots", type=int, default=d.slots, help="builds at once per node")
    p.add_argument("--max-nodes", type=int, default=6)
    p.add_argument("--routing", choices=("sticky", "random"), default="sticky")
    p.add_argument("--compare-random", action="store_true",
                   help="simulate random routing beside --routing sticky")
    p.add_argument("--no-shared-cache", action="store_true")
    for name in ("cpu-cold", "cpu-changed", "cpu-unchanged", "overhead", "import-mbps",
                 "export-mbps", "cache-mb", "delta-mb"):
        key = name.replace("-", "_")
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"default {MEASURED[key]:g} (measured) or from --from-bench")
    p.add_argument("--from-bench", metavar="FLEET_JSON",
                   help="take the CPU seconds and the overhead from a bench/fleet.py JSON")
    p.add_argument("--work-scale", type=float, default=1.0,
                   help="multiply the measured CPU seconds, cache MB and delta MB (bigger "
                        "projects); values given with their flags are taken as they are")
    p.add_argument("--hours", type=float, default=d.hours)
    p.add_argument("--warmup-hours", type=float, default=d.warmup_hours)
    p.add_argument("--target-queue", type=float, default=30.0,
                   help="p95 queueing target in seconds (default 30)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", help="write the inputs and every row to this file")
    ns = p.parse_args(argv)
    for name in ("projects", "cores", "slots", "max_nodes"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= ns.change <= 1:
        p.error("--change is a share between 0 and 1")
    if ns.rate < 0 or ns.hours <= 0 or not 0 <= ns.warmup_hours < ns.hours:
        p.error("--rate ≥ 0, --hours > 0 and 0 ≤ --warmup-hours < --hours")
    if ns.work_scale <= 0:
        p.error("--work-scale must be positive")
    if ns.compare_random and ns.routing != "sticky":
        p.error("--compare-random compares with sticky routing: leave --routing out")
    values = dict(MEASURED)
    if ns.from_bench:
        try:
            values.update(from_bench(ns.from_bench))
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"--from-bench: {exc}")
    for key in ("cpu_cold", "cpu_changed", "cpu_unchanged", "cache_mb", "delta_mb"):
        values[key] *= ns.work_scale        # the measured figures, not the ones given
    for key in MEASURED:
        given = getattr(ns, key)
        if given is not None:
            if given < 0 or (key.endswith("mbps") and given == 0):
                p.error(f"--{key.replace('_', '-')} must be positive")
            values[key] = given
    inp = Inputs(rate=ns.rate, projects=ns.projects, zipf=ns.zipf, change=ns.change,
                 cores=ns.cores, slots=ns.slots, routing=ns.routing,
                 shared_cache=not ns.no_shared_cache, hours=ns.hours,
                 warmup_hours=ns.warmup_hours, seed=ns.seed, **values)
    return ns, inp


def main(argv: list[str] | None = None) -> int:
    ns, inp = parse(argv)
    routings = [inp.routing] + (["random"] if ns.compare_random else [])
    rows = sweep(inp, ns.max_nodes, routings)
    print_rows(rows, inp, ns.target_queue)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"inputs": dataclasses.asdict(inp), "target_queue_s": ns.target_queue,
                       "smallest": {r: smallest(rows, ns.target_queue, r) for r in routings},
                       "rows": rows}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
