"""The seccomp filter of sandboxed RUN steps (``security=sandbox``, the default).

BuildKit runs sandboxed steps under containerd's default seccomp profile; ``security=insecure``
runs without one. pybk's profile keeps the part of it that matters beyond the capability set
(which already stops mounting, module loading, raw I/O, rebooting, setting the clock …): it
allows every system call except those that reach kernel state no container should touch or
that open a path out of the sandbox without any capability:

- new namespaces: ``unshare``, ``setns``, and ``clone`` with a namespace flag (an unprivileged
  user namespace would hand the step every capability inside it); ``clone3``, whose flags a
  filter cannot see, answers ENOSYS so libc falls back to ``clone``;
- the kernel keyring (not namespaced): ``keyctl``, ``add_key``, ``request_key``;
- ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, ``open_by_handle_at``,
  ``kcmp``, ``lookup_dcookie``, ``fanotify_init``, and the obsolete ``uselib``, ``ustat``,
  ``sysfs``, ``_sysctl``, ``vm86*``.

Everything denied fails with EPERM, as under Docker's profile.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

EPERM = 1
ENOSYS = 38

#: CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
#: CLONE_NEWNET, CLONE_NEWTIME
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000, 0x00000080)

DENIED = (
    "unshare", "setns",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "kcmp", "lookup_dcookie", "fanotify_init",
    "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
)

#: seccomp architectures of each machine (the native one and its compat ABIs)
ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "armv7l": ("SCMP_ARCH_ARM",),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}


def _clone_flags_arg(machine: str) -> int:
    # s390 swaps clone's first two arguments
    return 1 if machine.startswith("s390") else 0


def default_profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a sandboxed step on ``machine`` (default: this
    one)."""
    machine = machine or platform.machine()
    flags_arg = _clone_flags_arg(machine)
    syscalls: list[dict[str, Any]] = [
        {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    # one rule a flag: the rules of a name are alternatives, the conditions of a rule all hold
    syscalls += [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                  "args": [{"index": flags_arg, "value": flag, "valueTwo": flag,
                            "op": "SCMP_CMP_MASKED_EQ"}]}
                 for flag in NAMESPACE_FLAGS]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(ARCHITECTURES.get(machine, ())),
        "syscalls": syscalls,
    }


@functools.cache
def supported() -> bool:
    """Whether this kernel filters system calls (``Seccomp:`` in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False
