"""The scheduler: walks a loaded graph, computes cache keys, runs what is missing.

Each vertex is solved in two steps, each done at most once per build:

``key``
    its cache key, from its cache map and its inputs' keys (or, for inputs read through
    selectors, their content checksums). Sources resolve here: an image ref to its manifest
    digest, a local directory is synced and checksummed.
``result``
    its output refs: from the local cache when the key is known, else by running the op on its
    inputs' results, at most ``max_parallelism`` ops at a time.

Because only ``key`` recurses unconditionally, a fully cached graph is answered without
loading any input. Identical work in concurrent builds in one process runs once: executions are
shared through an in-flight map keyed by cache key. The first failing vertex cancels the rest;
cancelled steps release their mounts and snapshots on the way out.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pybk.core import daemonstate
from pybk.core.errors import BuildError, PybkError, SolveError
from pybk.core.llb.ops import Input
from pybk.core.model import Model, field
from pybk.core.progress.events import Progress, VertexProgress
from pybk.core.solver.cachekey import cache_map, compute_key, content_selectors, key_inputs
from pybk.core.solver.results import Ref, VertexStats
from pybk.core.solver.vertex import Graph, Vertex

T = TypeVar("T")

CANCELED = "context canceled"


class _Shared:
    """One in-flight execution shared by every build that needs it."""

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.waiters = 0


class InFlight:
    """Runs each keyed job once at a time per event loop; later callers await the first.

    A job is cancelled only when every caller waiting on it was cancelled.
    """

    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Shared]] = (
        weakref.WeakKeyDictionary())

    @classmethod
    def _jobs(cls) -> dict[str, _Shared]:
        loop = asyncio.get_running_loop()
        jobs = cls._per_loop.get(loop)
        if jobs is None:
            jobs = cls._per_loop[loop] = {}
        return jobs

    @classmethod
    async def run(cls, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``factory()`` under ``key`` or join the run in progress.

        Returns ``(value, joined)``; ``joined`` is True when another caller did the work.
        """
        jobs = cls._jobs()
        shared = jobs.get(key)
        joined = shared is not None
        if shared is None:
            task = asyncio.ensure_future(factory())
            shared = jobs[key] = _Shared(task)
            task.add_done_callback(lambda t, k=key, s=shared: cls._forget(jobs, k, s))
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.task), joined
        except asyncio.CancelledError:
            if not shared.task.done():
                shared.waiters -= 1
                if shared.waiters == 0:
                    shared.task.cancel()
                    with contextlib.suppress(BaseException):
                        await shared.task
            raise

    @staticmethod
    def _forget(jobs: dict[str, _Shared], key: str, shared: _Shared) -> None:
        if jobs.get(key) is shared:
            del jobs[key]


class CacheEntry(Model):
    """A vertex result a cache export may write: its key, outputs and inputs' record keys
    (``(input key, output index)``, None for an input without a key)."""

    vertex: Vertex
    key: str
    refs: dict[int, Ref]
    inputs: tuple[tuple[str, int] | None, ...] = ()


class VertexOutcome(Model):
    """What the scheduler knows about a vertex once its result is available."""

    refs: dict[int, Ref]
    cached: bool
    extra: dict[str, Any] = field(factory=dict)


class OpRunner(abc.ABC):
    """What the scheduler needs from the worker side, per build (see :mod:`.ops`)."""

    @abc.abstractmethod
    async def source_key(self, vertex: Vertex, vp: VertexProgress) -> tuple[str, VertexOutcome | None]:
        """Key of a source op; sources that produce their result while keying return it."""

    @abc.abstractmethod
    async def checksum(self, ref: Ref, selectors: list[Any]) -> str:
        ...

    @abc.abstractmethod
    def load_cached(self, key: str, vertex: Vertex) -> VertexOutcome | None:
        ...

    @abc.abstractmethod
    async def execute(self, vertex: Vertex, key: str, inputs: list[Ref],
                      vp: VertexProgress) -> VertexOutcome:
        ...

    @abc.abstractmethod
    def save(self, key: str, vertex: Vertex, outcome: VertexOutcome) -> None:
        ...

    def source_detail(self, vertex: Vertex) -> dict[str, Any]:
        """What a source resolved to, to explain a cache miss: ``{"image": digest}``, or
        ``{"files": {path: checksum}}`` of a local directory; empty by default."""
        return {}

    async def load_remote(self, key: str, vertex: Vertex,
                          vp: VertexProgress) -> VertexOutcome | None:
        """The result from an imported remote cache (after a local miss); None by default."""
        return None


