"""Resource limits of RUN containers, and why a step that failed was stopped.

What every container gets (:class:`StepLimits`, from the config): a memory limit (``[pybk]
step-memory``, swap included where the kernel accounts it) and a pids limit (``[pybk]
step-pids``), written by the OCI runtime from ``linux.resources``; a cgroup parent
(``[worker.oci] defaultCgroupParent``, or the op's ``cgroupParent``) under which the container's
cgroup is made as BuildKit makes it: ``/<parent>/buildkit/<container id>``. What each op adds:
its ``ulimit`` entries, as ``process.rlimits``.

After a step failed, :func:`inspect_cgroups` reads the counters of the stopped container's
cgroups (kept by ``runc run --keep`` until read) and :func:`disk_full` the free space of the
filesystem its root was written to; the executor turns what they found into a
:class:`~pybk.core.errors.StepLimitError`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.config.schema import check_cgroup_parent
from pybk.core.errors import BuildError
from pybk.core.model import Model, evolve

#: ``[pybk] step-pids`` by default: far more than any build (``make -j``, a JVM's threads)
#: needs, far fewer than it takes to exhaust the host's pid table
DEFAULT_STEP_PIDS = 4096
#: ``[pybk] step-memory`` by default: this percentage of the host's RAM
DEFAULT_STEP_MEMORY_PERCENT = 75

#: ``ulimit`` names (docker/go-units ``ParseUlimit``) and their ``RLIMIT_*`` types
ULIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")

CGROUP_ROOT = "/sys/fs/cgroup"
#: a filesystem with less free space than this (or :data:`DISK_FULL_RATIO` of its size, if
#: smaller) after a failed step counts as full
DISK_FULL_BYTES = 16 << 20
DISK_FULL_RATIO = 0.02


class StepLimits(Model):
    """The limits every RUN container gets: ``memory`` and ``pids`` (0: none), and the
    cgroup parent of steps whose op names none (empty: the runtime's default place)."""

    memory: int = 0
    pids: int = 0
    cgroup_parent: str = ""
    #: where the values come from, for the failure messages
    memory_source: str = "[pybk] step-memory"
    pids_source: str = "[pybk] step-pids"
    #: what the op asked for besides (``memory_swap``, the CPU keys): see :meth:`for_step`
    requested: tuple[tuple[str, int | str], ...] = ()

    def for_step(self, requested: Sequence[tuple[str, int | str]]) -> StepLimits:
        """The limits of one step whose op asked for ``requested`` (its ``linux_resources``,
        buildx ``--resource``): its memory limit where it is below this one (a client cannot
        lift the daemon's), and its swap and CPU settings."""
        if not requested:
            return self
        asked = dict(requested)
        memory = int(asked.pop("memory", 0) or 0)
        changes: dict[str, Any] = {"requested": tuple(asked.items())}
        if memory > 0 and (self.memory == 0 or memory < self.memory):
            changes.update(memory=memory, memory_source="--resource memory")
        else:
            asked.pop("memory_swap", None)  # the daemon's limit applies, without swap
            changes["requested"] = tuple(asked.items())
        return evolve(self, **changes)

    @classmethod
    def from_config(cls, config: Any) -> StepLimits:
        """``[pybk] step-memory`` / ``step-pids`` and ``[worker.oci] defaultCgroupParent``."""
        return cls.from_sections(config.pybk, config.worker.oci)

    @classmethod
    def from_sections(cls, pybk: Any, oci: Any) -> StepLimits:
        """The same from the ``[pybk]`` and ``[worker.oci]`` sections."""
        return cls(memory=memory_bytes(pybk.step_memory), pids=pybk.step_pids,
                   cgroup_parent=oci.default_cgroup_parent)


def host_memory() -> int:
    """The host's RAM in bytes (``MemTotal``)."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def memory_bytes(value: Any, total: int | None = None) -> int:
    """A :class:`~pybk.core.units.DiskSpace` read as memory: bytes, or a percentage of
    ``total`` (the host's RAM); 0 when unset (no limit)."""
    if value.bytes:
        return int(value.bytes)
    if value.percentage:
        return (host_memory() if total is None else total) * value.percentage // 100
    return 0


def cgroups_path(parent: str, container_id: str) -> str | None:
    """``linux.cgroupsPath`` under ``parent`` (BuildKit's ``/<parent>/buildkit/<id>``); None
    (the runtime's default) without one."""
    if not parent:
        return None
    try:
        check_cgroup_parent(parent)
    except ValueError as e:
        raise BuildError(f"cgroup parent {e}") from None
    return "/" + "/".join(p for p in (*parent.split("/"), "buildkit", container_id) if p)


def _swap_accounted() -> bool:
    """Whether a memory limit can include swap (cgroup v1 ``memsw``, or v2's ``swap.max``)."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "memory", "memory.memsw.limit_in_bytes")):
        return True
    try:
        with open(os.path.join(CGROUP_ROOT, "cgroup.controllers"), encoding="ascii") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


#: ``linux.resources.cpu`` keys of the requested CPU settings
_CPU = {"cpu_shares": "shares", "cpu_period": "period", "cpu_quota": "quota",
        "cpuset_cpus": "cpus", "cpuset_mems": "mems"}


def resources(limits: StepLimits) -> dict[str, Any]:
    """``linux.resources`` entries (besides ``devices``) for ``limits``."""
    out: dict[str, Any] = {}
    asked = dict(limits.requested)
    if limits.memory:
        memory: dict[str, Any] = {"limit": limits.memory}
        swap = int(asked.get("memory_swap", 0) or 0)
        if swap and (swap == -1 or swap >= limits.memory):
            memory["swap"] = swap  # the op's own memory + swap
        elif _swap_accounted():
            memory["swap"] = limits.memory  # memory + swap: no swap beyond the limit
        out["memory"] = memory
    if limits.pids:
        out["pids"] = {"limit": limits.pids}
    cpu = {key: asked[name] for name, key in _CPU.items() if asked.get(name)}
    if cpu:
        out["cpu"] = cpu
    return out


def rlimits(ulimits: Sequence[tuple[str, int, int]], nofile: int) -> list[dict[str, Any]]:
    """``process.rlimits``: ``RLIMIT_NOFILE`` at ``nofile``, then the op's ``ulimit`` entries
    (one of the same type replaces it)."""
    out: dict[str, dict[str, Any]] = {
        "RLIMIT_NOFILE": {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}}
    for name, soft, hard in ulimits:
        key = name.lower()
        if key not in ULIMIT_NAMES:
            raise BuildError(f"unknown ulimit {name!r} (one of {', '.join(ULIMIT_NAMES)})")
        if soft > hard and hard >= 0:
            raise BuildError(f"ulimit {name}: soft limit {soft} is above hard limit {hard}")
        kind = f"RLIMIT_{key.upper()}"
        out[kind] = {"type": kind, "hard": _rlim(hard), "soft": _rlim(soft)}
    return list(out.values())


def _rlim(value: int) -> int:
    return 2**64 - 1 if value < 0 else value  # -1: unlimited (RLIM_INFINITY)


# ------------------------------------------------------------------------------------------
# after a failed step
# ------------------------------------------------------------------------------------------


def cgroup_paths(state_dir: str) -> dict[str, str]:
    """The cgroup directories (controller -> path) of a container from its runtime state
    (runc's ``state.json``); empty when unknown."""
    try:
        with open(os.path.join(state_dir, "state.json"), "rb") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    paths = state.get("cgroup_paths") or {}
    return {str(k): str(v) for k, v in paths.items() if isinstance(v, str)}


def _read(path: str) -> str:
    with contextlib.suppress(OSError), open(path, encoding="ascii") as f:
        return f.read()
    return ""


def _field(text: str, name: str) -> int:
    """``name N`` in a flat-keyed cgroup file (``memory.oom_control``, ``pids.events``)."""
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == name and words[1].isdigit():
            return int(words[1])
    return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n % (1 << 20) == 0 or n >= 10 << 20 else f"{n} bytes"


def inspect_cgroups(paths: Mapping[str, str], limits: StepLimits) -> str | None:
    """Why the stopped container was stopped, if a limit did it: its memory cgroup saw an
    OOM kill, its pids cgroup refused a fork (both, when a fork bomb also ran out of memory).
    ``paths``: :func:`cgroup_paths`."""
    reasons = []
    memory = paths.get("memory") or paths.get("")
    if memory:
        events = _read(os.path.join(memory, "memory.oom_control"))
        oom = _field(events, "oom_kill")
        if not events:  # cgroup v2
            oom = _field(_read(os.path.join(memory, "memory.events")), "oom_kill")
        if oom:
            reasons.append(f"the step ran out of memory (limit {_mib(limits.memory)}, "
                           f"{limits.memory_source})" if limits.memory else
                           "the step ran out of memory (killed by the kernel's OOM killer)")
    pids = paths.get("pids") or paths.get("")
    if pids:
        refused = _field(_read(os.path.join(pids, "pids.events")), "max")
        if refused:
            limit = _read(os.path.join(pids, "pids.max")).strip() or str(limits.pids)
            source = f", {limits.pids_source}" if limits.pids else ""
            reasons.append(f"the step hit its process limit: {refused} fork(s) refused "
                           f"(limit {limit} processes and threads{source})")
    return "; ".join(reasons) or None


def disk_full(path: str, store: str) -> str | None:
    """A message when the filesystem of ``path`` (the step's root, written to the store)
    is (nearly) full, else None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    size = st.f_blocks * st.f_frsize
    free = st.f_bfree * st.f_frsize
    if size == 0 or free >= min(DISK_FULL_BYTES, int(size * DISK_FULL_RATIO)):
        return None
    return (f"no space left on device: the store at {store} is full ({_mib(free)} free of "
            f"{_mib(size)}); the step's snapshot was discarded")
