#!/usr/bin/env bash
# Set up (runc, busybox-static, pybk) and run the example: the multi-stage examples/Dockerfile,
# built from a busybox base image made locally (no registry, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
work="${PYBK_EXAMPLE_DIR:-/tmp/pybk-example}"
mkdir -p "$work"
[ -f "$work/busybox/index.json" ] || python3 examples/busybox_layout.py "$work/busybox" >/dev/null
rm -rf "$work/out"
pybk --root "$work/store" build --progress plain \
  --build-context busybox=oci-layout://"$work/busybox" \
  -o type=local,dest="$work/out" -o type=image,name=pybk-example:latest \
  --metadata-file "$work/metadata.json" examples
echo
echo "== files in $work/out/app"
ls -l "$work/out/app"
for f in BUILD lint.txt greeting.txt; do echo "-- $f"; cat "$work/out/app/$f"; done
echo "== image in the local store"
pybk --root "$work/store" images ls
