"""The Python API of the engine: solve an LLB graph on the local store.

::

    from pybk.core import llb
    from pybk.core.engine.client import Client

    state = llb.image("127.0.0.1:5000/busybox:latest").run("echo hi > /hi").root()
    with Client(root="/tmp/pybk") as client:
        result = client.solve(state, progress="plain")
        client.export_local(result, "out/")

``Client.solve`` is a synchronous wrapper over the coroutine ``Client.asolve``; several
``asolve`` calls may run concurrently in one event loop and share identical work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pybk.core.engine.inputs import host_path
from pybk.core.errors import PybkError, UsageError
from pybk.core.interfaces import Executor
from pybk.core.model import evolve
from pybk.core.paths import default_root
from pybk.core.progress.events import Progress, SolveStatus
from pybk.core.progress.ui import progress_sinks

ProgressArg = str | Callable[[SolveStatus], None] | Sequence[Callable[[SolveStatus], None]] | None


def _as_definition(graph: Any) -> Any:
    from pybk.core.llb.definition import Definition

    if isinstance(graph, Definition):
        return graph
    if isinstance(graph, bytes | str):
        return Definition.from_bytes(graph)
    marshal = getattr(graph, "marshal", None)
    if marshal is None:
        raise TypeError(f"cannot solve {type(graph).__name__}: expected a State, a Definition "
                        "or its bytes")
    return marshal()


class OnFirstRun(Executor):
    """The worker's executor, asked for when the first process runs: a build whose steps are
    all cached never loads the runtime's modules or touches its state."""

    def __init__(self, make: Callable[[], Executor]):
        self._make = make
        self._executor: Executor | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self._executor is None:
            self._executor = self._make()
        return self._executor.run(*args, **kwargs)


