"""RUN steps of a rootless worker: the OCI runtime with ``--rootless true``, a spec without
what needs real root, and no cgroups.

A rootless worker runs in a user namespace (:mod:`pybk.core.userns`), or as root with
``[worker.oci] rootless = true``. Its cgroups are not delegated to it (cgroup v1 never
delegates; v2 only through systemd), so the spec has no cgroup path and no ``linux.resources``
and the runtime makes no cgroup. A step that asks for a limit — ``[pybk] step-memory`` or
``step-pids`` set to other than their defaults, ``defaultCgroupParent``, the op's
``cgroupParent`` or ``--resource`` settings, a ``ulimit`` above this process's hard limit — is
refused naming it; the defaults themselves (75 % of the RAM, 4096 processes) are silently not
applied. Mounts that need real root are replaced as runc's rootless spec conversion replaces
them: ``/sys`` is bound from the host (read-only) where the step shares the host's network
namespace, and the cgroup tree is not mounted (``/sys/fs/cgroup`` comes with that bind).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from typing import Any

from pybk.core.errors import BuildError, ConfigError
from pybk.workers.limits import DEFAULT_STEP_MEMORY_PERCENT, DEFAULT_STEP_PIDS, StepLimits

#: why limits are refused
NOT_DELEGATED = ("cgroups are not delegated to a rootless pybk (its steps get no cgroup of "
                 "their own), so")


def rootless_limits(pybk: Any, oci: Any) -> StepLimits:
    """No limits; a limit set in the configuration is refused (:class:`ConfigError`)."""
    asked = []
    memory = getattr(pybk, "step_memory", None)
    if memory is not None and (memory.bytes or memory.percentage not in (
            0, DEFAULT_STEP_MEMORY_PERCENT)):
        asked.append("[pybk] step-memory")
    if getattr(pybk, "step_pids", 0) not in (0, DEFAULT_STEP_PIDS):
        asked.append("[pybk] step-pids")
    if getattr(oci, "default_cgroup_parent", ""):
        asked.append("[worker.oci] defaultCgroupParent")
    if asked:
        raise ConfigError([f"{NOT_DELEGATED} {' and '.join(asked)} cannot be applied; remove "
                           f"{'them' if len(asked) > 1 else 'it'} from the configuration"])
    return StepLimits()


def check_step(cgroup_parent: str, requested: Sequence[tuple[str, Any]],
               ulimits: Sequence[tuple[str, int, int]]) -> None:
    """Refuse what a rootless step cannot get (:class:`BuildError`)."""
    if cgroup_parent:
        raise BuildError(f"{NOT_DELEGATED} the step's cgroup parent {cgroup_parent!r} "
                         "cannot be used")
    asked = [name for name, value in requested if value]
    if asked:
        raise BuildError(f"{NOT_DELEGATED} the step's resource settings "
                         f"({', '.join(asked)}) cannot be applied")
    for name, soft, hard in ulimits:
        kind = getattr(resource, f"RLIMIT_{name.upper()}", None)
        if kind is None:
            continue  # unknown: refused by the spec
        _, own = resource.getrlimit(kind)
        if own == resource.RLIM_INFINITY:
            continue
        for value in (soft, hard):
            if value < 0 or value > own:
                raise BuildError(f"ulimit {name}={soft}:{hard} is above the hard limit "
                                 f"{own} of this rootless pybk: only root may raise it")


def nofile_limit(default: int) -> int:
    """``RLIMIT_NOFILE`` of a rootless container: at most this process's hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return default if hard == resource.RLIM_INFINITY else min(default, hard)


def convert_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a rootless run (in place): no cgroup path, no resources, no
    cgroup mount; ``/sys`` bound from the host where the step has no network namespace of its
    own (a sysfs mount needs one owned by this user namespace)."""
    linux = config["linux"]
    linux.pop("cgroupsPath", None)
    linux.pop("resources", None)
    own_netns = any(ns["type"] == "network" for ns in linux["namespaces"])
    mounts = []
    for entry in config["mounts"]:
        if entry["destination"] == "/sys/fs/cgroup" and entry["type"] == "cgroup":
            continue
        if entry["destination"] == "/sys" and entry["type"] == "sysfs" and not own_netns:
            options = ["rbind", "nosuid", "noexec", "nodev", "ro"]
            entry = {"destination": "/sys", "type": "bind", "source": "/sys",
                     "options": options}
        mounts.append(entry)
    config["mounts"] = mounts
    clamp_rlimits(config)
    return config


def runtime_flags(binary: str, rootless: bool) -> tuple[str, ...]:
    """The runtime's global flags of a rootless worker: ``--rootless true``, and for crun no
    cgroup manager at all (it would try the cgroups it cannot use)."""
    if not rootless:
        return ()
    if os.path.basename(binary).startswith("crun"):
        return ("--rootless=true", "--cgroup-manager=disabled")
    return ("--rootless", "true")


def clamp_rlimits(config: dict[str, Any]) -> None:
    """``RLIMIT_NOFILE`` no higher than this process's hard limit (raising it needs real
    root)."""
    for entry in config["process"].get("rlimits", ()):
        if entry["type"] == "RLIMIT_NOFILE":
            entry["hard"] = nofile_limit(entry["hard"])
            entry["soft"] = min(entry["soft"], entry["hard"])


def network_options(options: Any) -> Any:
    """The network of a rootless worker's steps, decided here: in a user namespace
    ``bridge`` is slirp4netns (a namespace per step, :mod:`pybk.workers.slirp`), ``auto`` is
    slirp4netns when it can be used, else ``host`` (:func:`pybk.workers.network.resolve_mode`
    makes that choice when a step runs), ``host``, ``none`` and ``slirp4netns`` are
    themselves; ``cni`` needs real root and is refused. A root worker with ``rootless =
    true`` keeps every mode (it can still make veths)."""
    from pybk.core.userns import in_user_namespace

    if options.mode == "cni" and in_user_namespace():
        raise ConfigError(['[worker.oci] networkMode = "cni" needs root: a rootless pybk '
                           'runs steps with networkMode "bridge" (slirp4netns), "host" or '
                           '"none"'])
    return options
