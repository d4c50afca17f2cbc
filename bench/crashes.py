#!/usr/bin/env python3
"""Crash campaign: kill builds with SIGKILL at random points, then check that the store
recovers.

A multi-stage Dockerfile (RUN steps, a ``RUN --mount=type=cache``, ``COPY --from``) is built
with a local export (``-o type=local``) and a remote cache export (``--cache-to
type=local,dest=DIR,mode=max``, imported again with ``--cache-from`` once it exists, so a
killed cache export is read by the next build), embedded (``pybk build``; the pybk process is killed) and
through pybkd (``pybk --addr unix://…``; the daemon's per-command child is killed). Each point
(seeded) picks a mode and a delay within the duration of an uncached build, changes a build
argument so that the later steps run again, starts the build and kills it after the delay.
After each kill:

1. ``pybk debug fsck`` (no repair) notes what the kill left (before any recovery);
2. the same build, not killed, must succeed and export the expected files;
3. nothing may be mounted under the store, no runc container may be left, and
   ``pybk debug fsck`` must be clean.

Prints a table (point, mode, delay, what was running, what the kill left, outcome) and a
summary; ``--json FILE`` writes every point. Exit 0 when every point passed. Needs root and runc.

    python bench/crashes.py --points 50 --seed 1 --json crashes.json
    python bench/crashes.py --points 6 --modes embedded
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import storecampaign as sc  # noqa: E402

DOCKERFILE = """\
FROM busybox AS base
RUN echo base > /base.txt && sleep 0.3
FROM base AS tools
ARG POINT=0
RUN --mount=type=cache,target=/cache echo "$POINT" >> /cache/log && \\
    cp /cache/log /tools.log && sleep 0.3
RUN for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/blob$i bs=64k count=8 2>/dev/null; \\
    done && sleep 0.2
