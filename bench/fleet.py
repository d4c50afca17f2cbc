"""Builders of several nodes: the same mix of builds through a 3-node builder and a 1-node one.

Starts a local registry (the busybox base image pushed to it) and, for every configuration
and repetition, fresh ``pybkd`` nodes on 127.0.0.1 (each with its own store, port and mutual
TLS from a CA of its own, as ``tests/builders`` does), a builder over them in a separate
``$XDG_CONFIG_HOME``, and runs the mix: ``--projects`` Dockerfile projects (a CPU-bound
dependency step, a copy of the sources, a CPU-bound step over them), each built ``--rounds``
times, interleaved, the sources of each changed in one later round, from ``--clients``
concurrent clients (a project's next build waits for its previous one, as a pipeline does).
The configurations take turns in an order that rotates per repetition. The projects'
directory names are chosen so that sticky routing spreads them as evenly as it can over the
three nodes (2/1/1 for four projects); the hash would otherwise decide the split.

Per build: the client's wall time, the node it went to (sticky rendezvous hashing, checked
against each node's history afterwards), the steps ``CACHED`` in the plain progress output,
and the CPU seconds of its node's daemon process tree (``/proc/PID/stat`` utime+stime, the
reaped children's included, before and after: exact with ``--clients 1``, shared between
builds that overlap on one node otherwise; such builds are marked ``overlapped``).

``--shared-cache s3`` gives every build a moto S3 cache of its project (``name=PROJECT``,
``mode=max``, a prefix per configuration and repetition); ``s3-builder`` puts one cache on
the builders instead (``builder create --cache-from/--cache-to``: one name for every
project). Either way, after the mix, one more fresh node with the same cache builds every
project once: a node that never saw the project.

    python bench/fleet.py [--reps 2] [--clients 3] [--shared-cache none|s3|s3-builder]
                          [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

CONFIGS = {"nodes3": ("alpha", "beta", "gamma"), "nodes1": ("solo",)}
DOCKERFILE = """\
ARG BASE
FROM ${BASE}
WORKDIR /app
COPY deps.txt .
RUN dd if=/dev/zero bs=1M count=DEPS_MB 2>/dev/null | sha256sum > /deps.sum && cat deps.txt >> /deps.sum
COPY src/ ./src/
RUN cat src/*.txt | sha256sum > sum && dd if=/dev/zero bs=1M count=SRC_MB 2>/dev/null | md5sum >> sum
"""
#: (MB hashed by the dependency step, MB hashed by the source step, source files)
SHAPES = [(400, 100, 20), (250, 150, 40), (150, 60, 10), (300, 80, 30)]


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s process tree: its utime + stime, those of the children it has
    waited for (cutime + cstime), and, recursively, those of its children still there (a
    build's process is counted even before the daemon reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # gone between the listing and the read
        return 0.0
    # after the command: state is field 3; utime 14, stime 15, cutime 16, cstime 17
    total = sum(int(x) for x in fields[11:15]) / clock_ticks()
    return total + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return found


def du(path: Path) -> int:
    """Bytes of the regular files under ``path``, each inode once."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen and not os.path.islink(os.path.join(root, name)):
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def project_names(base: Path, projects: int, nodes: tuple[str, ...]) -> list[str]:
    """Directory names for the projects such that sticky routing spreads them as evenly as
    they can be over ``nodes`` (the hash of the absolute path decides; any other names may
    put two projects on one node and leave another idle)."""
    from pybk.core.cli.builders import rendezvous_order, routing_key

    most = -(-projects // len(nodes))
    names: list[str] = []
    load = dict.fromkeys(nodes, 0)
    for index in range(projects):
        suffix = 0
        while True:
            name = f"project{index}" + (f"-{suffix}" if suffix else "")
            node = rendezvous_order(routing_key(str(base / name), None, None), list(nodes))[0]
            empty = sum(1 for n in nodes if load[n] == 0)
            # at most ``most`` a node, and no node left empty while projects remain for it
            if load[node] < most and (load[node] == 0 or empty < projects - index):
                load[node] += 1
                names.append(name)
                break
            suffix += 1
    return names


def make_project(base: Path, index: int, name: str | None = None) -> Path:
    deps_mb, src_mb, files = SHAPES[index % len(SHAPES)]
    ctx = base / (name or f"project{index}")
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(
        DOCKERFILE.replace("DEPS_MB", str(deps_mb)).replace("SRC_MB", str(src_mb)))
    (ctx / "deps.txt").write_text(f"project {index} dependencies\n")
    for i in range(files):
        (ctx / "src" / f"file{i}.txt").write_text(source_text(index, i))
    return ctx


def source_text(project: int, i: int) -> str:
    return f"project {project} file {i}\n" * 20


def schedule(projects: int, rounds: int) -> list[dict]:
    """Every project once per round, interleaved; a project's source changes in one later
    round: round 2 for even projects, round 3 (the last) for odd ones."""
    plan = []
    for r in range(1, rounds + 1):
        for p in range(projects):
            change_round = 2 if p % 2 == 0 else min(3, rounds)
            changed = rounds > 1 and r == change_round
            kind = "cold" if r == 1 else ("changed" if changed else "unchanged")
            plan.append({"project": p, "round": r, "kind": kind})
    return plan


class CacheFlags:
    """The shared cache of one configuration and repetition: none; ``s3`` — each build names
    its project's cache (``name=PROJECT``), replacing the builder's; ``s3-builder`` — the
    builder carries one ``--cache-from``/``--cache-to`` without a name, and names it per
    project itself."""

    def __init__(self, mode: str, s3, prefix: str):
        self.mode = mode
        self.attrs = ""
        if s3 is not None:
            self.attrs = ",".join(f"{k}={v}" for k, v in s3.attrs(prefix=prefix).items())

    def _flags(self, name: str | None) -> list[str]:
        named = f",name={name}" if name else ""
        return ["--cache-from", f"type=s3,{self.attrs}{named}",
                "--cache-to", f"type=s3,{self.attrs}{named},mode=max"]

    def builder(self) -> list[str]:
        return self._flags(None) if self.mode == "s3-builder" else []

    def build(self, project: str) -> list[str]:
        return self._flags(project) if self.mode == "s3" else []


class Fleet:
    """Fresh nodes (mutual TLS each) and one builder over them."""

    def __init__(self, base: Path, name: str, nodes: tuple[str, ...], cache: list[str]):
        from support.tlsdaemon import PKI, RemoteDaemon, tls_config

        self.name = name
        self.base = base
        self.config = base / "xdg"
        self.daemons = {}
        self.pki = {}
        for node in nodes:
            (base / f"pki-{node}").mkdir(parents=True)
            self.pki[node] = PKI(base / f"pki-{node}")
            (base / node).mkdir()
            self.daemons[node] = RemoteDaemon(base / node, tls_config(self.pki[node]))
        for i, node in enumerate(nodes):
            done = self.pybk("builder", "create", name, "--node", self.daemons[node].addr,
                             "--node-name", node, "--tlsdir", str(self.pki[node].good),
                             *(["--append"] if i else cache))
            if done.returncode:
                raise RuntimeError(f"builder create: {done.stderr}")

    def env(self) -> dict[str, str]:
        from support.tlsdaemon import client_env

        return client_env(XDG_CONFIG_HOME=str(self.config))

    def pybk(self, *args: str) -> subprocess.CompletedProcess:
        from support.tlsdaemon import CLIENT

        return subprocess.run([*CLIENT, *args], capture_output=True, text=True,
                              env=self.env(), timeout=600, stdin=subprocess.DEVNULL)

    def cpu(self, node: str) -> float:
        return cpu_seconds(self.daemons[node].proc.pid)

    def history(self, node: str) -> int:
        history = self.daemons[node].root / "history"
        return len(list(history.iterdir())) if history.is_dir() else 0

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()


def count_steps(stderr: str) -> tuple[int, int]:
    """(steps CACHED, Dockerfile steps) in plain progress output."""
    cached, steps = set(), set()
    for line in stderr.splitlines():
        head, _, rest = line.partition(" ")
        if not head.startswith("#") or not head[1:].isdigit():
            continue
        if rest.startswith("[") and ("COPY" in rest or "RUN" in rest or "WORKDIR" in rest):
            steps.add(head)
        elif rest == "CACHED":
            cached.add(head)
    return len(cached & steps), len(steps)


def run_mix(fleet: Fleet, contexts: list[Path], plan: list[dict], clients: int,
            base_ref: str, cache: CacheFlags) -> list[dict]:
    """Run ``plan`` through ``fleet``'s builder from ``clients`` threads, each running one
    ``pybk build`` at a time; returns one record per build."""
    from pybk.core.cli.builders import rendezvous_order, routing_key

    names = list(fleet.daemons)
    queue = list(enumerate(plan))
    lock = threading.Lock()
    done_events = {(b["project"], b["round"]): threading.Event() for b in plan}
    records: list[dict] = [{} for _ in plan]
    t_start = time.perf_counter()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                index, build = queue.pop(0)
            previous = done_events.get((build["project"], build["round"] - 1))
            if previous is not None:
                previous.wait()
            ctx = contexts[build["project"]]
            if build["kind"] == "changed":
                (ctx / "src" / "file0.txt").write_text(f"changed in round {build['round']}\n")
            node = rendezvous_order(routing_key(str(ctx), None, None), names)[0]
            cpu0 = fleet.cpu(node)
            t0 = time.perf_counter()
            done = fleet.pybk("build", "--builder", fleet.name, "--progress", "plain",
                              "--build-arg", f"BASE={base_ref}", *cache.build(ctx.name),
                              str(ctx))
            t1 = time.perf_counter()
            cpu1 = fleet.cpu(node)
            cached, steps = count_steps(done.stderr)
            records[index] = {
                **build, "node": node, "ok": done.returncode == 0,
                "start_s": round(t0 - t_start, 3), "latency_s": round(t1 - t0, 3),
                "node_cpu_s": round(cpu1 - cpu0, 3), "cached_steps": cached, "steps": steps,
                "failover": "did not answer" in done.stderr,
                **({} if done.returncode == 0 else {"stderr": done.stderr[-2000:]})}
            done_events[(build["project"], build["round"])].set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def overlaps(records: list[dict]) -> None:
    """Mark builds that shared their node with another build for part of their time."""
    for r in records:
        r["overlapped"] = any(
            o is not r and o["node"] == r["node"]
            and o["start_s"] < r["start_s"] + r["latency_s"]
            and r["start_s"] < o["start_s"] + o["latency_s"] for o in records)


def run_config(base: Path, config: str, rep: int, contexts: list[Path], plan: list[dict],
               clients: int, base_ref: str, mode: str, s3) -> dict:
    prefix = f"{config}-{rep}/"
    cache = CacheFlags(mode, s3, prefix)
    work = base / f"{config}-{rep}"
    fleet = Fleet(work, config, CONFIGS[config], cache.builder())
    try:
        for p, ctx in enumerate(contexts):  # every repetition starts from the same sources
            (ctx / "src" / "file0.txt").write_text(source_text(p, 0))
        cpu0 = {n: fleet.cpu(n) for n in fleet.daemons}
        t0 = time.perf_counter()
        records = run_mix(fleet, contexts, plan, clients, base_ref, cache)
        wall = time.perf_counter() - t0
        cpu = {n: round(fleet.cpu(n) - cpu0[n], 3) for n in fleet.daemons}
        overlaps(records)
        expected = {n: sum(1 for r in records if r["node"] == n) for n in fleet.daemons}
        seen = {n: fleet.history(n) for n in fleet.daemons}
        store = {n: du(fleet.daemons[n].root) for n in fleet.daemons}
    finally:
        fleet.stop()
    result = {"config": config, "rep": rep, "nodes": list(CONFIGS[config]),
              "wall_s": round(wall, 3), "daemon_cpu_s": cpu, "builds": records,
              "routing_checked": expected == seen, "history_counts": seen,
              "store_bytes": store}
    if s3 is not None:
        fs = s3.filesystem()
        result["shared_cache_bytes"] = fs.du(f"{s3.bucket}/{prefix}")
        result["fresh_node"] = fresh_node(work, config, contexts, clients, base_ref, cache)
    return result


def fresh_node(work: Path, config: str, contexts: list[Path], clients: int, base_ref: str,
               cache: CacheFlags) -> list[dict]:
    """One more node, never used, with the configuration's shared cache: every project once."""
    fleet = Fleet(work / "fresh", "fresh", ("fresh",), cache.builder())
    try:
        plan = [{"project": p, "round": 1, "kind": "fresh-node"} for p in range(len(contexts))]
        records = run_mix(fleet, contexts, plan, 1, base_ref, cache)
    finally:
        fleet.stop()
    return records


def summarise(results: list[dict]) -> dict:
    out = {}
    for config in CONFIGS:
        runs = [r for r in results if r["config"] == config]
        if not runs:
            continue
        lat = [b["latency_s"] for r in runs for b in r["builds"]]
        walls = [r["wall_s"] for r in runs]
        per_rep_cached = [sum(b["cached_steps"] for b in r["builds"]) for r in runs]
        steps = [sum(b["steps"] for b in r["builds"]) for r in runs]
        cpu = [sum(r["daemon_cpu_s"].values()) for r in runs]
        kinds = {}
        for kind in ("cold", "changed", "unchanged"):
            ks = [b for r in runs for b in r["builds"] if b["kind"] == kind]
            if ks:
                kinds[kind] = {
                    "latency_median_s": round(statistics.median(b["latency_s"] for b in ks), 3),
                    "node_cpu_median_s": round(statistics.median(b["node_cpu_s"] for b in ks), 3),
                    "cached_steps_median": statistics.median(b["cached_steps"] for b in ks),
                    "builds": len(ks)}
        routing = {}
        for r in runs:
            for b in r["builds"]:
                routing.setdefault(b["node"], set()).add(b["project"])
        fresh = [b for r in runs for b in r.get("fresh_node", [])]
        out[config] = {
            "wall_median_s": round(statistics.median(walls), 3), "walls_s": walls,
            "latency_median_s": round(statistics.median(lat), 3),
            "latency_p90_s": round(quantile(lat, 0.9), 3),
            "cached_steps_median": statistics.median(per_rep_cached),
            "steps": statistics.median(steps),
            "daemon_cpu_median_s": round(statistics.median(cpu), 3),
            "store_bytes_median": statistics.median(sum(r["store_bytes"].values()) for r in runs),
            **({"shared_cache_bytes_median": statistics.median(
                r["shared_cache_bytes"] for r in runs)} if "shared_cache_bytes" in runs[0]
               else {}),
            "routing": {n: sorted(p) for n, p in sorted(routing.items())},
            "routing_checked": all(r["routing_checked"] for r in runs),
            "failed": sum(1 for r in runs for b in r["builds"] if not b["ok"]),
            "by_kind": kinds,
            **({"fresh_node": {
                "latency_median_s": round(statistics.median(b["latency_s"] for b in fresh), 3),
                "cached_steps": sum(b["cached_steps"] for b in fresh),
                "steps": sum(b["steps"] for b in fresh)}} if fresh else {})}
    return out


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (``statistics.quantiles`` needs two values or more)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def print_table(summary: dict, reps: int, clients: int) -> None:
    print(f"\nmedians of {reps} repetitions, {clients} concurrent clients")
    print(f"{'config':<8} {'wall s':>7} {'lat p50':>8} {'lat p90':>8} {'cached':>9} "
          f"{'daemon cpu s':>13}  routing (node: projects)")
    for config, s in summary.items():
        routing = " ".join(f"{n}:{','.join(map(str, p))}" for n, p in s["routing"].items())
        print(f"{config:<8} {s['wall_median_s']:7.2f} {s['latency_median_s']:8.2f} "
              f"{s['latency_p90_s']:8.2f} {s['cached_steps_median']:>4}/{s['steps']:<4} "
              f"{s['daemon_cpu_median_s']:13.2f}  {routing}")
    if len(summary) == 2:
        a, b = summary["nodes3"], summary["nodes1"]
        print(f"3 nodes / 1 node: wall {a['wall_median_s'] / b['wall_median_s']:.2f}, "
              f"latency p50 {a['latency_median_s'] / b['latency_median_s']:.2f}, "
              f"p90 {a['latency_p90_s'] / b['latency_p90_s']:.2f}")
    for config, s in summary.items():
        for kind, k in s["by_kind"].items():
            print(f"  {config} {kind:<9} latency {k['latency_median_s']:6.2f} s, node cpu "
                  f"{k['node_cpu_median_s']:6.2f} s, cached steps {k['cached_steps_median']}")
        if "fresh_node" in s:
            f = s["fresh_node"]
            print(f"  {config} fresh node with the shared cache: latency "
                  f"{f['latency_median_s']:.2f} s, cached steps {f['cached_steps']}/{f['steps']}")


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each configuration")
    parser.add_argument("--clients", type=int, default=3, help="concurrent clients (default 3)")
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="builds of each project")
    parser.add_argument("--configs", default="nodes3,nodes1",
                        help="which builders: nodes3 (3 nodes), nodes1 (1 node)")
    parser.add_argument("--shared-cache", choices=("none", "s3", "s3-builder"), default="none",
                        help="s3: a moto S3 cache, one name per project, given by each build; "
                             "s3-builder: the builders carry it (named per project by the "
                             "builder); either way a "
                             "fresh node is measured after the mix")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or not configs:
        parser.error(f"--configs: unknown {','.join(bad) or '(none)'}; known: nodes3,nodes1")
    for flag in ("reps", "clients", "projects", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)  # the finally blocks stop daemons
    try:
        return run(args, configs)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, configs: list[str]) -> int:
    from support.busybox import build_busybox_layout, push_oci_layout
    from support.registry import RegistryServer

    plan = schedule(args.projects, args.rounds)
    results: list[dict] = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="pybk-fleet-bench-") as tmp:
        base = Path(tmp)
        registry = RegistryServer(base / "registry").start()
        s3 = None
        try:
            layout = build_busybox_layout(base / "busybox")
            base_ref = f"{registry.host}/busybox:latest"
            push_oci_layout(layout, base_ref)
            if args.shared_cache != "none":
                from support.cachefixtures import MotoS3

                s3 = MotoS3().start()
            names = project_names(base / "src", args.projects, CONFIGS["nodes3"])
            contexts = [make_project(base / "src", i, name) for i, name in enumerate(names)]
            for rep in range(args.reps):
                order = configs if rep % 2 == 0 else list(reversed(configs))
                for config in order:
                    print(f"rep {rep + 1}: {config} …", flush=True)
                    result = run_config(base, config, rep, contexts, plan, args.clients,
                                        base_ref, args.shared_cache, s3)
                    result["loadavg_after"] = loadavg()
                    results.append(result)
                    failed = [b for b in result["builds"] if not b["ok"]]
                    print(f"  wall {result['wall_s']:.2f} s, routing checked "
                          f"{result['routing_checked']}, failed {len(failed)}", flush=True)
                    for b in failed[:1]:
                        print(b["stderr"], file=sys.stderr)
        finally:
            if s3 is not None:
                s3.stop()
            registry.stop()
    summary = summarise(results)
    print_table(summary, args.reps, args.clients)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": load_before, "loadavg_after": loadavg()},
            "args": vars(args), "plan": plan, "summary": summary, "runs": results},
            indent=1) + "\n")
    return 0 if all(s["failed"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
