#!/usr/bin/env bash
# Set up (runc, busybox-static, pybk) and run the example: a multi-stage build of examples/
# from a busybox base image made locally (no registry, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
work="${PYBK_EXAMPLE_DIR:-/tmp/pybk-example}"
mkdir -p "$work"
[ -f "$work/busybox/index.json" ] || python3 examples/busybox_layout.py "$work/busybox" >/dev/null
rm -rf "$work/out"
python3 examples/pipeline.py --base "$work/busybox" --out "$work/out" --root "$work/store"
echo
echo "== result in $work/out/app"
ls -l "$work/out/app"
for f in BUILD lint.txt greeting.txt; do echo "-- $f"; cat "$work/out/app/$f"; done
