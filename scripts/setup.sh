#!/usr/bin/env bash
# Install what pybk and its tests need on a fresh Debian bookworm machine (run as root).
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(runc busybox-static docker-registry skopeo umoci apache2-utils git)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

extras="${1:-}"
python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
