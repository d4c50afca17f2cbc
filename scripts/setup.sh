#!/usr/bin/env bash
# Install what pybk and its tests need on a fresh Debian bookworm machine (run as root).
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(runc crun busybox-static docker-registry skopeo umoci apache2-utils git
      containernetworking-plugins iptables iproute2 graphviz openssh-client
      slirp4netns uidmap fuse-overlayfs fuse3 acl)
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
if [ "$extras" = "[test]" ]; then
  # dockerd 20.10 (with BuildKit v0.8) for the differential and `docker load` tests
  dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed" || {
    echo "installing docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io \
      >/dev/null || echo "docker.io could not be installed: the tests that need dockerd skip"
  }
fi
python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
# Bytecode ahead of time: with PYTHONDONTWRITEBYTECODE set, every run would recompile pybk's
# sources (~160 ms); both the embedded command and pybkd start from these .pyc files.
python3 -m compileall -q core frontends exporters cachebackends workers

if [ "$extras" = "[test]" ]; then
  # Azurite (Azure Blob emulator) and the real GitHub Actions cache client, for the cache tests.
  if ! command -v azurite-blob >/dev/null 2>&1 && [ ! -x /tmp/pybk-azurite/node_modules/.bin/azurite-blob ]; then
    echo "installing azurite from npm"
    npm install --silent --no-audit --no-fund --prefix /tmp/pybk-azurite azurite@3.35 >/dev/null \
      || echo "azurite could not be installed: the Azure and GHA v2 tests skip"
  fi
  # linux/arm64 RUN steps through qemu: qemu-user-static with Debian's binfmt_misc entry, and
  # Debian's arm64 busybox-static binary (its .deb fetched with an apt state of its own).
  scripts/setup-arm64.sh || echo "arm64 emulation could not be set up: the emulated-RUN tests skip"
  d=/tmp/pybk-npm-cache/gha-client-$(sha256sum tests/gha/js/package.json | cut -c1-12)
  if [ ! -f "$d/.installed" ]; then
    echo "installing @actions/cache from npm"
    mkdir -p "$d" && cp tests/gha/js/package.json "$d"/
    (cd "$d" && npm install --silent --no-audit --no-fund >/dev/null) && touch "$d/.installed" \
      || echo "@actions/cache could not be installed: its faithfulness test skips"
  fi
fi
