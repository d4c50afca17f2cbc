"""Cache mounts that travel with a remote cache (``cache-mounts=true``, a pybk extension).

Exporting: each ``RUN --mount=type=cache`` id of the build's graph whose directory exists in
the store becomes one tar blob, compressed like the cache's layers, listed in the cache config
under ``io.pybk.cache-mounts`` (and, in the local and registry wrappers, as one more descriptor
annotated ``io.pybk.cache-mount.id``). Importing: a step about to create a cache mount the store
does not have yet fills it from the first import that holds it
(:meth:`pybk.core.remotecache.importer.RemoteCache.cache_mount`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pybk.core.remotecache.config import CacheLayer, CacheMount, now_rfc3339

log = logging.getLogger(__name__)


def cache_mount_ids(definitions: Iterable[Any]) -> list[str]:
    """The cache mount ids the ExecOps of ``definitions`` (LLB ``Definition``) use, in order."""
    from pybk.core.llb.ops import ExecOp, MountType

    ids: dict[str, None] = {}
    for definition in definitions:
        for op in definition.load().values():
            if isinstance(op.op, ExecOp):
                for m in op.op.mounts:
                    if m.mount_type == MountType.CACHE:
                        ids.setdefault(m.cache_id)
    return list(ids)


def selected(ids: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """``ids`` narrowed to ``wanted`` (``cache-mount-ids=``) when it names any."""
    return [i for i in ids if not wanted or i in wanted]


def export_mount(store: Any, content: Any, cache_id: str, spec: Any) -> CacheMount | None:
    """The blob of cache mount ``cache_id`` written into ``content`` (read under its shared
    lock, so never while a ``sharing=locked`` step writes it); None when the store lacks it."""
    from pybk.core.fs.archive import write_diff_tar
    from pybk.core.images.layers import write_blob
    from pybk.core.store.cachemounts import cache_mount_lock_name

    path = store.cache_mount_path(cache_id)
    if not path.is_dir():
        return None
    lock = store.locks.lock(cache_mount_lock_name(cache_id), shared=True)
    lock.acquire()
    try:
        blob = write_blob(content, lambda out: write_diff_tar(None, path, out), spec)
    finally:
        lock.release()
    return CacheMount(cache_id, CacheLayer(blob=blob.digest, media_type=blob.media_type(True),
                                           diff_id=blob.diff_id, size=blob.size,
                                           created_at=now_rfc3339()))


def filler(content: Any, mount: CacheMount, warn: Callable[[str], None]) -> Callable[[Any], None]:
    """A function unpacking ``mount``'s blob (already in ``content``) into a new cache
    directory; a blob that fails to unpack leaves the directory empty (a warning)."""
    from pybk.core.fs.archive import apply_layer
    from pybk.core.fs.files import remove_path

    def fill(target: Any) -> None:
        try:
            apply_layer(str(content.path(mount.layer.blob)), target,
                        media_type=mount.layer.media_type, digest=mount.layer.blob,
                        diff_id=mount.layer.diff_id or None)
        except Exception as exc:  # the step runs on an empty cache mount
            log.debug("restoring cache mount %s failed", mount.id, exc_info=True)
            warn(f"restoring cache mount {mount.id} failed: {exc}")
            for name in os.listdir(target):
                remove_path(os.path.join(target, name))
    return fill
