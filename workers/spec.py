"""The OCI runtime spec (``config.json``) of one ExecOp, plus its /etc/hosts and resolv.conf.

Defaults follow what BuildKit gets from containerd's default Unix spec: Docker's capability
set, a seccomp filter (:mod:`pybk.workers.seccomp`), the usual /proc, /dev, /sys mounts, masked
and read-only /proc paths, a device cgroup that denies everything runc does not add itself.
``security=insecure`` gives every capability the host allows, the host's devices and writable
/sys, and no seccomp filter.
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Sequence
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.interfaces import ExecMount, ProcessSpec
from pybk.workers import seccomp
from pybk.workers.limits import StepLimits, resources, rlimits
from pybk.workers.user import ResolvedUser

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_NOFILE = 1048576

#: every capability the kernel defines, in bit order
ALL_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

#: Docker's (and containerd's) default set
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

NETWORK_MODES = ("sandbox", "host", "none")
SECURITY_MODES = ("sandbox", "insecure")

# Host /dev entries never passed through to an insecure container.
_SKIP_HOST_DEV = {"pts", "shm", "fd", "mqueue", "console", ".lxc", ".lxd-mounts", ".udev"}


def host_capability_mask() -> int:
    """The capability bounding set of this process (what a container can be given at most)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return (1 << len(ALL_CAPABILITIES)) - 1


def capabilities(security: str, host_mask: int | None = None) -> list[str]:
    """``CAP_*`` names for a security mode, limited to what this host can grant."""
    mask = host_capability_mask() if host_mask is None else host_mask
    names = ALL_CAPABILITIES if security == "insecure" else DEFAULT_CAPABILITIES
    return [f"CAP_{n}" for n in names if mask >> ALL_CAPABILITIES.index(n) & 1]


def nofile_limit() -> int:
    """``RLIMIT_NOFILE`` for containers: 1048576, or our own hard limit if we cannot raise it."""
    has_sys_resource = host_capability_mask() >> ALL_CAPABILITIES.index("SYS_RESOURCE") & 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if has_sys_resource or hard == resource.RLIM_INFINITY:
        return DEFAULT_NOFILE
    return min(DEFAULT_NOFILE, hard)


