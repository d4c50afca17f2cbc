"""``pybk debug rootless [--format text|json]`` (added by the OCI worker): what rootless pybk
needs, checked on this machine for the invoking user (:func:`pybk.core.paths.real_uid`).

One line per check, ``ok`` or ``missing``, with what was found and, when missing, the fix::

    ok       user namespaces: user.max_user_namespaces = 96555; a child entered one
    missing  /etc/subuid: no range for alice; fix: usermod --add-subuids 100000-165535 ...

Needed for a rootless build (exit 0 only when all of them are ok, else 1): user namespaces
(allowed by the sysctls and entered for real by a child process), a subordinate uid and gid
range of at least 65536 ids, ``newuidmap``/``newgidmap`` that can map them (setuid root or with
file capabilities), and an OCI runtime (``runc`` or ``crun``). The others say what a rootless
build gets without them: overlayfs in a user namespace (tried for real by a child) or
``fuse-overlayfs`` with ``/dev/fuse`` (else the ``native`` snapshotter, which copies),
``slirp4netns`` with ``/dev/net/tun`` (else RUN steps use the host's network), a delegated
cgroup v2 (else resource limits are refused) and ``$XDG_RUNTIME_DIR`` (else the daemon's
socket goes in the store). Two lines end the report: the snapshotter and the network mode
``auto`` picks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.model import Model, evolve

#: the checks a rootless build cannot do without
NEEDED = ("user namespaces", "/etc/subuid", "/etc/subgid", "newuidmap", "newgidmap",
          "OCI runtime")
#: the fewest subordinate ids rootless pybk needs (a whole 16-bit uid range, like Docker's)
MIN_SUBIDS = 65536

#: run by a child: enter a user and mount namespace as the user, then try overlayfs in it
_CHILD = r"""
import ctypes, json, os, sys
lib = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
out = {"userns": None, "overlay": None}
if lib.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
    out["userns"] = os.strerror(ctypes.get_errno())
    print(json.dumps(out)); sys.exit()
for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
    with open(f"/proc/self/{name}", "w") as f:
        f.write(text)
base = sys.argv[1]
for d in ("lower", "upper", "work", "merged"):
    os.mkdir(os.path.join(base, d))
with open(os.path.join(base, "lower", "f"), "w") as f:
    f.write("x")
options = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work".encode()
merged = os.path.join(base, "merged").encode()
if lib.mount(b"overlay", merged, b"overlay", 0, options) != 0:
    out["overlay"] = os.strerror(ctypes.get_errno())
else:
    if not os.path.exists(os.path.join(base, "merged", "f")):
        out["overlay"] = "the lower layer is not seen through the mount"
    lib.umount2(merged, 2)
print(json.dumps(out))
"""


class Check(Model):
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: a rootless build cannot run without it (:data:`NEEDED`)
    needed: bool = False

    def line(self) -> str:
        status = "ok" if self.ok else "missing"
        text = f"{status:<8} {self.name}: {self.detail}"
        if not self.ok and self.fix:
            text += f"; fix: {self.fix}"
        return text

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": "ok" if self.ok else "missing",
                "needed": self.needed, "detail": self.detail, "fix": self.fix}


def rootless_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="text", metavar="text|json",
                        help="text (one line per check, the default) or json")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- the checks ----------------------------------------------------------------------------------


def _probe(scratch_parent: str | None) -> dict[str, str | None]:
    """A child's attempt at a user namespace and at overlayfs in it (None: it worked, else
    the error)."""
    with tempfile.TemporaryDirectory(prefix="pybk-rootless-check-", dir=scratch_parent) as d:
        try:
            done = subprocess.run([sys.executable, "-c", _CHILD, d], capture_output=True,
                                  text=True, timeout=30, stdin=subprocess.DEVNULL)
            return json.loads(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            return {"userns": f"the check could not run: {e}", "overlay": "not tried"}


def check_userns(probe: dict[str, str | None]) -> Check:
    limit = _read("/proc/sys/user/max_user_namespaces")
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")  # Debian's older kernels
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    found = f"user.max_user_namespaces = {limit}"
    if limit is not None and int(limit) == 0:
        return Check("user namespaces", False, found + " (none allowed)",
                     "sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/)")
    if clone == "0":
        return Check("user namespaces", False, "kernel.unprivileged_userns_clone = 0",
                     "sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d/)")
    if probe.get("userns") is not None:
        fix = ("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor "
               "profile allowing userns for the python running pybk" if apparmor == "1"
               else "allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
               "kernel.unprivileged_userns_clone; a container's seccomp profile)")
        return Check("user namespaces", False,
                     f"{found}, but a child could not enter one ({probe['userns']})", fix)
    return Check("user namespaces", True, f"{found}; a child entered one")


def _subid_ranges(path: str, name: str, uid: int) -> list[tuple[int, int]] | None:
    """``(start, count)`` of the user's lines (by name or uid); None: no such file."""
    text = _read(path)
    if text is None:
        return None
    ranges = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)) and \
                fields[1].isdigit() and fields[2].isdigit():
            ranges.append((int(fields[1]), int(fields[2])))
    return ranges


