"""Imported caches during a solve: cache keys known up front, blobs fetched on a hit.

:class:`RemoteCache` indexes the records of every loaded config by digest; it is the
:class:`~pybk.core.interfaces.RemoteCacheLookup` the engine hands the solver. When the solver
misses its local cache it asks :meth:`RemoteCache.load`; on a hit the record's layer blobs that
the content store does not have yet are fetched (digest verified) and unpacked into a snapshot
chain through the solver's :class:`~pybk.core.interfaces.LayerUnpacker`. A layer already
unpacked (same chain id, e.g. a base image layer) is reused, not fetched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pybk.core.images.ids import chain_ids
from pybk.core.interfaces import CacheImporter, LayerUnpacker, RemoteCacheLookup
from pybk.core.remotecache.config import CacheLayer, CacheMount, CacheRecord, record_digest
from pybk.core.remotecache.store import LoadedCache, load_cache

log = logging.getLogger(__name__)


class RemoteCache(RemoteCacheLookup):
    """The records of every imported cache, by digest."""

    def __init__(self, loaded: Sequence[LoadedCache]):
        self._records: dict[str, list[tuple[LoadedCache, CacheRecord]]] = {}
        #: the imports' cache mounts (``cache-mounts=true``), the first import's winning
        self._mounts: dict[str, tuple[LoadedCache, CacheMount]] = {}
        self._restores: dict[str, asyncio.Future[Callable[[Any], None] | None]] = {}
        for cache in loaded:
            for record in cache.config.records:
                self._records.setdefault(record.digest, []).append((cache, record))
            for mount in cache.mounts:
                self._mounts.setdefault(mount.id, (cache, mount))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, digest: object) -> bool:
        return digest in self._records

    async def load(self, key: str, outputs: Sequence[int], layers: LayerUnpacker,
                   progress: Any) -> dict[int, str] | None:
        if not all(record_digest(key, i) in self._records for i in outputs):
            return None
        snapshots: dict[int, str] = {}
        for index in outputs:
            snap = None
            for cache, record in self._records[record_digest(key, index)]:
                chain = cache.config.chain(record)
                if not chain or any(not (x.diff_id and x.media_type) for x in chain):
                    continue
                try:
                    snap = await self._materialize(layers, cache, chain, progress)
                    break
                except Exception as exc:  # any failure of a remote cache is a cache miss
                    log.debug("cache import from %s failed", cache.where, exc_info=True)
                    warn(progress, f"cache import from {cache.where} failed: "
                                   f"{describe_error(exc)}")
            if snap is None:
                return None
            snapshots[index] = snap
        return snapshots

    async def cache_mount(self, cache_id: str, content: Any,
                          progress: Any) -> Callable[[Any], None] | None:
        """Fetch the imported cache mount ``cache_id`` (once per build; ``importing cache mount
        ID`` with its size on the step) and return what fills a new directory with it; a
        failure is a warning and None (the step gets an empty cache mount)."""
        if cache_id not in self._mounts:
            return None
        task = self._restores.get(cache_id)
        if task is None:
            task = self._restores[cache_id] = asyncio.ensure_future(
                self._fetch_mount(cache_id, content, progress))
        return await asyncio.shield(task)

    async def _fetch_mount(self, cache_id: str, content: Any,
                           vp: Any) -> Callable[[Any], None] | None:
        from pybk.core.remotecache.mounts import filler

        cache, mount = self._mounts[cache_id]
        name = f"importing cache mount {cache_id}"
        total = max(mount.layer.size, 0)
        try:
            vp.status(name, total=total)
            if not content.has(mount.layer.blob):
                await asyncio.to_thread(cache.store.fetch_blob, mount.layer, content)
            vp.status(name, current=total, total=total, done=True)
        except Exception as exc:  # any failure of a remote cache leaves the mount empty
            log.debug("cache mount import from %s failed", cache.where, exc_info=True)
            vp.status(name, total=total, done=True)
            warn(vp, f"importing cache mount {cache_id} from {cache.where} failed: "
                     f"{describe_error(exc)}")
            return None
        return filler(content, mount, lambda message: warn(vp, message))

    @staticmethod
    async def _materialize(layers: LayerUnpacker, cache: LoadedCache, chain: list[CacheLayer],
                           vp: Any) -> str:
        """The snapshot of ``chain``: layers already unpacked are reused; the missing blobs
        are fetched (up to four at once) while the layers below them are applied."""
        content = layers.content
        chains = chain_ids([x.diff_id for x in chain])
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
        for layer, chain_id in zip(chain, chains, strict=True):
            if not layers.has_layer(chain_id) and layer.blob not in fetches:
                fetches[layer.blob] = asyncio.ensure_future(fetch(layer))

        def fetched(layer: CacheLayer) -> Any:
            async def path() -> str:
                task = fetches.get(layer.blob)
                if task is not None:
                    await task
                return str(content.path(layer.blob))
            return path

        try:
            parent: str | None = None
            for layer, chain_id in zip(chain, chains, strict=True):
                parent = await layers.unpack_layer(
                    chain_id, parent, fetch=fetched(layer),
                    descriptor={"mediaType": layer.media_type, "digest": layer.blob,
                                "size": layer.size, "diffID": layer.diff_id, "source": ""})
        finally:
            for task in fetches.values():
                task.cancel()
            await asyncio.gather(*fetches.values(), return_exceptions=True)
        assert parent is not None
        return parent


async def import_caches(importers: Sequence[CacheImporter], progress: Any,
                        info: dict[str, Any]) -> RemoteCache:
    """Load every importer's cache configs at once; a failure is a warning on its progress
    vertex (``importing cache manifest from …``) and that cache is left out."""
    async def one(i: int, importer: CacheImporter) -> list[LoadedCache]:
        vp = progress.vertex(f"cache-import:{i}:{importer.where}",
                             f"importing cache manifest from {importer.where}")
        vp.announce()
        vp.start()
        try:
            loaded = await asyncio.to_thread(load_cache, importer, info)
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