FROM base AS app
ARG POINT=0
COPY src/ /src/
RUN cat /src/* /base.txt > /app.txt && echo "$POINT" >> /app.txt && sleep 0.3
FROM busybox
COPY --from=tools /tools.log /blob1 /out/
COPY --from=app /app.txt /out/
RUN ls -l /out > /out/listing && sleep 0.2
"""

_STEP = re.compile(r"^#\d+ (\[.*)$")


def make_context(work: Path) -> Path:
    ctx = work / "context"
    (ctx / "src").mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for i in range(3):
        (ctx / "src" / f"f{i}.txt").write_text(f"file {i}\n")
    return ctx


class Campaign:
    def __init__(self, work: Path, seed: int):
        self.work = work
        self.rng = random.Random(seed)
        self.root = work / "store"
        self.config = sc.write_config(work)
        self.layout = sc.busybox_layout(work / "busybox")
        self.context = make_context(work)
        self.cache = work / "remote-cache"
        self.daemon: sc.Daemon | None = None

    def build_args(self, point: int, out: Path) -> list[str]:
        return ["build", "--progress", "plain", "--build-context",
                f"busybox=oci-layout://{self.layout}", "--build-arg", f"POINT={point}",
                "-o", f"type=local,dest={out}",
                "--cache-to", f"type=local,dest={self.cache},mode=max",
                *(["--cache-from", f"type=local,src={self.cache}"]
                  if (self.cache / "index.json").exists() else []),
                str(self.context)]

    def command(self, mode: str, args: list[str]) -> list[str]:
        if mode == "daemon":
            if self.daemon is None or self.daemon.proc.poll() is not None:
                self.daemon = sc.Daemon(self.root, self.config, self.work / "run" / "pybkd.sock",
                                        self.work / "pybkd.log")
            return self.daemon.command(*args)
        return sc.embedded(self.root, self.config, *args)

    def build(self, mode: str, point: int, out: Path) -> tuple[int, str, float]:
        shutil.rmtree(out, ignore_errors=True)
        start = time.monotonic()
        r = subprocess.run(self.command(mode, self.build_args(point, out)), capture_output=True,
                           text=True, env=sc.env(), timeout=600, stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr, time.monotonic() - start

    def expected_ok(self, out: Path, point: int) -> str | None:
        app = out / "out" / "app.txt"
        if not app.is_file() or not app.read_text().endswith(f"base\n{point}\n"):
            return f"export: {app} wrong or missing"
        if not (out / "out" / "blob1").is_file() or not (out / "out" / "listing").is_file():
            return "export: files missing"
        return None

    def killed_build(self, mode: str, point: int, delay: float) -> dict:
        """Start the build, SIGKILL the pybk process (embedded) or the daemon's child running it
        after ``delay`` s; what was running then."""
        out = self.work / "out-killed"
        shutil.rmtree(out, ignore_errors=True)
        log = self.work / "killed.log"
        before = self.daemon.children() if mode == "daemon" and self.daemon else set()
        argv = self.command(mode, self.build_args(point, out))
        if mode == "daemon":
            before = self.daemon.children()  # type: ignore[union-attr]
        with open(log, "w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=sc.env(),
                                    stdin=subprocess.DEVNULL)
            time.sleep(delay)
            victim = None
            if mode == "embedded":
                victim = proc.pid
            else:
                deadline = time.monotonic() + 5  # the child may not be forked yet
                while not (new := self.daemon.children() - before) and proc.poll() is None \
                        and time.monotonic() < deadline:  # type: ignore[union-attr]
                    time.sleep(0.01)
                victim = min(new) if new else None
            finished = proc.poll() is not None
            if victim is not None and not finished:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    finished = True
            try:
                code = proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        steps = [m.group(1) for line in log.read_text(errors="replace").splitlines()
                 if (m := _STEP.match(line))]
        running = steps[-1] if steps else "(before the first step)"
        if finished or (victim is None):
            running = "(finished before the kill)" if finished else "(no child to kill)"
        return {"running": running[:70], "exit": code, "killed": not finished and victim is not None}

    def point(self, i: int, mode: str, delay: float) -> dict:
        row = {"point": i, "mode": mode, "delay": round(delay, 2)}
        row.update(self.killed_build(mode, 1000 + i, delay))
        code, out = sc.fsck(self.root, self.config)
        row["left"] = [line.split(": ", 2)[1] for line in sc.problems(out)]
        failures = []
        code, err, seconds = self.build(mode, 1000 + i, self.work / "out")
        row["rebuild_s"] = round(seconds, 2)
        if code != 0:
            failures.append(f"rebuild failed ({code}): {err.strip()[-400:]}")
        elif (bad := self.expected_ok(self.work / "out", 1000 + i)) is not None:
            failures.append(bad)
        failures += sc.at_rest(self.root, self.config)
        row["failures"] = failures
        row["outcome"] = "ok" if not failures else "FAIL"
        return row

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=50, help="kills (default 50)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--modes", default="embedded,daemon",
                   help="embedded,daemon (points alternate between them)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--workdir", help="scratch directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ns = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (daemon, mounts) on kill
    modes = [m for m in ns.modes.split(",") if m]
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="pybk-crashes-"))
    work.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(work, ns.seed)
    rows: list[dict] = []
    started = time.time()
    try:
        # per mode, an uncached build then one with another POINT (what each point builds):
        # they must work, and the second one's duration bounds the kill delays
        durations = {}
        for n, mode in enumerate(modes):
            for point in (-1 - 2 * n, -2 - 2 * n):
                code, err, seconds = campaign.build(mode, point, work / "out")
                if code != 0:
                    print(f"a first {mode} build failed:\n{err}", file=sys.stderr)
                    return 2
            durations[mode] = seconds
        print(f"build with POINT changed: "
              f"{', '.join(f'{m} {s:.1f}s' for m, s in durations.items())}", flush=True)
        for i in range(ns.points):
            mode = modes[i % len(modes)]
            delay = campaign.rng.uniform(0.05, durations[mode])
            row = campaign.point(i, mode, delay)
            rows.append(row)
            print(f"{i:3d} {mode:8s} {row['delay']:5.2f}s {row['outcome']:4s} "
                  f"{row['running'][:50]:50s} left: {len(row['left'])}", flush=True)
            for failure in row["failures"]:
                print(f"      {failure}", flush=True)
    finally:
        campaign.close()
        if not ns.keep:
            from pybk.core.store.mounts import cleanup_stale_mounts

            cleanup_stale_mounts(str(work))
            shutil.rmtree(work, ignore_errors=True)
    print()
    sc.print_table([[r["point"], r["mode"], f"{r['delay']:.2f}", r["running"],
                     ",".join(sorted(set(r["left"]))) or "-", r["outcome"]] for r in rows],
                   ["POINT", "MODE", "KILL AT", "RUNNING", "KILL LEFT (fsck)", "OUTCOME"])
    failed = [r for r in rows if r["failures"]]
    killed = sum(r["killed"] for r in rows)
    left = sum(bool(r["left"]) for r in rows)
    summary = {
        "points": len(rows), "killed": killed, "failed": len(failed),
        "by_mode": {m: sum(r["mode"] == m for r in rows) for m in modes},
        "kills_that_left_something": left, "seconds": round(time.time() - started, 1),
        "seed": ns.seed,
    }
    print(f"\n{len(rows)} points ({', '.join(f'{n} {m}' for m, n in summary['by_mode'].items())}),"
          f" {killed} killed mid-build, {left} left something for recovery, {len(failed)} failed,"
          f" {summary['seconds']}s")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"summary": summary, "points": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
