#!/usr/bin/env python3
"""Concurrency campaign: several builds, ``pybk prune`` and ``pybk du`` at once on one store.

Each round starts 8 builds (``--builds``) of different small contexts (a ``COPY``, a ``RUN``
with a shared cache mount unless ``--no-run``, a ``FROM scratch`` stage copying the results)
with a local export each, plus ``pybk prune --all`` (started after a random delay, seeded) and
``pybk du``, all embedded ``pybk`` processes on one store. A round passes when every command
exits 0, each build's exported tree is identical to its tree in the first round (paths, kinds,
modes, contents), nothing is mounted under the store, no runc container is left and
``pybk debug fsck`` is clean. Prints one line per round and a summary; ``--json FILE`` writes
every round. Exit 0 when every round passed. Needs root (and runc unless ``--no-run``).

    python bench/concurrency.py --rounds 20 --json concurrency.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import storecampaign as sc  # noqa: E402

DOCKERFILE_RUN = """\
FROM busybox AS work
COPY . /ctx/
RUN --mount=type=cache,target=/cache,id=shared-cache \\
    cat /ctx/*.txt | md5sum > /sum && wc -c /ctx/*.txt > /sizes && \\
    echo {i} >> /cache/seen
FROM scratch
COPY --from=work /sum /sizes /
COPY --from=work /ctx /ctx
"""

DOCKERFILE_COPY = """\
FROM busybox AS work
COPY . /ctx/
FROM scratch
COPY --from=work /ctx /ctx
COPY --from=work /bin/busybox /bin/
"""


def _error_part(stderr: str) -> str:
    """The ``error:`` line of a failed command's stderr and what follows, or its last 400
    characters (a long progress log would hide the message otherwise)."""
    text = stderr.strip()
    at = text.rfind("\nerror:")
    return text[at + 1:at + 1200] if at >= 0 else text[-400:]


def make_contexts(work: Path, n: int, run: bool) -> list[Path]:
    contexts = []
    for i in range(n):
        ctx = work / f"ctx{i}"
        ctx.mkdir(parents=True, exist_ok=True)
        (ctx / "Dockerfile").write_text((DOCKERFILE_RUN if run else DOCKERFILE_COPY)
                                        .format(i=i))
        for j in range(i % 3 + 2):
            (ctx / f"f{j}.txt").write_text(f"context {i} file {j}\n" * (i + j + 1))
        contexts.append(ctx)
    return contexts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--builds", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-run", action="store_true", help="no RUN steps (no runc needed)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--workdir", help="scratch directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ns = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (daemon, mounts) on kill
    rng = random.Random(ns.seed)
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="pybk-concurrency-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "store"
    config = sc.write_config(work)
    layout = sc.busybox_layout(work / "busybox")
    contexts = make_contexts(work, ns.builds, not ns.no_run)
    first: dict[int, dict] = {}
    rounds: list[dict] = []
    started = time.time()
    try:
        for r in range(ns.rounds):
            t0 = time.monotonic()
            procs: dict[str, subprocess.Popen] = {}
            outs = {}
            for i, ctx in enumerate(contexts):
                out = work / f"out{i}"
                shutil.rmtree(out, ignore_errors=True)
                outs[i] = out
                procs[f"build{i}"] = subprocess.Popen(
                    sc.embedded(root, config, "build", "--progress", "quiet",
                                "--build-context", f"busybox=oci-layout://{layout}",
                                "-o", f"type=local,dest={out}", str(ctx)),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sc.env(),
                    stdin=subprocess.DEVNULL)
            procs["du"] = subprocess.Popen(sc.embedded(root, config, "du"),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, env=sc.env(), stdin=subprocess.DEVNULL)
            time.sleep(rng.uniform(0, 1.5))
            procs["prune"] = subprocess.Popen(sc.embedded(root, config, "prune", "--all"),
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, env=sc.env(), stdin=subprocess.DEVNULL)
            failures = []
            pruned = 0
            for name, proc in procs.items():
                try:
                    out, err = proc.communicate(timeout=900)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                if proc.returncode != 0:
                    failures.append(f"{name} exit {proc.returncode}: {_error_part(err)}")
                if name == "prune":
                    pruned = max(0, len(out.splitlines()) - 2)
            for i, out in outs.items():
                if f"build{i} " in " ".join(failures) + " ":
                    continue
                t = sc.tree(out)
                if not t:
                    failures.append(f"build{i}: empty export")
                elif i not in first:
                    first[i] = t
                elif t != first[i]:
                    gone = sorted(set(first[i]) - set(t))[:3]
                    new = sorted(set(t) - set(first[i]))[:3]
                    changed = sorted(k for k in set(t) & set(first[i]) if t[k] != first[i][k])
                    failures.append(f"build{i}: export differs from round 0: missing {gone}, "
                                    f"extra {new}, changed {changed[:3]}")
            failures += sc.at_rest(root, config)
            seconds = time.monotonic() - t0
            row = {"round": r, "seconds": round(seconds, 1), "pruned": pruned,
                   "failures": failures, "outcome": "ok" if not failures else "FAIL"}
            rounds.append(row)
            print(f"round {r:2d}: {row['outcome']:4s} {seconds:5.1f}s, prune deleted {pruned}"
                  " record(s)", flush=True)
            for f in failures:
                print(f"    {f}", flush=True)
    finally:
        if not ns.keep:
            from pybk.core.store.mounts import cleanup_stale_mounts

            cleanup_stale_mounts(str(work))
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in rounds if r["failures"]]
    summary = {"rounds": len(rounds), "builds_per_round": ns.builds, "failed_rounds": len(failed),
               "builds": len(rounds) * ns.builds, "seconds": round(time.time() - started, 1),
               "seed": ns.seed, "run_steps": not ns.no_run,
               "records_pruned": sum(r["pruned"] for r in rounds)}
    print(f"\n{len(rounds)} rounds x ({ns.builds} builds + prune + du): {len(failed)} failed"
          f" rounds, {summary['records_pruned']} records pruned meanwhile, "
          f"{summary['seconds']}s")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
