"""Memory of a daemon's process tree, sampled from ``/proc``.

A daemon here is a process tree: pybkd's zygote and the children it forks per connection
(and what they run: runc, the steps' processes), dockerd and the containerd it starts (and its
shims, runc, the steps). :func:`tree_usage` sums the tree's resident memory once; a
:class:`TreeSampler` thread does it at a short interval for several daemons and keeps the
series, so the peak of any time window can be read afterwards.

Two sums are kept: **RSS**, the sum of every process's ``VmRSS`` (pages shared between
processes — a forked child's copy-on-write pages from its parent, shared libraries — count
once per process, so the sum over-states a tree of forked children), and **PSS**, the sum of
``Pss`` from ``smaps_rollup`` (each shared page divided among its sharers: what the tree really
occupies). The root's ``VmHWM`` (its own peak RSS, kept by the kernel) is recorded too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TreeUsage:
    """One sample of one process tree; sizes in KiB."""

    time: float  # time.monotonic()
    rss: int = 0  # sum of VmRSS
    pss: int = 0  # sum of Pss (0 where smaps_rollup cannot be read)
    procs: int = 0  # processes in the tree
    largest: int = 0  # VmRSS of the largest process
    root_hwm: int = 0  # VmHWM of the root process


def parent_table() -> dict[int, int]:
    """{pid: parent pid} of every process (one read of each ``/proc/PID/stat``)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(b")") + 2:].split()
        parents[int(name)] = int(fields[1])
    return parents


def tree_pids(root: int, parents: dict[int, int]) -> list[int]:
    """``root`` and all its descendants present in ``parents``, root first."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    if root not in parents:
        return []
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def status_kib(pid: int, keys: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """The named ``kB`` fields of ``/proc/PID/status`` (missing ones, e.g. a kernel thread's
    or a zombie's, are 0); {} when the process is gone."""
    values = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return values


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_usage(root: int, parents: dict[int, int] | None = None,
               pss: bool = True) -> TreeUsage:
    """The memory of ``root`` and its descendants now."""
    now = time.monotonic()
    pids = tree_pids(root, parent_table() if parents is None else parents)
    rss = pss_sum = largest = hwm = procs = 0
    for pid in pids:
        status = status_kib(pid)
        if not status:
            continue
        procs += 1
        rss += status["VmRSS"]
        largest = max(largest, status["VmRSS"])
        if pid == root:
            hwm = status["VmHWM"]
        if pss:
            pss_sum += pss_kib(pid)
    return TreeUsage(now, rss, pss_sum, procs, largest, hwm)


def peak(samples: list[TreeUsage], field: str = "rss") -> int:
    return max((getattr(s, field) for s in samples), default=0)


class TreeSampler:
    """Samples the process trees of several daemons every ``interval`` seconds in a thread.

    ``roots`` maps a label to a function returning the daemon's root pid now (None while it
    is not running: a daemon restarted on a new store has a new pid)."""

    def __init__(self, roots: dict[str, Callable[[], int | None]], interval: float = 0.1,
                 pss: bool = True):
        self.roots = roots
        self.interval = interval
        self.pss = pss
        self.series: dict[str, list[TreeUsage]] = {label: [] for label in roots}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, TreeUsage]:
        """One sample of every running daemon, also added to the series."""
        parents = parent_table()
        taken = {}
        for label, root in self.roots.items():
            pid = root()
            if pid is None:
                continue
            usage = tree_usage(pid, parents, self.pss)
            if usage.procs:
                taken[label] = usage
        with self.lock:
            for label, usage in taken.items():
                self.series[label].append(usage)
        return taken

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a bad read must not end the sampling
                continue

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def window(self, label: str, start: float, end: float | None = None) -> list[TreeUsage]:
        """The samples of ``label`` taken between ``start`` and ``end`` (monotonic times)."""
        end = time.monotonic() if end is None else end
        with self.lock:
            return [s for s in self.series.get(label, ()) if start <= s.time <= end]

    def settle(self, label: str, timeout: float = 5.0, quiet: float = 0.5) -> TreeUsage | None:
        """Wait until the daemon's tree has stopped shrinking (its per-build processes have
        exited: the same process count for ``quiet`` seconds), then return a sample: the
        idle daemon. None when it is not running."""
        root = self.roots[label]
        deadline = time.monotonic() + timeout
        last: TreeUsage | None = None
        since = time.monotonic()
        while True:
            pid = root()
            if pid is None:
                return None
            usage = tree_usage(pid, pss=self.pss)
            if last is None or usage.procs != last.procs:
                since = time.monotonic()
            last = usage
            if time.monotonic() - since >= quiet or time.monotonic() >= deadline:
                return usage
            time.sleep(min(0.1, quiet / 2))


def mib(kib: float | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)