class Scheduler:
    """Solves one graph for one build.

    ``slots`` (a semaphore) is shared by the schedulers of one build's graphs (its platforms)
    so ``max_parallelism`` bounds the build, not each graph."""

    def __init__(self, graph: Graph, runner: OpRunner, progress: Progress, *,
                 max_parallelism: int | None = None, slots: asyncio.Semaphore | None = None,
                 insight: Any = None):
        self.graph = graph
        #: told each vertex's cache key inputs (``cache_inputs(vertex, info)``) and asked why a
        #: vertex runs (``cache_miss(vertex, info, ran) -> str``): the build's history record
        self.insight = insight
        self._inputs: dict[str, dict[str, Any]] = {}
        self.runner = runner
        self.progress = progress
        if slots is None and max_parallelism and max_parallelism > 0:
            slots = asyncio.Semaphore(max_parallelism)
        self._slots = slots
        self._keys: dict[str, asyncio.Task[str]] = {}
        self._results: dict[str, asyncio.Task[VertexOutcome]] = {}
        self._early: dict[str, VertexOutcome] = {}
        self._vp: dict[str, VertexProgress] = {}
        self._executed: list[str] = []
        self._cached: list[str] = []
        self._busted_memo: dict[str, bool] = {}
        self._failed = False

    # -- public ------------------------------------------------------------------------

    async def solve(self) -> tuple[Ref, str, VertexOutcome]:
        """Solve the graph's head; returns (ref, cache key, outcome)."""
        head = self.graph.head
        needed = self.graph.ancestors(head.digest)
        for digest in needed:
            v = self.graph.vertices[digest]
            vp = self._vp[digest] = self.progress.vertex(
                digest, v.name, [i.digest for i in v.inputs], v.progress_group)
            vp.announce()
        try:
            outcome = await self._result(head.digest)
            key = await self._key(head.digest)
        except BaseException:
            self._failed = True
            try:
                await self._cancel_all()
            finally:
                self._count()
            raise
        # vertices whose results were never needed (a later step was cached) are cached too
        for digest in needed:
            vp = self._vp[digest]
            if vp.state.completed is None:
                vp.cached()
                self._cached.append(digest)
        self._count()
        ref = outcome.refs.get(head.index)
        if ref is None:
            raise SolveError(f"{self.graph.vertices[head.digest].name}: has no output "
                             f"{head.index}", vertex=head.digest)
        return ref, key, outcome

    def _count(self) -> None:
        """Count this solve's vertices (:meth:`stats`) for pybkd's metrics."""
        daemonstate.count_vertices(cached=len(self._cached), executed=len(self._executed))

    def stats(self) -> VertexStats:
        return VertexStats(executed=len(self._executed), cached=len(self._cached),
                           executed_digests=tuple(self._executed),
                           cached_digests=tuple(self._cached))

    def cache_entries(self, mode: str = "min") -> list[CacheEntry]:
        """What a cache export of this solve writes, inputs first: the head's result
        (``min``), or every vertex whose result is known or locally cached (``max``). Source
        ops and ``ignore_cache`` vertices are never included."""
        head = self.graph.head
        digests = self.graph.ancestors(head.digest) if mode == "max" else [head.digest]
        entries = []
        for digest in digests:
            v = self.graph.vertices[digest]
            key = self._done(self._keys.get(digest))
            if key is None or v.ignore_cache or v.op.kind == "source":
                continue
            outcome = self._done(self._results.get(digest))
            if outcome is None and mode == "max":
                outcome = self.runner.load_cached(key, v)
            if outcome is None:
                continue
            refs = dict(outcome.refs)
            if digest == head.digest and mode != "max":
                refs = {head.index: refs[head.index]} if head.index in refs else {}
            inputs = []
            for inp in v.inputs:
                ikey = self._done(self._keys.get(inp.digest))
                inputs.append((ikey, inp.index) if ikey is not None else None)
            entries.append(CacheEntry(vertex=v, key=key, refs=refs, inputs=tuple(inputs)))
        return entries

    @staticmethod
    def _done(task: asyncio.Task[T] | None) -> T | None:
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    # -- internals ---------------------------------------------------------------------

    def _key(self, digest: str) -> asyncio.Task[str]:
        task = self._keys.get(digest)
        if task is None:
            task = self._keys[digest] = asyncio.ensure_future(self._compute_key(digest))
        return task

    def _result(self, digest: str) -> asyncio.Task[VertexOutcome]:
        task = self._results.get(digest)
        if task is None:
            task = self._results[digest] = asyncio.ensure_future(self._compute_result(digest))
        return task

    async def _cancel_all(self) -> None:
        tasks = [t for t in (*self._keys.values(), *self._results.values()) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in (*self._keys.values(), *self._results.values()):
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: failures are reported once, by solve()

    async def _input_ref(self, inp: Input) -> Ref:
        outcome = await self._result(inp.digest)
        ref = outcome.refs.get(inp.index)
        if ref is None:
            name = self.graph.vertices[inp.digest].name
            raise SolveError(f"{name}: has no output {inp.index}", vertex=inp.digest)
        return ref

    async def _compute_key(self, digest: str) -> str:
        v = self.graph.vertices[digest]
        vp = self._vp[digest]
        if v.op.kind == "source":
            key, early = await self._guard(v, self.runner.source_key(v, vp))
            if early is not None:
                self._early[digest] = early
            if self.insight is not None:
                self._tell(v, {"key": key, "source": self.runner.source_detail(v)})
            return key
        selectors = content_selectors(v.op)

        async def dep(i: int, inp: Input) -> str:
            if i in selectors:
                ref = await self._input_ref(inp)
                return "content:" + await self._guard(v, self.runner.checksum(ref, selectors[i]))
            return f"{await self._key(inp.digest)}#{inp.index}"

        deps = await asyncio.gather(*(dep(i, inp) for i, inp in enumerate(v.inputs)))
        cmap = cache_map(v.op)
        key = compute_key(cmap, list(deps))
        if self.insight is not None:
            info = key_inputs(cmap, list(deps), key)
            if selectors:
                info["paths"] = {str(i): [s.path for s in sels] for i, sels in selectors.items()}
            self._tell(v, info)
        return key

    def _tell(self, v: Vertex, info: dict[str, Any]) -> None:
        self._inputs[v.digest] = info
        with contextlib.suppress(Exception):  # insight never fails a build
            self.insight.cache_inputs(v, info)

    def _why(self, v: Vertex) -> str:
        """Why ``v`` runs instead of being found in the cache (empty without insight)."""
        if self.insight is None:
            return ""
        ran = set(self._executed) - set(self._early)
        try:
            return str(self.insight.cache_miss(v, self._inputs.get(v.digest, {}),
                                               ran.__contains__) or "")
        except Exception:  # noqa: BLE001 - insight never fails a build
            return ""

    async def _compute_result(self, digest: str) -> VertexOutcome:
        v = self.graph.vertices[digest]
        vp = self._vp[digest]
        key = await self._key(digest)
        early = self._early.get(digest)
        if early is not None:
            if vp.state.completed is None:
                vp.done()
            self._executed.append(digest)
            return early
        busted = self._busted(digest)
        if not busted:
            cached = self.runner.load_cached(key, v)
            if cached is None and v.op.kind != "source":
                cached = await self.runner.load_remote(key, v, vp)
            if cached is not None:
                self._mark_unneeded_inputs(digest)
                vp.cached()
                self._cached.append(digest)
                return cached
        inputs = await asyncio.gather(*(self._input_ref(inp) for inp in v.inputs))
        job_key = key if not busted else f"{key}+nocache:{id(self)}"
        outcome, joined = await InFlight.run(job_key, lambda: self._execute(v, key, inputs, vp))
        if joined:
            now_cached = self.runner.load_cached(key, v)
            if vp.state.completed is None:
                vp.done()
            if now_cached is not None:
                outcome = now_cached
        self._executed.append(digest)
        return outcome

    def _busted(self, digest: str) -> bool:
        """``ignore_cache`` on this vertex or on one it depends on: no cache match is possible
        past a vertex that ran again (BuildKit's ``noCacheMatchPossible``), so its dependents
        run too (their results are still saved under their keys)."""
        known = self._busted_memo.get(digest)
        if known is None:
            v = self.graph.vertices[digest]
            known = v.ignore_cache or any(self._busted(i.digest) for i in v.inputs)
            self._busted_memo[digest] = known
        return known

    def _mark_unneeded_inputs(self, digest: str) -> None:
        """Report, inputs first, the ancestors of a cache hit that will never run as cached."""
        for d in self.graph.ancestors(digest)[:-1]:
            vp = self._vp[d]
            if d not in self._results and vp.state.completed is None:
                vp.cached()
                self._cached.append(d)

    async def _execute(self, v: Vertex, key: str, inputs: list[Ref],
                       vp: VertexProgress) -> VertexOutcome:
        async with self._slot():
            outcome = await self._guard(v, self.runner.execute(v, key, inputs, vp), started=vp)
            self.runner.save(key, v, outcome)
            vp.done()
            return outcome

    @contextlib.asynccontextmanager
    async def _slot(self):
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield

    async def _guard(self, v: Vertex, coro: Awaitable[T], *,
                     started: VertexProgress | None = None) -> T:
        """Await ``coro``; report errors and cancellation on the vertex, as a SolveError."""
        vp = self._vp[v.digest]
        if started is not None:
            vp.start(cache_miss=self._why(v))
        try:
            return await coro
        except asyncio.CancelledError:
            if vp.state.started is not None and vp.state.completed is None:
                vp.error(CANCELED)
            raise
        except PybkError as exc:
            message = exc.render() if not isinstance(exc, SolveError) else str(exc)
            vp.error(message)
            if isinstance(exc, BuildError):
                if getattr(exc, "vertex", None) is None:
                    exc.vertex = v.digest  # type: ignore[attr-defined]
                raise
            raise SolveError(message, vertex=v.digest) from exc
        except OSError as exc:
            message = f"{v.name}: {exc.strerror or exc}"
            if exc.filename:
                message += f": {exc.filename}"
            vp.error(message)
            raise SolveError(message, vertex=v.digest) from exc