def with_default_path(env: Sequence[str]) -> list[str]:
    """The environment, with BuildKit's default ``PATH`` added when there is none."""
    env = list(env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    return env


def hosts_file(hostname: str, extra_hosts: Sequence[tuple[str, str]] = ()) -> str:
    """/etc/hosts: localhost plus the container's hostname, then ``--add-host`` entries."""
    lines = [f"127.0.0.1\tlocalhost {hostname}".rstrip(),
             "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{host}" for host, ip in extra_hosts]
    return "\n".join(lines) + "\n"


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def host_resolv_conf() -> str:
    """The host's resolv.conf (systemd-resolved's upstream file when the stub is in use)."""
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    servers = [ln.split()[1] for ln in text.splitlines()
               if ln.startswith("nameserver") and len(ln.split()) > 1]
    if servers and all(s == "127.0.0.53" for s in servers):
        try:
            with open("/run/systemd/resolve/resolv.conf", encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except OSError:
            pass
    return text


def _with_dns(text: str, dns: Any) -> str:
    """``[dns]`` replaces the host's nameservers, search domains and options, each only when
    the config sets it (as BuildKit does)."""
    lines = text.splitlines()

    def values(key: str) -> list[str]:
        return [w for ln in lines if ln.split()[:1] == [key] for w in ln.split()[1:]]

    servers = list(dns.nameservers) or values("nameserver")
    search = list(dns.search_domains) or values("search") or values("domain")[-1:]
    options = list(dns.options) or values("options")
    out = [f"nameserver {s}" for s in servers]
    if search:
        out.append("search " + " ".join(search))
    if options:
        out.append("options " + " ".join(options))
    return "\n".join(out) + "\n"


def resolv_conf(network: str, host_text: str | None = None, dns: Any = None) -> str:
    """resolv.conf for the network a step runs in.

    Starts from the host's file, with ``[dns]`` applied (``dns``: nameservers, options,
    search_domains). ``host`` keeps it as it is; ``bridge``, ``cni`` (and ``sandbox``) drop
    loopback nameservers (unreachable from another network namespace: systemd-resolved's
    127.0.0.53, a local dnsmasq) and fall back to public resolvers like BuildKit when none is
    left; ``none`` keeps no nameserver at all.
    """
    text = host_resolv_conf() if host_text is None else host_text
    if dns is not None and (dns.nameservers or dns.options or dns.search_domains):
        text = _with_dns(text, dns)
    if network == "host":
        return text
    kept: list[str] = []
    servers = 0
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            if network == "none" or _is_loopback(words[1]):
                continue
            servers += 1
        kept.append(line)
    if network != "none" and servers == 0:
        kept += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(kept) + "\n" if kept else ""


def _bind_options(options: Sequence[str], readonly: bool) -> list[str]:
    opts = list(options)
    if "bind" not in opts and "rbind" not in opts:
        opts.insert(0, "rbind")
    if readonly:
        opts = [o for o in opts if o != "rw"]
        if "ro" not in opts:
            opts.append("ro")
    return opts


def exec_mount_entries(em: ExecMount) -> list[dict[str, Any]]:
    """OCI mount entries for one ExecMount (several entries stack on the same destination)."""
    entries = []
    for m in em.mounts:
        if m.type == "bind":
            options = _bind_options(m.options, em.readonly)
        else:
            options = [o for o in m.options if not (em.readonly and o == "rw")]
            if em.readonly and "ro" not in options:
                options.append("ro")
        entries.append({"destination": em.dest, "type": m.type,
                        "source": m.source or m.type, "options": options})
    return entries


def bind_entry(source: str, dest: str, *, readonly: bool = True) -> dict[str, Any]:
    options = ["rbind", "ro"] if readonly else ["rbind"]
    return {"destination": dest, "type": "bind", "source": source,
            "options": options + ["nosuid", "nodev"]}


def system_mounts(security: str, no_process_sandbox: bool) -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and the cgroup tree."""
    insecure = security == "insecure"
    proc: dict[str, Any] = (
        {"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind"]}
        if no_process_sandbox else
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]})
    ro_or_rw = "rw" if insecure else "ro"
    return [
        proc,
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", ro_or_rw]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [ro_or_rw, "nosuid", "noexec", "nodev"]},
    ]


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """Character and block devices of the host, for an insecure container."""
    devices = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d not in _SKIP_HOST_DEV]
        for name in sorted(filenames):
            if dirpath == root and name in _SKIP_HOST_DEV:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                devices.append({
                    "path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                    "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                })
    return devices


def _oom_score_adj() -> int:
    try:
        with open("/proc/self/oom_score_adj", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def validate(process: ProcessSpec) -> None:
    if not process.args:
        raise BuildError("no command to run (empty args)")
    if process.network not in NETWORK_MODES:
        raise BuildError(f"unknown network mode {process.network!r}"
                         f" (expected one of {', '.join(NETWORK_MODES)})")
    if process.security not in SECURITY_MODES:
        raise BuildError(f"unknown security mode {process.security!r}"
                         f" (expected one of {', '.join(SECURITY_MODES)})")


def generate_spec(
    process: ProcessSpec,
    *,
    rootfs: str,
    user: ResolvedUser,
    mounts: Sequence[dict[str, Any]] = (),
    hosts_path: str,
    resolv_conf_path: str,
    netns_path: str | None = None,
    no_process_sandbox: bool = False,
    limits: StepLimits | None = None,
    cgroups_path: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of one run.

    ``mounts`` are extra OCI mount entries (user mounts, secrets, ssh sockets) in order;
    ``netns_path`` joins an existing network namespace instead of creating one; ``limits``
    become ``linux.resources`` (memory, pids), the process's ``ulimits`` its ``rlimits``;
    ``cgroups_path`` is ``linux.cgroupsPath`` (None: the runtime's default).
    """
    validate(process)
    insecure = process.security == "insecure"
    caps = capabilities(process.security)
    nofile = nofile_limit()
    user_spec: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        user_spec["additionalGids"] = list(user.additional_gids)
    cwd = process.cwd if process.cwd.startswith("/") else "/" + process.cwd

    namespaces: list[dict[str, str]] = []
    if not no_process_sandbox:
        namespaces.append({"type": "pid"})
    namespaces += [{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if process.network != "host":
        namespaces.append({"type": "network", "path": netns_path} if netns_path
                          else {"type": "network"})
    namespaces.append({"type": "cgroup"})

    masked: list[str] = [] if insecure else list(MASKED_PATHS)
    readonly: list[str] = [] if insecure else list(READONLY_PATHS)
    if no_process_sandbox:
        masked = [p for p in masked if not p.startswith("/proc")]
        readonly = [p for p in readonly if not p.startswith("/proc")]

    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "resources": {"devices": [{"allow": insecure, "access": "rwm"}],
                      **resources(limits or StepLimits())},
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    if insecure:
        linux["devices"] = host_devices()
    elif seccomp.supported():
        linux["seccomp"] = seccomp.default_profile()

    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": user_spec,
            "args": list(process.args),
            "env": with_default_path(process.env),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits(process.ulimits, nofile),
            "noNewPrivileges": False,
            "oomScoreAdj": _oom_score_adj(),
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": process.hostname,
        "mounts": [
            *system_mounts(process.security, no_process_sandbox),
            bind_entry(resolv_conf_path, "/etc/resolv.conf"),
            bind_entry(hosts_path, "/etc/hosts"),
            *mounts,
        ],
        "linux": linux,
    }
