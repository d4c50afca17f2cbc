"""Imported caches during a solve: cache keys known up front, blobs fetched on a hit.

:class:`RemoteCache` indexes the records of every loaded config by digest. When the solver
misses its local cache, :meth:`RemoteCache.load` looks the key up; on a hit it fetches the
record's layer blobs that the store does not have yet (into the content store, digest
verified), applies them into a snapshot chain and records the result in the local cache, so the
next build finds it locally. A layer already unpacked (same chain id, e.g. a base image layer)
is reused, not fetched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from pybk.core.remotecache.config import CacheLayer, CacheRecord, record_digest
from pybk.core.remotecache.store import LoadedCache

log = logging.getLogger(__name__)


class RemoteCache:
    """The records of every imported cache, by digest."""

    def __init__(self, loaded: Sequence[LoadedCache]):
        self._records: dict[str, list[tuple[LoadedCache, CacheRecord]]] = {}
        for cache in loaded:
            for record in cache.config.records:
                self._records.setdefault(record.digest, []).append((cache, record))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, digest: object) -> bool:
        return digest in self._records

    async def load(self, runner: Any, key: str, vertex: Any, vp: Any) -> Any:
        """The outcome of ``vertex`` (cache key ``key``) from an imported cache, or None."""
        from pybk.core.solver.results import Ref
        from pybk.core.solver.scheduler import VertexOutcome

        indexes = sorted(vertex.op.output_indices())
        if not all(record_digest(key, i) in self._records for i in indexes):
            return None
        snapshots: dict[int, str] = {}
        for index in indexes:
            snap = None
            for cache, record in self._records[record_digest(key, index)]:
                chain = cache.config.chain(record)
                if not chain or any(not (x.diff_id and x.media_type) for x in chain):
                    continue
                try:
                    snap = await self._materialize(runner, cache, chain, vp)
                    break
                except Exception as exc:  # any failure of a remote cache is a cache miss
                    log.debug("cache import from %s failed", cache.where, exc_info=True)
                    warn(vp, f"cache import from {cache.where} failed: {describe_error(exc)}")
            if snap is None:
                return None
            snapshots[index] = snap
        for index, snap in snapshots.items():
            runner.store.put_cache(key, snap, index)
        return VertexOutcome(refs={i: Ref(snapshot=s) for i, s in snapshots.items()},
                             cached=True)

    async def _materialize(self, runner: Any, cache: LoadedCache, chain: list[CacheLayer],
                           vp: Any) -> str:
        """The snapshot of ``chain``: layers already unpacked are reused; the missing blobs
        are fetched (up to four at once) while the layers below them are applied."""
        from pybk.core.solver.ops import chain_ids
        from pybk.core.store.content import ContentStore

        store = runner.store
        content = ContentStore(store.root)
        keys = ["layer:" + c for c in chain_ids([x.diff_id for x in chain])]
        limit = asyncio.Semaphore(4)

        async def fetch(layer: CacheLayer) -> None:
            async with limit:
                if content.has(layer.blob):
                    return
                total = max(layer.size, 0)
                vp.status(f"importing {layer.blob}", total=total)
                await asyncio.to_thread(cache.store.fetch_blob, layer, content)
                vp.status(f"importing {layer.blob}", current=total, total=total, done=True)

        fetches: dict[str, asyncio.Future[None]] = {}
        for layer, key in zip(chain, keys, strict=True):
            if store.get_cache(key) is None and layer.blob not in fetches:
                fetches[layer.blob] = asyncio.ensure_future(fetch(layer))
        try:
            parent: str | None = None
            for layer, key in zip(chain, keys, strict=True):
                parent = await self._layer(runner, layer, key, parent, fetches.get(layer.blob),
                                           content)
        finally:
            for task in fetches.values():
                task.cancel()
            await asyncio.gather(*fetches.values(), return_exceptions=True)
        assert parent is not None
        return parent

    @staticmethod
    async def _layer(runner: Any, layer: CacheLayer, record_key: str, parent: str | None,
                     fetched: asyncio.Future[None] | None, content: Any) -> str:
        """The record of one layer on ``parent``: found, or unpacked from its fetched blob."""
        from pybk.core.solver.scheduler import InFlight

        store = runner.store

        def existing() -> str | None:
            record = store.get_cache(record_key)
            if record is None:
                return None
            runner.lease.add(record)
            return record.id

        found = existing()
        if found is not None:
            return found

        async def unpack() -> str:
            async with store.build_lock(record_key):
                again = existing()
                if again is not None:
                    return again
                if fetched is not None:
                    await fetched
                snap = await asyncio.to_thread(runner.unpack_blob, str(content.path(layer.blob)),
                                               layer.media_type, parent)
                store.set_layer_blob(snap, {
                    "mediaType": layer.media_type, "digest": layer.blob, "size": layer.size,
                    "diffID": layer.diff_id, "source": ""})
                store.put_cache(record_key, snap)
                return snap

        snap, _ = await InFlight.run(record_key, unpack)
        runner.lease.add(snap)
        return snap


async def import_caches(importers: Sequence[Any], progress: Any,
                        info: dict[str, Any]) -> RemoteCache:
    """Load every importer's cache configs at once; a failure is a warning on its progress
    vertex (``importing cache manifest from …``) and that cache is left out."""
    async def one(i: int, importer: Any) -> list[LoadedCache]:
        vp = progress.vertex(f"cache-import:{i}:{importer.where}",
                             f"importing cache manifest from {importer.where}")
        vp.announce()
        vp.start()
        try:
            loaded = await asyncio.to_thread(importer.load, info)
        except Exception as exc:  # an unusable --cache-from never fails the build
            log.debug("cache import from %s failed", importer.where, exc_info=True)
            warn(vp, f"cache import from {importer.where} skipped: {describe_error(exc)}")
            loaded = []
        vp.done()
        return loaded

    results = await asyncio.gather(*(one(i, imp) for i, imp in enumerate(importers)))
    return RemoteCache([cache for found in results for cache in found])


def warn(vp: Any, message: str) -> None:
    """A warning on the step, also shown as a ``WARNING:`` line of its output."""
    from pybk.core.progress.events import STREAM_STDERR

    vp.warn(message)
    vp.log(STREAM_STDERR, f"WARNING: {message}\n".encode())


def describe_error(exc: BaseException) -> str:
    from pybk.core.errors import PybkError

    if isinstance(exc, PybkError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