def _free_start() -> int:
    """A start no line of /etc/subuid or /etc/subgid uses yet (from 100000)."""
    end = 100000
    for path in ("/etc/subuid", "/etc/subgid"):
        for line in (_read(path) or "").splitlines():
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def check_subids(kind: str, name: str, uid: int) -> Check:
    path = f"/etc/sub{kind}"
    start = _free_start()
    span = f"{start}-{start + MIN_SUBIDS - 1}"
    fix = f"usermod --add-subuids {span} --add-subgids {span} {name} (as root)"
    ranges = _subid_ranges(path, name, uid)
    if ranges is None:
        return Check(path, False, f"{path} does not exist", fix)
    if not ranges:
        return Check(path, False, f"no range for {name}", fix)
    best = max(count for _, count in ranges)
    shown = ", ".join(f"{s}-{s + c - 1}" for s, c in ranges)
    if best < MIN_SUBIDS:
        return Check(path, False, f"{name} has {shown}: fewer than {MIN_SUBIDS} ids in one "
                     "range", fix)
    return Check(path, True, f"{name} has {shown}")


def check_idmap_tool(tool: str) -> Check:
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/bin/{tool}", f"/bin/{tool}") if os.path.exists(p)), None)
    if path is None:
        return Check(tool, False, "not found", "apt-get install uidmap")
    info = os.stat(path)
    if info.st_mode & stat.S_ISUID and info.st_uid == 0:
        return Check(tool, True, f"{path}, setuid root")
    try:
        os.getxattr(path, "security.capability")
        return Check(tool, True, f"{path}, with file capabilities")
    except OSError:
        pass
    cap = "cap_setuid" if tool == "newuidmap" else "cap_setgid"
    return Check(tool, False, f"{path} is neither setuid root nor has file capabilities",
                 f"chmod u+s {path} (or setcap {cap}+ep {path})")


def check_overlay(probe: dict[str, str | None]) -> Check:
    if probe.get("userns") is not None:
        return Check("overlayfs in a user namespace", False, "not tried: no user namespace",
                     "allow user namespaces (above)")
    if probe.get("overlay") is not None:
        return Check("overlayfs in a user namespace", False,
                     f"a child's mount failed ({probe['overlay']})",
                     "Linux 5.11 or later mounts overlayfs in a user namespace; else install "
                     "fuse-overlayfs")
    return Check("overlayfs in a user namespace", True, "a child mounted one")


def check_fuse() -> Check:
    exe = shutil.which("fuse-overlayfs")
    if exe is None:
        return Check("fuse-overlayfs", False, "not found", "apt-get install fuse-overlayfs")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        what = ("/dev/fuse is missing" if not os.path.exists("/dev/fuse")
                else "/dev/fuse is not readable and writable by this user")
        return Check("fuse-overlayfs", False, f"{exe}, but {what}",
                     "modprobe fuse; chmod 0666 /dev/fuse")
    return Check("fuse-overlayfs", True, f"{exe}, /dev/fuse usable")


def check_slirp() -> Check:
    from pybk.workers import slirp

    reason = slirp.missing()
    if reason is not None:
        what, _, fix = reason.partition(" (")
        return Check("slirp4netns", False, f"{what}: RUN steps would use the host's network",
                     fix.rstrip(")"))
    return Check("slirp4netns", True, f"{slirp.binary()}, {slirp.TUN_DEVICE} usable")


