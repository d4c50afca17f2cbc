"""Turning a solve into a cache config: records for the exported vertices, their layer blobs.

``mode=min`` exports the result's record only; ``mode=max`` every vertex with a result (source
ops and ``--no-cache`` vertices never). Layer blobs come from
:func:`pybk.core.images.layers.export_layers`, so a snapshot already exported (as an image layer
or an earlier cache) is not compressed again, and one unpacked from a base image or an imported
cache reuses its original blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pybk.core.interfaces import CacheExporter
from pybk.core.model import evolve
from pybk.core.remotecache.config import CacheConfig, CacheMount, ConfigBuilder, record_digest


def build_config(store: Any, content: Any, entries: Sequence[Any], spec: Any) -> CacheConfig:
    """The cache config of ``entries`` (:class:`pybk.core.solver.scheduler.CacheEntry`, inputs
    first); their layer blobs are written into ``content``."""
    from pybk.core.images.layers import snapshot_layers

    builder = ConfigBuilder()
    for entry in entries:
        for index, ref in sorted(entry.refs.items()):
            if ref.snapshot is None:
                continue
            layers = snapshot_layers(store, ref, content, spec)
            if not layers:
                continue
            top = builder.add_chain(layer.blob for layer in layers)
            inputs = []
            for dep in entry.inputs:
                link = builder.record_index(record_digest(*dep)) if dep is not None else None
                inputs.append([link] if link is not None else [])
            builder.add_record(record_digest(entry.key, index), top, inputs)
    return builder.build()


async def export_mounts(exporter: CacheExporter, store: Any, content: Any,
                        mount_ids: Sequence[str], vp: Any) -> tuple[CacheMount, ...]:
    """The blobs of the build's cache mounts ``exporter`` takes (``cache-mounts=true``,
    ``cache-mount-ids=``), each shown as ``exporting cache mount ID`` with its size."""
    import asyncio

    from pybk.core.remotecache.importer import warn
    from pybk.core.remotecache.mounts import export_mount, selected

    if not exporter.cache_mounts:
        return ()
    for unused in (i for i in exporter.cache_mount_ids if i not in mount_ids):
        warn(vp, f"cache-mount-ids: no step of this build uses cache mount {unused!r}")
    mounts = []
    for cache_id in selected(mount_ids, exporter.cache_mount_ids):
        name = f"exporting cache mount {cache_id}"
        vp.status(name)
        mount = await asyncio.to_thread(export_mount, store, content, cache_id, exporter.layers)
        size = mount.layer.size if mount is not None else 0
        vp.status(name, current=size, total=size, done=True)
        if mount is not None:
            mounts.append(mount)
    return tuple(mounts)


async def export_caches(exporters: Sequence[CacheExporter], entries: dict[str, Any], store: Any,
                        progress: Any, info: dict[str, Any],
                        mount_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run each cache export (``exporting cache to …`` on the progress stream); returns their
    responses. A failure raises BuildError unless the export says ``ignore-error=true``, which
    makes it a warning. ``mount_ids``: the cache mounts the build's steps use."""
    import asyncio
    import logging

    from pybk.core.errors import BuildError
    from pybk.core.remotecache.importer import describe_error, warn
    from pybk.core.remotecache.store import ExportPlan
    from pybk.core.store.content import ContentStore

    responses: list[dict[str, Any]] = []
    content = ContentStore(store.root)
    for i, exporter in enumerate(exporters):
        vp = progress.vertex(f"cache-export:{i}:{exporter.where}",
                             f"exporting cache to {exporter.where}")
        vp.announce()
        vp.start()
        try:
            config = await asyncio.to_thread(build_config, store, content,
                                             entries.get(exporter.mode, []),
                                             exporter.layers)
            mounts = await export_mounts(exporter, store, content, mount_ids, vp)
            if mounts:
                config = evolve(config, mounts=mounts)
            plan = ExportPlan(config=config, content=content, info=info)
            assert exporter.open is not None
            cache = exporter.open(info)
            response = dict(await asyncio.to_thread(cache.export, plan))
        except Exception as exc:
            logging.getLogger(__name__).debug("cache export failed", exc_info=True)
            message = f"failed to export cache to {exporter.where}: {describe_error(exc)}"
            if not exporter.ignore_error:
                vp.error(message)
                raise BuildError(message) from exc
            warn(vp, message + " (ignore-error=true)")
            response = {"cache.error": message}
        vp.done()
        responses.append(response)
    return responses
