#!/usr/bin/env python3
"""A multi-stage build written with pybk's Python API, no Dockerfile needed.

Stages (``build`` and ``test`` run in parallel; ``final`` needs both):

- ``build``: copies ``app/`` from the context, stamps the build number kept in a cache mount
  (it survives between builds but is never part of the image), installs ``/app``;
- ``lint``: checks the scripts' shebangs, independently of ``build``;
- ``final``: the busybox base plus ``/app`` from ``build`` and the lint report.

Usage: ``python examples/pipeline.py --base BUSYBOX_OCI_LAYOUT --out DIR [--root STORE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pybk.core import llb
from pybk.core.engine.client import Client

HERE = os.path.dirname(os.path.abspath(__file__))


def build_graph(base_digest: str) -> llb.State:
    base = llb.oci_layout(f"busybox@{base_digest}", store_id="base").dir("/")
    context = llb.local("context", include_patterns=["app/"])

    build = base.run(
        "n=$(cat /cache/builds 2>/dev/null || echo 0); n=$((n+1)); echo $n > /cache/builds; "
        "mkdir -p /app && cp /src/app/NAME /app/NAME && "
        "cp /src/app/greet.sh /app/greet && chmod 0755 /app/greet && "
        "echo \"build $n\" > /app/BUILD",
        mounts=[llb.mount("/src", context, readonly=True),
                llb.cache_mount("/cache", "example-builds", sharing=llb.CacheSharingOpt.LOCKED)],
        custom_name="[build] install app",
    ).root()

    lint = base.run(
        "mkdir -p /report && for f in /src/app/*.sh; do "
        "head -n1 \"$f\" | grep -q '^#!/bin/sh' && echo \"ok $(basename $f)\"; "
        "done > /report/lint.txt",
        mounts=[llb.mount("/src", context, readonly=True)],
        custom_name="[lint] check shebangs",
    ).root()

    final = base.file(
        llb.copy(build, "/app", "/app", dir_copy_contents=True, create_dest_path=True),
        custom_name="[final] COPY --from=build /app /app",
    ).file(
        llb.copy(lint, "/report/lint.txt", "/app/lint.txt"),
        custom_name="[final] COPY --from=lint /report/lint.txt /app/",
    )
    return final.run("/app/greet > /app/greeting.txt", custom_name="[final] RUN /app/greet").root()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="busybox OCI layout directory")
    parser.add_argument("--out", required=True, help="directory to export the result into")
    parser.add_argument("--root", default=None, help="pybk store (default: pybk's)")
    parser.add_argument("--progress", default="plain")
    args = parser.parse_args(argv)

    with open(os.path.join(args.base, "index.json")) as f:
        digest = json.load(f)["manifests"][0]["digest"]
    with Client(root=args.root) as client:
        result = client.solve(build_graph(digest), local_dirs={"context": HERE},
                              oci_layouts={"base": args.base}, progress=args.progress,
                              outputs=[{"type": "local", "dest": args.out}])
    stats = result.stats
    print(f"built: {len(stats.executed_digests)} steps executed, "
          f"{len(stats.cached_digests)} cached", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