def check_runtime() -> Check:
    found = [f"{name} ({path})" for name in ("runc", "crun") if (path := shutil.which(name))]
    if not found:
        return Check("OCI runtime", False, "neither runc nor crun found", "apt-get install runc")
    return Check("OCI runtime", True, ", ".join(found))


def check_cgroups() -> Check:
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return Check("cgroups", False, "cgroup v1, no delegation: resource limits refused "
                     "rootless", "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2) and "
                     "delegate controllers to the user (systemd: Delegate=yes for user@.service)")
    own = next((line.partition("::")[2] for line in (_read("/proc/self/cgroup") or "")
                .splitlines() if line.startswith("0::")), "")
    directory = os.path.join("/sys/fs/cgroup", own.lstrip("/"))
    controllers = (_read(os.path.join(directory, "cgroup.controllers")) or "").split()
    if not os.access(directory, os.W_OK):
        return Check("cgroups", False, f"cgroup v2, but {directory} is not the user's: "
                     "resource limits refused rootless",
                     "delegate a cgroup to the user (systemd: Delegate=yes for user@.service)")
    return Check("cgroups", True, "cgroup v2, delegated controllers: "
                 + (" ".join(controllers) or "none"))


def check_runtime_dir(uid: int) -> Check:
    from pybk.core.paths import runtime_dir

    value = os.environ.get("XDG_RUNTIME_DIR", "")
    found = runtime_dir()
    if value and os.path.isabs(value):
        return Check("XDG_RUNTIME_DIR", True, f"{value}: the daemon's socket goes in "
                     f"{value}/pybk")
    if found is not None:
        return Check("XDG_RUNTIME_DIR", True, f"not set; {found} is used")
    return Check("XDG_RUNTIME_DIR", False, "not set and no /run/user/"
                 f"{uid}: the daemon's socket goes in the store",
                 "log in through systemd-logind (pam_systemd), or export XDG_RUNTIME_DIR")


def rootless_report() -> dict[str, Any]:
    """Every check for the invoking user, the snapshotter and network ``auto`` would pick,
    and whether a rootless build can run."""
    from pybk.core.paths import default_root, real_uid

    uid = real_uid()
    name = _user_name(uid)
    root = default_root()
    probe = _probe(root if os.path.isdir(root) and os.access(root, os.W_OK) else None)
    checks = [check_userns(probe), check_subids("uid", name, uid),
              check_subids("gid", name, uid), check_idmap_tool("newuidmap"),
              check_idmap_tool("newgidmap"), check_runtime(), check_overlay(probe),
              check_fuse(), check_slirp(), check_cgroups(), check_runtime_dir(uid)]
    checks = [evolve(c, needed=c.name in NEEDED) for c in checks]
    by_name = {c.name: c for c in checks}
    snapshotter = ("overlayfs" if by_name["overlayfs in a user namespace"].ok
                   else "fuse-overlayfs" if by_name["fuse-overlayfs"].ok else "native")
    network = "slirp4netns" if by_name["slirp4netns"].ok else "host"
    return {"user": name, "uid": uid, "checks": checks, "snapshotter": snapshotter,
            "network": network, "ready": all(c.ok for c in checks if c.needed)}


def debug_rootless_command(ns: argparse.Namespace) -> int:
    """Print the report; exit 0 when a rootless build can run, 1 when not."""
    if ns.format not in ("text", "json"):
        raise UsageError(f"unknown format {ns.format!r} (text or json)", flag="--format")
    report = rootless_report()
    if ns.format == "json":
        print(json.dumps({**report, "checks": [c.as_json() for c in report["checks"]]},
                         indent=2))
        return 0 if report["ready"] else 1
    for check in report["checks"]:
        print(check.line())
    print(f"snapshotter auto: {report['snapshotter']}")
    print(f"networkMode auto: {report['network']}")
    if report["ready"]:
        print(f"rootless builds can run as {report['user']}")
        return 0
    needed = ", ".join(c.name for c in report["checks"] if c.needed and not c.ok)
    print(f"rootless builds cannot run as {report['user']}: fix {needed}")
    return 1
