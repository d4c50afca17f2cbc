"""Image layers of a build result: one compressed blob per snapshot with changes.

The result's snapshot chain is walked bottom to top. A snapshot unpacked from a base image layer
reuses that layer's original blob (recorded by the solver with
:meth:`pybk.core.store.store.Store.set_layer_blob`) unless another compression is asked for or
``force-compression`` is set; then the original blob is transcoded, which keeps its diffID. Any
other snapshot's own changes (``layer_dir``, overlay whiteouts) are archived as an OCI layer tar.
Everything streams: tar → diffID hash → compressor → content store writer (blob digest and
size); no layer is ever held in memory. Layers are produced in parallel threads, and each
layer is compressed on every core too (gzip by blocks, :mod:`pybk.core.images.pgzip`; zstd with
its own threads). Generated blobs are remembered per (snapshot, compression, level, timestamp
epoch), so a rebuild does not compress again; and the gzip blocks of every generated blob are
indexed by content (:class:`GzipBlockIndex`), so a new layer that shares most of its tar stream
with an earlier one (one file of a large context changed) copies the unchanged blocks' deflated
bytes from the earlier blob instead of compressing them again — with the same bytes as a
compression from scratch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, TypeVar

from pybk.core.errors import UsageError
from pybk.core.fs.archive import layer_compression
from pybk.core.model import Model, asdict, evolve
from pybk.core.registry import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
)

COMPRESSIONS = ("gzip", "zstd", "uncompressed")
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}
LEVEL_RANGES = {"gzip": (0, 9), "zstd": (0, 22)}
_MEDIA_TYPES = {
    (False, "gzip"): DOCKER_LAYER_GZIP, (False, "zstd"): DOCKER_LAYER_ZSTD,
    (False, "uncompressed"): DOCKER_LAYER,
    (True, "gzip"): OCI_LAYER_GZIP, (True, "zstd"): OCI_LAYER_ZSTD,
    (True, "uncompressed"): OCI_LAYER,
}
_CHUNK = 1 << 20
T = TypeVar("T")


def check_level(compression: str, level: int | None, flag: str) -> None:
    """UsageError (naming ``flag``) when ``level`` is outside what ``compression`` takes."""
    if level is not None and compression in LEVEL_RANGES:
        low, high = LEVEL_RANGES[compression]
        if not low <= level <= high:
            raise UsageError(f"compression-level={level}: {compression} takes {low}-{high}",
                             flag=flag)


class LayerBlob(Model):
    """One layer blob in the content store."""

    digest: str
    size: int
    diff_id: str
    compression: str  # gzip | zstd | uncompressed
    #: the repository a reused base layer came from (for cross-repository blob mounts)
    source: str = ""
    #: a media type of its own (an attestation blob), instead of a layer's
    media: str = ""

    def media_type(self, oci: bool) -> str:
        return self.media or _MEDIA_TYPES[(oci, self.compression)]

    def descriptor(self, oci: bool) -> dict[str, Any]:
        return {"mediaType": self.media_type(oci), "digest": self.digest, "size": self.size}


class LayerSpec(Model):
    """How layers are written: ``compression``, its ``level`` (None: default), whether base
    layers are recompressed (``force``), and the epoch file mtimes are clamped to."""

    compression: str = "gzip"
    level: int | None = None
    force: bool = False
    epoch: int | None = None


class ExportedLayer(Model):
    """A layer of the result and the snapshot whose contents end with it."""

    snapshot: str | None
    blob: LayerBlob


class _Tee:
    """A write-only stream that hashes what passes through to ``out``."""

    def __init__(self, out: Any):
        self.out = out
        self.hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered here."""

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class GzipBlockIndex:
    """Where the deflated bytes of gzip blocks (:mod:`pybk.core.images.pgzip`) of the content
    store's blobs are: ``gzip-block:<key>`` → ``[blob digest, offset, length, crc32]`` in the
    store's metadata. A block is used only if its blob is still there and the bytes read have
    the recorded length and CRC; anything else is a miss (the block is compressed again)."""

    def __init__(self, store: Any, content: Any):
        self.store = store
        self.content = content

    def find(self, key: bytes) -> bytes | None:
        found = self.store.get_meta("gzip-block:" + key.hex())
        if not found:
            return None
        digest, offset, length, crc = found
        try:
            fd = os.open(self.content.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, length, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != length or zlib.crc32(data) != crc:
            return None
        return data

    def record(self, digest: str, blocks: list[tuple[bytes, int, int, int]]) -> None:
        """Remember the blocks of the stored blob ``digest`` (the newest blob wins a key)."""
        if not blocks:
            return
        with self.store.transaction():
            for key, offset, length, crc in blocks:
                self.store.set_meta("gzip-block:" + key.hex(), [digest, offset, length, crc])


def write_blob(content: Any, produce: Callable[[IO[bytes]], None], spec: LayerSpec, *,
               blocks: GzipBlockIndex | None = None) -> LayerBlob:
    """Stream the tar that ``produce`` writes through ``spec``'s compression into ``content``;
    gzip reuses and records blocks in ``blocks`` when given."""
    level = spec.level if spec.level is not None else DEFAULT_LEVELS.get(spec.compression)
    with content.writer() as blob:
        if spec.compression == "gzip":
            from pybk.core.images.pgzip import ParallelGzipWriter

            with ParallelGzipWriter(blob, level, reuse=blocks) as comp:  # type: ignore[arg-type]
                tee = _Tee(comp)
                produce(tee)  # type: ignore[arg-type]
            if blocks is not None:
                written = comp.blocks
        elif spec.compression == "zstd":
            import zstandard

            cctx = zstandard.ZstdCompressor(level=level, threads=-1)
            with cctx.stream_writer(blob, closefd=False) as comp:
                tee = _Tee(comp)
                produce(tee)  # type: ignore[arg-type]
        else:
            tee = _Tee(blob)
            produce(tee)  # type: ignore[arg-type]
    if spec.compression == "gzip" and blocks is not None:
        blocks.record(blob.current_digest, written)
    return LayerBlob(digest=blob.current_digest, size=blob.size, diff_id=tee.digest,
                     compression=spec.compression)


def _copy_stream(src: IO[bytes]) -> Callable[[IO[bytes]], None]:
    def produce(out: IO[bytes]) -> None:
        shutil.copyfileobj(src, out, _CHUNK)
    return produce


def _base_blob(store: Any, content: Any, key: str) -> LayerBlob | None:
    recorded = store.layer_blob(key)
    if not recorded or not content.has(recorded["digest"]):
        return None
    try:
        kind = layer_compression(recorded["mediaType"])
    except ValueError:
        return None
    return LayerBlob(digest=recorded["digest"], size=int(recorded["size"]),
                     diff_id=recorded.get("diffID") or "",
                     compression="uncompressed" if kind == "none" else kind,
                     source=recorded.get("source") or "")


def _cached(store: Any, content: Any, cache_key: str) -> LayerBlob | None:
    found = store.get_meta(cache_key)
    if not found or not content.has(found["digest"]):
        return None
    return LayerBlob(**found)


def _remember(store: Any, cache_key: str, blob: LayerBlob) -> LayerBlob:
    store.set_meta(cache_key, asdict(blob))
    return blob


_WRITING: dict[str, Future[Any]] = {}
_WRITING_LOCK = threading.Lock()


def _once(cache_key: str, write: Callable[[], T]) -> T:
    """``write()``, unless another thread of this process is writing the same layer: then
    its result (written ahead while the last step ran, see :func:`write_ahead`), or, if that
    failed, ``write()`` after all."""
    with _WRITING_LOCK:
        running = _WRITING.get(cache_key)
        if running is None:
            mine: Future[Any] = Future()
            _WRITING[cache_key] = mine
    if running is not None:
        try:
            return running.result()  # type: ignore[no-any-return]
        except Exception:
            return write()
    try:
        value = write()
    except BaseException as exc:
        mine.set_exception(exc)
        raise
    else:
        mine.set_result(value)
        return value
    finally:
        with _WRITING_LOCK:
            _WRITING.pop(cache_key, None)


def _layer_job(store: Any, content: Any, sn: Any, key: str,
               spec: LayerSpec) -> Callable[[], LayerBlob | None]:
    """A function producing the layer of snapshot ``key`` (None when it has no changes)."""
    level = spec.level if spec.level is not None else DEFAULT_LEVELS.get(spec.compression)
    base = _base_blob(store, content, key)
    if base is not None:
        if base.compression == spec.compression and not spec.force:
            return lambda: base
        cache_key = f"export-layer:{base.digest}:{spec.compression}:{level}"

        def transcode() -> LayerBlob:
            from pybk.core.fs.archive import decompressed

            found = _cached(store, content, cache_key)
            if found is not None:
                return found
            recorded = store.layer_blob(key)
            with content.open(base.digest) as raw:
                blob = write_blob(content, _copy_stream(decompressed(raw, recorded["mediaType"])),
                                  spec, blocks=GzipBlockIndex(store, content))
            return _remember(store, cache_key, evolve(blob, source=""))
        return lambda: _once(cache_key, transcode)

    cache_key = f"export-layer:{key}:{spec.compression}:{level}:{spec.epoch}"

    def generate() -> LayerBlob | None:
        from pybk.core.fs.archive import write_overlay_upper_tar

        found = _cached(store, content, cache_key)
        if found is not None:
            return found
        layer = sn.layer_dir(key)
        if not os.listdir(layer):
            return None
        blob = write_blob(content, lambda out: write_overlay_upper_tar(
            layer, out, source_date_epoch=spec.epoch), spec, blocks=GzipBlockIndex(store, content))
        return _remember(store, cache_key, blob)
    return lambda: _once(cache_key, generate)


def write_ahead(store: Any, ref: Any, content: Any, spec: LayerSpec) -> None:
    """Write the layer blobs of ``ref`` (a committed snapshot below the result) while the last
    step still runs: the export then finds them written, or waits for the one being written
    instead of writing it again. A failure is left for the export to meet."""
    with contextlib.suppress(Exception):
        snapshot_layers(store, ref, content, spec)


def export_layers(result: Any, content: Any, spec: LayerSpec, *,
                  max_workers: int = 4) -> list[ExportedLayer]:
    """The layers of ``result`` (a SolveResult) bottom to top, their blobs in ``content``."""
    return snapshot_layers(result.store, result.ref, content, spec, max_workers=max_workers)


def snapshot_layers(store: Any, ref: Any, content: Any, spec: LayerSpec, *,
                    max_workers: int = 4) -> list[ExportedLayer]:
    """The layers of ``ref`` (a solver Ref in ``store``) bottom to top, their blobs in
    ``content``."""
    if ref.is_scratch:
        return []
    if ref.path is not None:
        from pybk.core.fs.archive import write_diff_tar

        if not os.listdir(ref.path):
            return []
        blob = write_blob(content, lambda out: write_diff_tar(
            None, ref.path, out, source_date_epoch=spec.epoch), spec)
        return [ExportedLayer(None, blob)]
    record = store.get_record(ref.snapshot)
    sn = store.record_snapshotter(record)
    chain = sn.layer_chain(record.snapshot)
    jobs = [_layer_job(store, content, sn, key, spec) for key in chain]
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs)))) as pool:
        blobs = list(pool.map(lambda job: job(), jobs))
    return [ExportedLayer(key, blob) for key, blob in zip(chain, blobs, strict=True)
            if blob is not None]
