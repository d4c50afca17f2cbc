"""Where a remote cache lives: the stores, and the options every backend shares.

A :class:`~pybk.core.interfaces.CacheStore` answers four questions: does a blob exist, put a
blob, fetch a blob into the local content store, and read/write the cache config.
:class:`FsspecCacheStore` serves s3, azblob and gha (blobs and the bare cache config as objects
on an fsspec filesystem, opened from a URL); :class:`LayoutCacheStore` serves ``local`` (an OCI
layout directory whose index.json tags a manifest wrapping the cache config). The registry store
lives in :mod:`.registry`.

Backends differ only in where the bytes go: each ``resolve_exporter`` / ``resolve_importer``
returns a :class:`~pybk.core.interfaces.CacheExporter` / :class:`~pybk.core.interfaces.CacheImporter`
with a function opening that store (:func:`cache_exporter` validates the shared export options).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from pybk.core.converter import setting
from pybk.core.errors import PybkError, UsageError
from pybk.core.interfaces import CacheExporter, CacheImporter, CacheStore, OpenStore
from pybk.core.model import Model, field
from pybk.core.remotecache.config import (
    CACHE_CONFIG_MEDIA_TYPE,
    CacheConfig,
    CacheFormatError,
    CacheLayer,
    CacheMount,
)

OCI_LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


class CacheUnavailable(PybkError):
    """A remote cache that cannot be reached or read."""


# --------------------------------------------------------------------------------------------
# Options shared by every backend
# --------------------------------------------------------------------------------------------


class CommonCacheOptions(Model):
    """Attributes every backend takes: the export ones (imports ignore them) and the cache
    mount ones (both directions)."""

    mode: Literal["min", "max"] = "min"
    ignore_error: bool = setting("ignore-error", default=False)
    compression: Literal["gzip", "zstd", "uncompressed"] = "gzip"
    #: checked against the compression's range by :func:`pybk.core.images.layers.check_level`
    compression_level: int | None = setting("compression-level", default=None)
    force_compression: bool = setting("force-compression", default=False)
    #: export / restore the contents of ``RUN --mount=type=cache`` directories (pybk's own)
    cache_mounts: bool = setting("cache-mounts", default=False)
    cache_mount_ids: str = setting("cache-mount-ids", default="")


def _mount_ids(options: CommonCacheOptions, flag: str) -> tuple[str, ...]:
    ids = tuple(split_names(options.cache_mount_ids))
    if options.cache_mount_ids and not options.cache_mounts:
        raise UsageError("cache-mount-ids= needs cache-mounts=true", flag=flag)
    if options.cache_mount_ids and not ids:
        raise UsageError("cache-mount-ids= names no cache mount (ID1;ID2)", flag=flag)
    return ids


def cache_exporter(backend: str, options: CommonCacheOptions, open_store: OpenStore | None,
                   where: str, flag: str = "--cache-to") -> CacheExporter:
    """The export of ``backend`` to ``where``, its shared options validated."""
    from pybk.core.images.layers import LayerSpec, check_level

    check_level(options.compression, options.compression_level, flag)
    return CacheExporter(backend=backend, where=where, open=open_store, mode=options.mode,
                         ignore_error=options.ignore_error,
                         layers=LayerSpec(compression=options.compression,
                                          level=options.compression_level,
                                          force=options.force_compression),
                         cache_mounts=options.cache_mounts,
                         cache_mount_ids=_mount_ids(options, flag))


def cache_importer(backend: str, options: CommonCacheOptions, open_store: OpenStore,
                   where: str, flag: str = "--cache-from") -> CacheImporter:
    """The import of ``backend`` from ``where``, its cache mount options validated."""
    return CacheImporter(backend, where, open_store, cache_mounts=options.cache_mounts,
                         cache_mount_ids=_mount_ids(options, flag))


def env_or(value: str, *names: str, default: str = "") -> str:
    """``value`` if set, else the first set environment variable of ``names``, else default."""
    if value:
        return value
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


def split_names(value: str) -> list[str]:
    """A ``;``-separated name list (``name=a;b``)."""
    return [n.strip() for n in value.split(";") if n.strip()]


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


class ExportPlan(Model):
    """What to write: the config and where its blobs are (the local content store)."""

    config: CacheConfig
    content: Any  # pybk.core.store.content.ContentStore
    info: Mapping[str, Any] = field(factory=dict)

    def blobs(self) -> list[CacheLayer]:
        seen: dict[str, CacheLayer] = {}
        for layer in [*self.config.layers, *(m.layer for m in self.config.mounts)]:
            seen.setdefault(layer.blob, layer)
        return list(seen.values())


def copy_into_content(src: Any, content: Any, digest: str) -> None:
    """Stream the file object ``src`` into ``content`` as ``digest`` (verified)."""
    with content.writer(expected_digest=digest) as w:
        w.copy_from(src)


class FsspecCacheStore(CacheStore):
    """Blobs and bare cache configs as objects on an fsspec filesystem (s3, azblob, gha).

    ``blob_path`` and ``manifests`` name objects on ``fs``; ``imports`` (given the filesystem)
    lists the configs an import reads when they are not ``manifests``; ``prepare`` runs before
    an export (e.g. creating the container).
    """

    def __init__(self, fs: Any, *, blob_path: Callable[[str], str], manifests: Sequence[str],
                 imports: Callable[[Any], Sequence[str]] | None = None, parallelism: int = 4,
                 prepare: Callable[[Any], None] | None = None):
        self.fs = fs
        self.blob_path = blob_path
        self.manifests = list(manifests)
        self._imports = imports
        self.parallelism = parallelism
        self._prepare = prepare

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any], *,
             blob_name: Callable[[str], str], manifests: Sequence[str],
             imports: Callable[[Any], Sequence[str]] | None = None, parallelism: int = 4,
             prepare: Callable[[Any], None] | None = None) -> FsspecCacheStore:
        """The store at ``url`` (``s3://bucket``, ``abfs://container``, ``gha://``): object
        names (``blob_name(digest)``, ``manifests``) are relative to the URL's path."""
        import fsspec
        from fsspec.core import split_protocol

        # as fsspec.core.url_to_fs, but the options may hold a ``url`` of their own (gha)
        fs = fsspec.filesystem(split_protocol(url)[0], **storage_options)
        root = fs._strip_protocol(url).rstrip("/")

        def path(name: str) -> str:
            return f"{root}/{name}" if root else name

        return cls(fs, blob_path=lambda digest: path(blob_name(digest)),
                   manifests=[path(n) for n in manifests], imports=imports,
                   parallelism=parallelism, prepare=prepare)

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.exists(self.blob_path(digest)))

    def put_blob(self, layer: CacheLayer, path: str) -> None:
        self.fs.put_file(path, self.blob_path(layer.blob))

    def fetch_blob(self, layer: CacheLayer, content: Any) -> None:
        with self.fs.open(self.blob_path(layer.blob), "rb") as src:
            copy_into_content(src, content, layer.blob)

    def export(self, plan: ExportPlan) -> dict[str, Any]:
        if self._prepare is not None:
            self._prepare(self.fs)
        return super().export(plan)

    def write_config(self, plan: ExportPlan) -> dict[str, Any]:
        data = plan.config.to_json(annotations=True)
        for path in self.manifests:
            self.fs.pipe_file(path, data)
        return {"cache.manifests": ",".join(self.manifests)}

    def read_configs(self) -> list[CacheConfig]:
        paths = list(self._imports(self.fs)) if self._imports is not None else self.manifests
        found = []
        for path in paths:
            if not self.fs.exists(path):
                continue
            found.append(CacheConfig.from_json(self.fs.cat_file(path), what=path))
        return found