class Client:
    """Builds LLB graphs on a local store.

    :param root: the store directory (default: ``config.root``, ``$PYBK_ROOT``,
        ``/var/lib/pybk`` for root).
    :param config: a :class:`pybk.core.config.schema.Config` (default: all defaults).
    :param executor: an :class:`~pybk.core.interfaces.Executor` to run ExecOps (default: the
        selected worker's).

    The workers come from the plugin registry (each class's ``from_config``); the one the
    ``pybk_select_worker`` hook picks for the host's platform gives the store its snapshotter,
    runs the ExecOps and decides the GC policy (see :mod:`pybk.core.engine.workers`).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, config: Any = None, *,
                 executor: Any = None):
        if config is None:
            from pybk.core.config.schema import Config

            config = Config(root=os.fspath(root)) if root is not None else Config()
        self.config = config
        self.root = os.path.abspath(os.fspath(root) if root is not None
                                    else (config.root or default_root()))
        self._executor = executor
        self._workers: list[Any] | None = None
        self._selected: Any = None
        self._worker: Any = None
        self._configured = False

    @property
    def plugins(self) -> Any:
        from pybk.core.plugins import get_plugin_manager

        pm = get_plugin_manager()
        if not self._configured:
            pm.hook.pybk_configure.call_historic(kwargs={"config": self.config})
            self._configured = True
        return pm

    # -- lifecycle ---------------------------------------------------------------------

    def workers(self) -> list[Any]:
        """The enabled workers (:class:`pybk.core.interfaces.Worker` instances), made on first
        use; a :class:`~pybk.core.errors.UsageError` when every one is disabled."""
        if self._workers is None:
            from pybk.core.engine.workers import load_workers

            self._workers = load_workers(self.config, self.root, self.plugins)
        return self._workers

    def selected_worker(self) -> Any:
        """The worker builds run on: the ``pybk_select_worker`` hook's choice for the host's
        platform (emulated platforms run on it too), else the first."""
        if self._selected is None:
            from pybk.core.engine.workers import select_worker

            self._selected = select_worker(self.workers(), pm=self.plugins)
        return self._selected

    def worker(self) -> Any:
        """The shared :class:`pybk.core.solver.ops.Solver`, created on first use; opening the
        store cleans up after builds that were killed (their mounts, containers, snapshots)."""
        if self._worker is None:
            from pybk.core.images.store import LocalImages
            from pybk.core.solver.ops import Solver
            from pybk.core.store.store import Store

            selected = self.selected_worker()
            store = Store.open(self.root, snapshotter=selected.snapshotter)
            executor = (self._executor if self._executor is not None
                        else OnFirstRun(selected.executor))
            self._worker = Solver(store=store, executor=executor, config=self.config,
                                  images=LocalImages(store.root))
        return self._worker

    def close(self) -> None:
        if self._configured:
            self.plugins.hook.pybk_unconfigure(config=self.config)
            self._configured = False
        try:
            if self._workers is not None:
                from pybk.core.engine.workers import close_workers

                workers, self._workers, self._selected = self._workers, None, None
                close_workers(workers)
        finally:
            if self._worker is not None:
                close = getattr(self._worker.store, "close", None)
                if close is not None:
                    close()
                self._worker = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- solving -----------------------------------------------------------------------

    def solve(self, graph: Any, *, local_dirs: Mapping[str, str] | None = None,
              secrets: Mapping[str, bytes] | None = None, ssh: Mapping[str, str] | None = None,
              entitlements: Iterable[str] = (), no_cache: bool = False,
              progress: ProgressArg = "auto", outputs: Sequence[Any] = (),
              image_config: Mapping[str, Any] | None = None,
              oci_layouts: Mapping[str, str] | None = None, request: Any = None,
              export_info: Mapping[str, Any] | None = None,
              cache_imports: Sequence[Any] = (), cache_exports: Sequence[Any] = (),
              resolved_images: Mapping[tuple[str, str | None], Any] | None = None,
              history: Callable[[SolveStatus], None] | None = None) -> Any:
        """Solve ``graph`` (a State, a Definition or its bytes); see :meth:`asolve`."""
        return asyncio.run(self.asolve(
            graph, local_dirs=local_dirs, secrets=secrets, ssh=ssh, entitlements=entitlements,
            no_cache=no_cache, progress=progress, outputs=outputs, image_config=image_config,
            oci_layouts=oci_layouts, request=request, export_info=export_info,
            cache_imports=cache_imports, cache_exports=cache_exports,
            resolved_images=resolved_images, history=history))

    async def asolve(self, graph: Any, *, local_dirs: Mapping[str, str] | None = None,
                     secrets: Mapping[str, bytes] | None = None,
                     ssh: Mapping[str, str] | None = None, entitlements: Iterable[str] = (),
                     no_cache: bool = False, progress: ProgressArg = "auto",
                     outputs: Sequence[Any] = (),
                     image_config: Mapping[str, Any] | None = None,
                     oci_layouts: Mapping[str, str] | None = None,
                     request: Any = None,
                     export_info: Mapping[str, Any] | None = None,
                     cache_imports: Sequence[Any] = (),
                     cache_exports: Sequence[Any] = (),
                     resolved_images: Mapping[tuple[str, str | None], Any] | None = None,
                     history: Callable[[SolveStatus], None] | None = None
                     ) -> Any:
        """Build ``graph`` and return a :class:`pybk.core.solver.results.SolveResult`.

        :param local_dirs: ``{name: directory}`` for ``local://name`` sources.
        :param secrets: ``{id: bytes}`` for secret mounts and secret env; never stored.
        :param ssh: ``{id: agent socket path}`` for SSH mounts.
        :param entitlements: ``network.host``, ``security.insecure``; each must be granted by
            the config's ``insecure-entitlements`` (a ``UsageError`` before anything runs).
        :param no_cache: run every step even when its result is cached.
        :param progress: a ``--progress`` mode (``auto``, ``tty``, ``plain``, ``rawjson``,
            ``quiet``), a callable receiving each :class:`~pybk.core.progress.events.SolveStatus`, a
            list of callables, or None for no output.
        :param outputs: exports to run afterwards: ``{"type": "local", "dest": DIR}`` mappings
            or objects with ``type`` and ``attrs`` (:class:`pybk.core.engine.request.OutputSpec`).
        :param image_config: the image config to attach to the result (a frontend's).
        :param oci_layouts: ``{store id: OCI layout directory}`` for ``oci-layout://`` sources
            (their ``oci.store`` attribute).
        :param request: the :class:`pybk.core.engine.request.BuildRequest` behind this solve, passed
            to the ``pybk_build_started`` / ``pybk_build_finished`` hooks (None from Python).
        :param export_info: extra facts for exporters, e.g. ``{"source_date_epoch": 0}``.
        :param cache_imports: remote caches to import (``--cache-from``):
            :class:`pybk.core.engine.request.CacheSpec` or ``{"type": …, attr: value}`` mappings.
            An unreachable or unreadable cache is a progress warning, never a failure.
        :param cache_exports: remote caches to export to (``--cache-to``), same forms; a failed
            export fails the build unless the spec says ``ignore-error=true``.
        :param resolved_images: ``{(reference, platform): ResolvedImage}`` the frontend of this
            build resolved (:class:`pybk.core.engine.build.LocalBridge`); image sources with
            the same reference and platform use them instead of resolving again.
        :param history: the build's history record
            (:class:`pybk.core.history.recorder.Recorder`): it sees every progress update,
            whatever ``progress`` shows.
        :returns: the result; ``result.metadata["exporter.responses"]`` lists each output's
            response (``containerimage.digest`` …) in order, ``["cache.responses"]`` each cache
            export's.
        :raises pybk.core.errors.BuildError: a step failed (the first failure cancels the rest).
        """
        return await self._build(
            {"": (graph, image_config)}, local_dirs=local_dirs, secrets=secrets, ssh=ssh,
            entitlements=entitlements, no_cache=no_cache, progress=progress, outputs=outputs,
            oci_layouts=oci_layouts, request=request, export_info=export_info,
            cache_imports=cache_imports, cache_exports=cache_exports,
            resolved_images=resolved_images, history=history)

    def solve_platforms(self, graphs: Mapping[str, tuple[Any, Mapping[str, Any] | None]],
                        **options: Any) -> Any:
        """Solve one graph per platform (``{platform: (graph, image config)}``, in order) and
        export them together: a :class:`pybk.core.engine.multiplatform.MultiPlatformResult`. Options
        are :meth:`asolve`'s; see :meth:`asolve_platforms`."""
        return asyncio.run(self.asolve_platforms(graphs, **options))

    async def asolve_platforms(self, graphs: Mapping[str, tuple[Any, Mapping[str, Any] | None]],
                               **options: Any) -> Any:
        """The platforms are solved concurrently, sharing identical vertices (the build
        context); a remote cache export holds the records of every platform."""
        return await self._build(dict(graphs), multi=True, **options)

    async def _build(self, graphs: Mapping[str, tuple[Any, Mapping[str, Any] | None]], *,
                     multi: bool = False, local_dirs: Mapping[str, str] | None = None,
                     secrets: Mapping[str, bytes] | None = None,
                     ssh: Mapping[str, str] | None = None, entitlements: Iterable[str] = (),
                     no_cache: bool = False, progress: ProgressArg = "auto",
                     outputs: Sequence[Any] = (),
                     oci_layouts: Mapping[str, str] | None = None, request: Any = None,
                     export_info: Mapping[str, Any] | None = None,
                     cache_imports: Sequence[Any] = (),
                     cache_exports: Sequence[Any] = (),
                     resolved_images: Mapping[tuple[str, str | None], Any] | None = None,
                     history: Callable[[SolveStatus], None] | None = None
                     ) -> Any:
        """One build: solve each graph (concurrently), then run the exports and cache exports
        once over the result (a MultiPlatformResult when ``multi``)."""
        from pybk.core.config.schema import check_entitlements
        from pybk.core.solver.ops import Session

        entitlements = check_entitlements(entitlements, self.config)
        definitions = {platform: (_as_definition(graph), config)
                       for platform, (graph, config) in graphs.items()}
        hook = self.plugins.hook
        from pybk.core.engine.resolve import resolve

        pm = self.plugins
        exports = [resolve("exporter", o, where="--output", pm=pm) for o in outputs]
        importers = [resolve("cache importer", c, where="--cache-from", pm=pm)
                     for c in cache_imports]
        cache_to = _check_cache_exports([resolve("cache exporter", c, where="--cache-to", pm=pm)
                                         for c in cache_exports])
        modes = {e.mode for e in cache_to if not _is_inline(e)}
        renderers, sinks = progress_sinks(progress)
        bus = Progress(*sinks, *renderers, lambda status: hook.pybk_progress(event=status),
                       *((history,) if history is not None else ()))
        hook.pybk_build_started(request=request)
        result: Any = None
        # the build's lease and locks keep what it found or made until the exports and cache
        # exports below have read it (released in ``finally``): a prune meanwhile would delete
        # the result under them
        hold = contextlib.ExitStack()
        try:
            session = Session(local_dirs={k: os.path.abspath(v) if host_path(v) else v
                                          for k, v in (local_dirs or {}).items()},
                              secrets=secrets if secrets is not None else {},
                              ssh=dict(ssh or {}),
                              entitlements=entitlements,
                              oci_layouts={k: os.path.abspath(v)
                                           for k, v in (oci_layouts or {}).items()},
                              resolved_images=dict(resolved_images or {}))
            info = {"root": self.root, "registry_hosts": dict(self.config.registry),
                    **(export_info or {})}
            specs = [e.layer_spec(info) for e in exports]
            solved = await self._solve_graphs(definitions, session=session, bus=bus,
                                              insight=getattr(history, "cache_miss", None)
                                              and history,
                                              no_cache=no_cache, importers=importers,
                                              cache_modes=modes, hold=hold,
                                              ahead=next((s for s in specs if s is not None), None))
            results = dict(zip(definitions, (r for r, _ in solved), strict=True))
            cache_entries = {mode: [entry for _, entries in solved for entry in entries[mode]]
                             for mode in modes}
            if multi:
                from pybk.core.engine.multiplatform import MultiPlatformResult

                result = MultiPlatformResult(results)
            else:
                result = results[""]
            if any(_is_inline(e) for e in cache_to):
                from pybk.core.remotecache.inline import inline_cache

                info["inline_cache"] = inline_cache
            info["progress"] = bus  # exporters' warnings
            responses = []
            for instance in exports:
                exported = await asyncio.to_thread(instance.export, result, info)
                responses.append(dict(exported.response))
                if exported.finalize is not None:
                    await asyncio.to_thread(exported.finalize)
            metadata = {**result.metadata, "exporter.responses": responses}
            if cache_to and result.store is not None:
                from pybk.core.remotecache.exporter import export_caches

                remote_to = [e for e in cache_to if not _is_inline(e)]
                mount_ids: list[str] = []
                if any(e.cache_mounts for e in remote_to):
                    from pybk.core.remotecache.mounts import cache_mount_ids

                    mount_ids = cache_mount_ids(d for d, _ in definitions.values())
                metadata["cache.responses"] = await export_caches(
                    remote_to, cache_entries, result.store, bus, info, mount_ids)
            result = evolve(result, metadata=metadata)
        except BaseException as exc:
            hook.pybk_build_finished(request=request, result=None, error=exc)
            raise
        finally:
            try:
                hold.close()
            finally:
                for renderer in renderers:
                    renderer.close()
        hook.pybk_build_finished(request=request, result=result, error=None)
        return result

    def collect_garbage(self, *, force: bool = False) -> list[Any]:
        """BuildKit's automatic GC: the worker's policies (``gcpolicy``, else the defaults),
        at most once a minute per store (``force``: now); nothing with ``gc = false``. ``pybk
        build`` calls it after each build; from Python, call it when a build is done. Returns
        the deleted records; a failure is logged, never raised."""
        import logging

        if self._worker is None:
            return []
        try:
            from pybk.core.history.store import HistoryStore

            HistoryStore(self.root).prune(max_age=float(self.config.history.max_age),
                                          max_entries=self.config.history.max_entries)
        except Exception:
            logging.getLogger(__name__).warning("pruning the build history failed",
                                                exc_info=True)
        store = self._worker.store
        try:
            disk = os.statvfs(store.root)
            rules = self.selected_worker().gc_policy(disk.f_blocks * disk.f_frsize)
            if not rules or not (force or store.gc_due()):
                return []
            return store.gc(rules)
        except Exception:
            logging.getLogger(__name__).warning("garbage collection failed", exc_info=True)
            return []

    async def _solve_graphs(self, definitions: Mapping[str, tuple[Any, Any]], *, session: Any,
                            bus: Progress, no_cache: bool, importers: Sequence[Any],
                            insight: Any = None,
                            cache_modes: Iterable[str], hold: contextlib.ExitStack,
                            ahead: Any = None) -> list[tuple[Any, dict[str, list]]]:
        """Solve the definitions concurrently with one runner (the build's locks, images and
        parallelism are shared); for each, its SolveResult and ``{mode: cache entries}``. The
        first failure cancels the others. The build's lease and the runner's locks are released
        when ``hold`` closes (after the exports), not here. ``ahead``: the layer spec of the
        image the result is exported as, to write the layers below a result while its last
        step runs."""
        from pybk.core.registry.client import RegistryClient
        from pybk.core.store.content import ContentStore
        from pybk.core.store.locks import SharedSlots

        if not any(definition.ops for definition, _ in definitions.values()):
            return [self._empty_result(config, cache_modes)
                    for _, config in definitions.values()]
        solver = await asyncio.to_thread(self.worker)
        registry = RegistryClient(dict(self.config.registry), ContentStore(solver.store.root))
        lease = solver.store.lease()
        hold.callback(lease.release)
        limit = self.config.worker.oci.max_parallelism
        # shared by every build of the store (pybkd's commands, embedded builds), as
        # BuildKit's max-parallelism is the daemon's
        slots = (SharedSlots(os.path.join(solver.store.root, "parallelism"), limit)
                 if limit and limit > 0 else None)
        try:
            remote = None
            if importers:
                from pybk.core.remotecache.importer import import_caches

                remote = await import_caches(importers, bus, {
                    "root": self.root, "registry_hosts": dict(self.config.registry)})
            runner = solver.runner(session, registry, lease, remote)
            hold.callback(runner.release)
            if ahead is not None:
                for definition, _ in definitions.values():
                    _write_ahead_of_head(runner, definition, ahead)
            return await _all_or_none([
                self._solve_graph(definition, config, runner=runner, bus=bus, slots=slots,
                                  no_cache=no_cache, cache_modes=cache_modes, insight=insight)
                for definition, config in definitions.values()])
        finally:
            await registry.aclose()

    @staticmethod
    def _empty_result(image_config: Any, cache_modes: Iterable[str]) -> tuple[Any, dict]:
        from pybk.core.solver.results import SCRATCH_REF, SolveResult, VertexStats

        return (SolveResult(ref=SCRATCH_REF, store=None, image_config=image_config,
                            stats=VertexStats()), {mode: [] for mode in cache_modes})

    async def _solve_graph(self, definition: Any, image_config: Mapping[str, Any] | None, *,
                           runner: Any, bus: Progress, slots: asyncio.Semaphore | None,
                           no_cache: bool, cache_modes: Iterable[str], insight: Any = None
                           ) -> tuple[Any, dict[str, list[Any]]]:
        from pybk.core.solver.results import SolveResult
        from pybk.core.solver.scheduler import Scheduler
        from pybk.core.solver.vertex import load_graph

        if not definition.ops:
            return self._empty_result(image_config, cache_modes)
        loaded = load_graph(definition, no_cache=no_cache)
        for vertex in loaded.vertices.values():
            if vertex.op.kind == "exec":  # before any step runs or is found in the cache
                runner.check_entitlements(vertex, vertex.op.op)
        scheduler = Scheduler(loaded, runner, bus, slots=slots, insight=insight)
        ref, key, outcome = await scheduler.solve()
        entries = {mode: scheduler.cache_entries(mode) for mode in cache_modes}
        config = image_config
        if config is None and loaded.vertices[loaded.head.digest].op.kind == "source":
            config = outcome.extra.get("image_config")
        return SolveResult(ref=ref, store=runner.store, image_config=config,
                           stats=scheduler.stats(), cache_key=key,
                           cache_output=loaded.head.index, definition=definition,
                           resolved=runner.resolved_images(loaded.vertices)), entries

    # -- exporting ---------------------------------------------------------------------

    def export_local(self, result: Any, dest_dir: str | os.PathLike[str], *,
                     devices: bool = False, owner: tuple[int, int] | None = None) -> int:
        """Copy the result's filesystem into ``dest_dir``; returns the entries written.

        Device nodes are left out unless ``devices`` (then with owner-only modes). The result's
        owners are kept (as root) unless ``owner`` ``(uid, gid)`` is given, which every entry
        then gets: the ``local`` exporter (``-o type=local``) passes the caller's own."""
        from pybk.core.fs.copytree import copy_tree

        with result.mount() as root:
            return copy_tree(root, os.fspath(dest_dir), devices=devices, owner=owner)


def _write_ahead_of_head(runner: Any, definition: Any, spec: Any) -> None:
    """When the definition's last step starts, write the layer blobs of the snapshot it runs
    on in a thread (:func:`pybk.core.images.layers.write_ahead`): they are the image's lower
    layers whatever the step makes, and the export finds them written or being written."""
    import threading

    try:
        head = definition.head_input().digest
    except PybkError:
        return  # an invalid definition: solving it says what is wrong

    def start(vertex: Any, inputs: list[Any]) -> None:
        from pybk.core.images.layers import write_ahead
        from pybk.core.llb.ops import ExecOp, FileOp
        from pybk.core.store.content import ContentStore

        body = vertex.op.op
        index = None
        if isinstance(body, ExecOp):
            index = next((m.input for m in body.mounts if m.dest == "/"), None)
        elif isinstance(body, FileOp) and body.actions:
            index = body.actions[0].input
        if index is None or not 0 <= index < len(inputs) or inputs[index].snapshot is None:
            return
        threading.Thread(target=write_ahead, name="pybk-layers-ahead", daemon=True, args=(
            runner.store, inputs[index], ContentStore(runner.store.root), spec)).start()

    runner.on_execute[head] = start


async def _all_or_none(coros: Sequence[Any]) -> list[Any]:
    """Await the coroutines concurrently; the first exception cancels the rest and is raised
    (as is, not in a group)."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


def _is_inline(exporter: Any) -> bool:
    return getattr(exporter, "backend", None) == "inline"


def _check_cache_exports(exporters: list[Any]) -> list[Any]:
    """One inline export at most (later ones are dropped, as BuildKit); duplicates fail."""
    out: list[Any] = []
    seen: set[tuple[str, str]] = set()
    for exporter in exporters:
        if _is_inline(exporter):
            if not any(_is_inline(e) for e in out):
                out.append(exporter)
            continue
        ident = (exporter.backend, exporter.where)
        if ident in seen:
            raise UsageError(f"duplicate cache export to {exporter.where}", flag="--cache-to")
        seen.add(ident)
        out.append(exporter)
    return out
