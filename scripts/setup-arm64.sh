#!/usr/bin/env bash
# Make linux/arm64 RUN steps possible on an amd64 Debian machine (run as root), for the tests:
# - qemu-user-static, its qemu-aarch64 binfmt_misc entry registered as Debian ships it (flags
#   POF: the emulator is opened once, so it works inside any container rootfs, and argv[0] is
#   kept, which busybox's applets need);
# - Debian's arm64 busybox-static binary at $PYBK_ARM64_DIR/busybox (default /tmp/pybk-arm64),
#   from its .deb, downloaded with an apt state of its own (the system's apt is left as is).
# Idempotent; exits non-zero when something is not possible here.
set -euo pipefail
dir="${PYBK_ARM64_DIR:-/tmp/pybk-arm64}"
binfmt=/proc/sys/fs/binfmt_misc

if ! dpkg-query -W -f='${Status}' qemu-user-static 2>/dev/null | grep -q "install ok installed"; then
  echo "installing qemu-user-static"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static \
    >/dev/null
fi
if [ ! -e "$binfmt/register" ]; then
  mount -t binfmt_misc binfmt_misc "$binfmt"
fi
entry="$binfmt/qemu-aarch64"
if [ -e "$entry" ] && ! grep -Eq '^flags: .*P.*F|^flags: .*F.*P' "$entry"; then
  echo -1 > "$entry"  # registered some other way (without P or F): replace it with Debian's
fi
if [ ! -e "$entry" ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > "$binfmt/register"
fi
grep -qx enabled "$entry"

if [ ! -x "$dir/busybox" ]; then
  echo "fetching Debian's arm64 busybox-static"
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/archives/partial" "$dir/deb"
  apt_opts=(-o APT::Architecture=arm64 -o "APT::Architectures::=arm64"
            -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache::Archives=$dir/apt/archives"
            -o "Dir::State::status=/dev/null" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
            -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$dir/deb" && apt-get "${apt_opts[@]}" download -qq busybox-static:arm64)
  dpkg-deb -x "$dir"/deb/busybox-static_*_arm64.deb "$dir/root"
  install -m 0755 "$dir/root/bin/busybox" "$dir/busybox"
  rm -rf "$dir/apt" "$dir/deb" "$dir/root"
fi