# --------------------------------------------------------------------------------------------
# The manifest wrapper (local and registry)
# --------------------------------------------------------------------------------------------

_TO_DOCKER = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.oci.image.layer.v1.tar": "application/vnd.docker.image.rootfs.diff.tar",
}
_TO_OCI = {v: k for k, v in _TO_DOCKER.items()}


def layer_media_type(media_type: str, oci: bool) -> str:
    return (_TO_OCI if oci else _TO_DOCKER).get(media_type, media_type)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Wrapped(Model):
    """The config blob and the manifest (or index) wrapping it."""

    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str
    media_type: str
    layers: tuple[dict[str, Any], ...]

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.manifest_digest,
                "size": len(self.manifest)}


def wrap_config(config: CacheConfig, *, image_manifest: bool, oci: bool) -> Wrapped:
    """BuildKit's manifest wrapper: an image manifest whose config is the cache config, or an
    index (Docker manifest list without OCI media types) listing the layers then the config."""
    from pybk.core.registry import DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
    from pybk.core.serialize import sha256_digest

    data = config.to_json(annotations=False)
    config_digest = sha256_digest(data)
    config_desc = {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "digest": config_digest,
                   "size": len(data)}
    seen: dict[str, dict[str, Any]] = {}
    for layer in config.layers:
        seen.setdefault(layer.blob, layer.descriptor(layer_media_type(layer.media_type, oci)))
    for mount in config.mounts:  # listed so that registries keep them and reset= spares them
        seen.setdefault(mount.layer.blob, mount.descriptor(
            layer_media_type(mount.layer.media_type, oci)))
    layers = list(seen.values())
    if image_manifest:
        media_type = OCI_MANIFEST
        manifest = {"schemaVersion": 2, "mediaType": media_type, "config": config_desc,
                    "layers": layers}
    else:
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        manifest = {"schemaVersion": 2, "mediaType": media_type,
                    "manifests": [*layers, config_desc]}
    body = _dumps(manifest)
    return Wrapped(config=data, config_digest=config_digest, manifest=body,
                   manifest_digest=sha256_digest(body), media_type=media_type,
                   layers=tuple(layers))


