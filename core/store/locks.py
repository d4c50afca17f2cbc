"""Named file locks shared by every pybk process on one store, and process identities.

A lock is an ``flock(2)`` on ``<dir>/<name>.lock``. Each acquisition opens its own file
description, so locks conflict between threads and asyncio tasks of one process exactly as they
do between processes. Async waiters of the same name queue on an in-process gate first, so at
most one thread per contended name sits in a blocking ``flock``.

A process is identified by ``boot_id:pid:start_time``; :func:`is_alive` tells whether the process
that wrote such an identity still runs (a reused pid has another start time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import hashlib
import os
import re
import threading
import weakref
from pathlib import Path

from pybk.core.fs.files import private_dir

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,80}")

#: threads that wait in blocking flock() for async callers (kept apart from the default pool so
#: file-tree work in ``asyncio.to_thread`` never starves behind lock waiters)
_WAITERS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="pybk-lock")


# --------------------------------------------------------------------------------------------
# Process identity
# --------------------------------------------------------------------------------------------


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19]


_identity_cache: tuple[int, str] | None = None


def process_identity() -> str:
    """This process's identity ``boot_id:pid:start_time`` (recomputed after a fork)."""
    global _identity_cache
    pid = os.getpid()
    if _identity_cache is None or _identity_cache[0] != pid:
        _identity_cache = (pid, f"{_boot_id()}:{pid}:{_start_time(pid)}")
    return _identity_cache[1]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(identity: str) -> bool:
    """Whether the process with this identity still runs."""
    try:
        boot, pid, start = identity.rsplit(":", 2)
    except ValueError:
        return False
    if boot != _boot_id():
        return False
    return _start_time(int(pid)) == start


# --------------------------------------------------------------------------------------------
# File locks
# --------------------------------------------------------------------------------------------


def lock_file_name(name: str) -> str:
    """File name for a lock name: readable when safe, else sanitised plus a short hash."""
    if _SAFE_NAME.fullmatch(name) and not name.startswith("."):
        return name + ".lock"
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60].lstrip(".")
    return f"{readable}-{digest}.lock"


class FileLock:
    """One acquisition of a named lock; a (sync or async) context manager.

    ``shared=True`` takes a shared (reader) lock, otherwise an exclusive one.
    """

    def __init__(self, path: Path, gate: asyncio.Lock | None = None, *, shared: bool = False):
        self.path = path
        self.shared = shared
        self._gate = gate
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _op(self) -> int:
        return fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once when it is held."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path.name} already held by this object")
        fd = self._open()
        try:
            fcntl.flock(fd, self._op() | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def acquire_async(self) -> None:
        """Take the lock without blocking the event loop; cancellation leaves it released."""
        if self.acquire(blocking=False):
            return
        fd = self._open()
        loop = asyncio.get_running_loop()
        gate = self._gate or asyncio.Lock()
        try:
            async with gate:
                waiter = loop.run_in_executor(_WAITERS, fcntl.flock, fd, self._op())
                try:
                    await asyncio.shield(waiter)
                except asyncio.CancelledError:
                    # the thread keeps waiting; close the descriptor (dropping the lock) once it
                    # returns
                    waiter.add_done_callback(lambda _f, fd=fd: os.close(fd))
                    fd = -1
                    raise
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor of this file description drops the flock

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> FileLock:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Locks:
    """Named locks under one directory (``<store>/locks``)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._gates: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, bool], asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        self._gates_mutex = threading.Lock()

    def path(self, name: str) -> Path:
        return self.directory / lock_file_name(name)

    def _gate(self, name: str, shared: bool) -> asyncio.Lock | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        with self._gates_mutex:
            gates = self._gates.setdefault(loop, {})
            gate = gates.get((name, shared))
            if gate is None:
                gate = gates[(name, shared)] = asyncio.Lock()
            return gate

    def lock(self, name: str, *, shared: bool = False) -> FileLock:
        """A new, not yet acquired, lock object for ``name``.

        Use it as ``with locks.lock(n):`` from threads or ``async with locks.lock(n):`` from
        asyncio (create it inside the coroutine so it finds its event loop).
        """
        return FileLock(self.path(name), self._gate(name, shared), shared=shared)

    def try_lock(self, name: str, *, shared: bool = False) -> FileLock | None:
        """The held lock if it was free, else None."""
        lock = FileLock(self.path(name), shared=shared)
        return lock if lock.acquire(blocking=False) else None


# --------------------------------------------------------------------------------------------
# Slots shared by the processes of a store
# --------------------------------------------------------------------------------------------


class SharedSlots:
    """At most ``n`` holders at a time among every process building in one store: BuildKit's
    daemon-wide ``max-parallelism``, for pybkd's per-command processes and embedded builds
    alike. A slot is an ``flock`` on one of ``n`` files in ``directory``; an async context
    manager (``async with slots:``), fair enough: a waiter polls the free slots every few
    milliseconds, backing off to 50 ms."""

    def __init__(self, directory: str | os.PathLike[str], n: int):
        self.directory = Path(directory)
        self.n = n
        self._local = asyncio.Semaphore(n)
        self._held: dict[asyncio.Task, int] = {}

    def _try(self) -> int | None:
        private_dir(self.directory)
        start = os.getpid() % self.n
        for i in range(self.n):
            path = self.directory / f"slot-{(start + i) % self.n}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            delay = 0.005
            while (fd := self._try()) is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._local.release()
            raise
        self._held[asyncio.current_task()] = fd  # type: ignore[index]

    async def __aexit__(self, *exc_info: object) -> None:
        fd = self._held.pop(asyncio.current_task())  # type: ignore[arg-type]
        os.close(fd)
        self._local.release()
