"""GC policy maths: the prune passes the garbage collector runs for a worker.

A worker's ``gcpolicy`` entries, or BuildKit's four defaults when it has none, resolved against
the size of the disk holding the store: sizes in bytes, durations in seconds.
"""

from __future__ import annotations

from pybk.core.config.schema import GCPolicy, WorkerBase
from pybk.core.model import Model
from pybk.core.units import DiskSpace, Seconds

__all__ = ["PruneRule", "default_gc_policies", "gc_prune_rules"]

#: BuildKit's automatic caps when nothing is configured (Unix)
_RESERVE_PERCENT, _RESERVE_MAX = 10, 10 * 1_000_000_000
_FREE_PERCENT = 20
_MAX_PERCENT, _MAX_MAX = 80, 100 * 1_000_000_000


class PruneRule(Model, kw_only=True):
    """One resolved prune pass: sizes in bytes, durations in seconds."""

    all: bool = False
    filters: tuple[str, ...] = ()
    keep_duration: float = 0.0
    reserved_space: int = 0
    max_used_space: int = 0
    min_free_space: int = 0


def _worker_caps(worker: WorkerBase, disk_total: int | None
                 ) -> tuple[DiskSpace, DiskSpace, DiskSpace]:
    """(reserved, maxUsed, minFree) of a worker, with BuildKit's fallbacks applied."""
    reserved, max_used, min_free = (worker.reserved_space, worker.max_used_space,
                                    worker.min_free_space)
    if reserved.is_unset and max_used.is_unset and min_free.is_unset:
        reserved = worker.gc_keep_storage
    if reserved.is_unset and max_used.is_unset and min_free.is_unset:
        reserved = DiskSpace(percentage=_RESERVE_PERCENT)
        if reserved.as_bytes(disk_total) > _RESERVE_MAX:
            reserved = DiskSpace(bytes=_RESERVE_MAX)
        max_used = DiskSpace(percentage=_MAX_PERCENT)
        if max_used.as_bytes(disk_total) > _MAX_MAX:
            max_used = DiskSpace(bytes=_MAX_MAX)
        min_free = DiskSpace(percentage=_FREE_PERCENT)
    return reserved, max_used, min_free


def default_gc_policies(worker: WorkerBase, disk_total: int | None) -> list[GCPolicy]:
    """BuildKit's four default policies for a worker without ``gcpolicy`` entries.

    Caps come from the worker's reservedSpace/maxUsedSpace/minFreeSpace, else gckeepstorage
    (as reservedSpace), else the automatic ones: reserved = min(10 %, 10 GB), minFree = 20 %,
    maxUsed = min(80 %, 100 GB).
    """
    reserved, max_used, min_free = _worker_caps(worker, disk_total)
    caps = {"reserved_space": reserved, "max_used_space": max_used, "min_free_space": min_free}
    return [
        GCPolicy(filters=["type==source.local", "type==exec.cachemount",
                          "type==source.git.checkout"],
                 keep_duration=Seconds(48 * 3600),
                 max_used_space=DiskSpace(bytes=512 * 1_000_000)),
        GCPolicy(keep_duration=Seconds(60 * 24 * 3600), **caps),
        GCPolicy(**caps),
        GCPolicy(all=True, **caps),
    ]


def gc_prune_rules(worker: WorkerBase, disk_total: int | None) -> list[PruneRule]:
    """What the garbage collector runs for ``worker``, in order ([] when ``gc = false``).

    ``disk_total`` is the size in bytes of the disk holding the store (percentages use it).
    """
    if not worker.gc_enabled:
        return []
    policies = worker.gc_policy or default_gc_policies(worker, disk_total)
    rules = []
    for policy in policies:
        reserved = policy.reserved_space
        if reserved.is_unset and not policy.keep_bytes.is_unset:
            reserved = policy.keep_bytes
        rules.append(PruneRule(
            all=policy.all,
            filters=tuple(policy.filters),
            keep_duration=float(policy.keep_duration),
            reserved_space=reserved.as_bytes(disk_total),
            max_used_space=policy.max_used_space.as_bytes(disk_total),
            min_free_space=policy.min_free_space.as_bytes(disk_total),
        ))
    return rules