def unwrap_manifest(body: bytes, read_blob: Callable[[Mapping[str, Any]], bytes],
                    what: str) -> CacheConfig:
    """The cache config of a wrapper manifest, or of an image carrying an inline cache."""
    try:
        manifest = json.loads(body)
    except ValueError:
        raise CacheFormatError(f"{what}: the manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise CacheFormatError(f"{what}: the manifest is not a JSON object")
    if "manifests" in manifest:
        descs = list(manifest.get("manifests") or [])
        configs = [d for d in descs if d.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE]
        if not configs:
            raise CacheFormatError(f"{what}: the index holds no {CACHE_CONFIG_MEDIA_TYPE}")
        config = CacheConfig.from_json(read_blob(configs[-1]), what=what)
        return config.with_descriptors(descs)
    config_desc = manifest.get("config") or {}
    layers = list(manifest.get("layers") or [])
    if config_desc.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE:
        return CacheConfig.from_json(read_blob(config_desc), what=what).with_descriptors(layers)
    from pybk.core.remotecache.inline import read_inline

    return read_inline(read_blob(config_desc), layers, what)


# --------------------------------------------------------------------------------------------
# local: an OCI layout directory
# --------------------------------------------------------------------------------------------


class LayoutCacheStore(CacheStore):
    """``type=local``: ``<dir>/index.json`` tags the cache manifest; blobs in blobs/sha256/."""

    def __init__(self, directory: str, *, tag: str = "latest", digest: str = "",
                 image_manifest: bool = True, oci: bool = True, reset: bool = False):
        self.dir = directory
        self.tag = tag
        self.digest = digest
        self.image_manifest = image_manifest
        self.oci = oci
        self.reset = reset

    def _blob(self, digest: str) -> str:
        algorithm, _, hexpart = digest.partition(":")
        return os.path.join(self.dir, "blobs", algorithm, hexpart)

    def has_blob(self, digest: str) -> bool:
        return os.path.isfile(self._blob(digest))

    def _write_atomic(self, path: str, write: Callable[[Any], None]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{id(write)}"
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)

    def put_blob(self, layer: CacheLayer, path: str) -> None:
        import shutil

        def write(out: Any) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        self._write_atomic(self._blob(layer.blob), write)

    def fetch_blob(self, layer: CacheLayer, content: Any) -> None:
        with open(self._blob(layer.blob), "rb") as src:
            copy_into_content(src, content, layer.blob)

    def _put_bytes(self, digest: str, data: bytes) -> None:
        if not self.has_blob(digest):
            self._write_atomic(self._blob(digest), lambda f: f.write(data))

    @contextlib.contextmanager
    def _index_lock(self) -> Any:
        import fcntl

        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "index.json.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_index(self) -> dict[str, Any]:
        path = os.path.join(self.dir, "index.json")
        try:
            with open(path, "rb") as f:
                index = json.load(f)
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": []}
        except ValueError:
            raise CacheFormatError(f"{path}: not a JSON OCI index") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise CacheFormatError(f"{path}: not an OCI index")
        return index

    def write_config(self, plan: ExportPlan) -> dict[str, Any]:
        wrapped = wrap_config(plan.config, image_manifest=self.image_manifest, oci=self.oci)
        self._put_bytes(wrapped.config_digest, wrapped.config)
        self._put_bytes(wrapped.manifest_digest, wrapped.manifest)
        with self._index_lock():
            layout = os.path.join(self.dir, "oci-layout")
            if not os.path.exists(layout):
                self._write_atomic(layout, lambda f: f.write(_dumps(OCI_LAYOUT_VERSION)))
            index = self._read_index()
            entries = [m for m in index.get("manifests", [])
                       if (m.get("annotations") or {}).get(REF_NAME) != self.tag]
            entries.append({**wrapped.descriptor, "annotations": {REF_NAME: self.tag}})
            index["manifests"] = entries
            self._write_atomic(os.path.join(self.dir, "index.json"),
                               lambda f: f.write(_dumps(index)))
            if self.reset:
                self._remove_unreferenced(entries)
        desc = _dumps(wrapped.descriptor).decode()
        return {"cache.manifest": desc}

    def _remove_unreferenced(self, entries: Iterable[Mapping[str, Any]]) -> None:
        keep: set[str] = set()
        for entry in entries:
            keep.add(entry["digest"])
            try:
                with open(self._blob(entry["digest"]), "rb") as f:
                    body = json.load(f)
            except (OSError, ValueError):
                continue
            for d in [body.get("config") or {}, *(body.get("layers") or []),
                      *(body.get("manifests") or [])]:
                if d.get("digest"):
                    keep.add(d["digest"])
        root = os.path.join(self.dir, "blobs")
        for algorithm in os.listdir(root):
            for name in os.listdir(os.path.join(root, algorithm)):
                if f"{algorithm}:{name}" not in keep:
                    os.unlink(os.path.join(root, algorithm, name))

    def read_configs(self) -> list[CacheConfig]:
        if not os.path.isdir(self.dir):
            raise CacheUnavailable(f"cache directory {self.dir} does not exist")
        digest = self.digest
        if not digest:
            index = self._read_index()
            for key in (CONTAINERD_NAME, REF_NAME):
                found = [m for m in index.get("manifests", [])
                         if (m.get("annotations") or {}).get(key) == self.tag]
                if found:
                    digest = found[-1]["digest"]
                    break
            else:
                raise CacheUnavailable(f"{self.dir}: no cache tagged {self.tag!r} in index.json")

        def read_blob(desc: Mapping[str, Any]) -> bytes:
            try:
                with open(self._blob(desc["digest"]), "rb") as f:
                    return f.read()
            except (OSError, KeyError) as exc:
                raise CacheFormatError(f"{self.dir}: missing blob {desc.get('digest')}: "
                                       f"{exc}") from None

        return [unwrap_manifest(read_blob({"digest": digest}), read_blob, self.dir)]


# --------------------------------------------------------------------------------------------
# Importing
# --------------------------------------------------------------------------------------------


class LoadedCache(Model, eq=False):
    """One imported cache config and the store its blobs come from; ``mounts``: the cache
    mounts of the config the import restores (none unless it says ``cache-mounts=true``)."""

    config: CacheConfig
    store: CacheStore
    where: str
    mounts: tuple[CacheMount, ...] = ()


def load_cache(importer: CacheImporter, info: Mapping[str, Any] | None = None
               ) -> list[LoadedCache]:
    """Read the cache configs of ``importer``'s store (blobs stay remote)."""
    store = importer.open(info or {})
    loaded = []
    for config in store.read_configs():
        mounts: tuple[CacheMount, ...] = ()
        if importer.cache_mounts:
            mounts = tuple(m for m in config.mounts
                           if not importer.cache_mount_ids or m.id in importer.cache_mount_ids)
        loaded.append(LoadedCache(config, store, importer.where, mounts))
    return loaded
