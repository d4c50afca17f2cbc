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

from pybk.cachebackends.config import CacheLayer, CacheRecord, record_digest
from pybk.cachebackends.store import LoadedCache

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
                    vp.warn(f"cache import from {cache.where} failed: {exc}")
            if snap is None:
                return None
            snapshots[index] = snap
        for index, snap in snapshots.items():
            runner.store.put_cache(key, snap, index)
        return VertexOutcome(refs={i: Ref(snapshot=s) for i, s in snapshots.items()},
                             cached=True)

    async def _materialize(self, runner: Any, cache: LoadedCache, chain: list[CacheLayer],
                           vp: Any) -> str:
        from pybk.core.content import ContentStore
        from pybk.core.solver.ops import chain_ids
        from pybk.core.solver.scheduler import InFlight

        store = runner.store
        content = ContentStore(store.root)
        parent: str | None = None
        for layer, chain_id in zip(chain, chain_ids([x.diff_id for x in chain]), strict=True):
            record_key = "layer:" + chain_id

            def existing(record_key: str = record_key) -> str | None:
                record = store.get_cache(record_key)
                if record is None:
                    return None
                runner.lease.add(record)
                return record.id

            found = existing()
            if found is not None:
                parent = found
                continue

            async def unpack(layer: CacheLayer = layer, parent: str | None = parent,
                             record_key: str = record_key,
                             existing: Any = existing) -> str:
                async with store.build_lock(record_key):
                    again = existing()
                    if again is not None:
                        return again
                    if not content.has(layer.blob):
                        vp.status(f"importing {layer.blob}", total=max(layer.size, 0))
                        await asyncio.to_thread(cache.store.fetch_blob, layer, content)
                        vp.status(f"importing {layer.blob}", current=max(layer.size, 0),
                                  total=max(layer.size, 0), done=True)
                    snap = await asyncio.to_thread(runner.unpack_blob,
                                                   str(content.path(layer.blob)),
                                                   layer.media_type, parent)
                    store.set_layer_blob(snap, {
                        "mediaType": layer.media_type, "digest": layer.blob,
                        "size": layer.size, "diffID": layer.diff_id, "source": ""})
                    store.put_cache(record_key, snap)
                    return snap

            snap, _ = await InFlight.run(record_key, unpack)
            runner.lease.add(snap)
            parent = snap
        assert parent is not None
        return parent


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
            vp.warn(f"cache import from {importer.where} skipped: {_describe(exc)}")
            loaded = []
        vp.done()
        return loaded

    results = await asyncio.gather(*(one(i, imp) for i, imp in enumerate(importers)))
    return RemoteCache([cache for found in results for cache in found])


def _describe(exc: BaseException) -> str:
    from pybk.core.errors import PybkError

    if isinstance(exc, PybkError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
