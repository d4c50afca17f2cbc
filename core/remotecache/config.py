"""BuildKit's cache config (``application/vnd.buildkit.cacheconfig.v0``): layers and records.

A *layer* is one blob with its parent layer (``-1``: none); a *record* is one cache key with the
layer chains of its results and links to the records of its inputs. pybk's cache keys already
cover their inputs' keys (or content checksums), so a record is found by its ``digest`` alone;
``inputs`` are written for the record graph's sake.

Layer facts (media type, diffID, size, creation time) live in ``annotations`` for the s3, azblob
and gha caches, and in the OCI descriptors of the wrapping manifest for local and registry
caches (``containerd.io/uncompressed``, ``buildkit/createdat``); :meth:`CacheConfig.with_descriptors`
merges those in.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pybk.core.errors import PybkError
from pybk.core.model import Model, evolve
from pybk.core.serialize import sha256_digest

CACHE_CONFIG_MEDIA_TYPE = "application/vnd.buildkit.cacheconfig.v0"
INLINE_CONFIG_KEY = "moby.buildkit.cache.v0"
ANNOTATION_UNCOMPRESSED = "containerd.io/uncompressed"
ANNOTATION_CREATED = "buildkit/createdat"
#: the cache config's key listing exported cache mounts (a pybk extension BuildKit ignores)
CACHE_MOUNTS_KEY = "io.pybk.cache-mounts"
#: the annotation naming the cache mount of a blob in the local and registry wrappers
ANNOTATION_CACHE_MOUNT = "io.pybk.cache-mount.id"


class CacheFormatError(PybkError):
    """A cache config or manifest that cannot be read."""


def record_digest(key: str, output: int) -> str:
    """The record digest of output ``output`` of the vertex with cache key ``key``."""
    return key if output == 0 else sha256_digest(f"{key}#{output}".encode())


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CacheLayer(Model):
    """One layer blob; ``parent`` is an index into the config's layers (-1: the bottom)."""

    blob: str
    parent: int = -1
    media_type: str = ""
    diff_id: str = ""
    size: int = -1
    created_at: str = ""

    def to_json(self, *, annotations: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"blob": self.blob}
        if self.parent != 0:  # Go's omitempty: a missing parent means 0
            out["parent"] = self.parent
        if annotations:
            ann: dict[str, Any] = {"mediaType": self.media_type, "diffID": self.diff_id,
                                   "size": self.size}
            if self.created_at:
                ann["createdAt"] = self.created_at
            out["annotations"] = ann
        return out

    def descriptor(self, media_type: str | None = None) -> dict[str, Any]:
        """The OCI descriptor of the blob, as local and registry caches write it."""
        ann = {ANNOTATION_UNCOMPRESSED: self.diff_id}
        if self.created_at:
            ann[ANNOTATION_CREATED] = self.created_at
        return {"mediaType": media_type or self.media_type, "digest": self.blob,
                "size": self.size, "annotations": ann}


class CacheRecord(Model):
    """One cache key; ``results`` are top layer indexes, ``chains`` explicit layer lists."""

    digest: str
    results: tuple[int, ...] = ()
    chains: tuple[tuple[int, ...], ...] = ()
    inputs: tuple[tuple[int, ...], ...] = ()
    created_at: str = ""


class CacheMount(Model):
    """The contents of one ``RUN --mount=type=cache`` directory (``id``) as one tar blob,
    compressed like the cache's layers (``layer.parent`` is unused)."""

    id: str
    layer: CacheLayer

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "blob": self.layer.blob, "mediaType": self.layer.media_type,
               "diffID": self.layer.diff_id, "size": self.layer.size}
        if self.layer.created_at:
            out["createdAt"] = self.layer.created_at
        return out

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> CacheMount:
        return cls(str(item["id"]), CacheLayer(
            blob=str(item["blob"]), media_type=str(item["mediaType"]),
            diff_id=str(item.get("diffID", "")), size=int(item.get("size", -1)),
            created_at=str(item.get("createdAt", ""))))

    def descriptor(self, media_type: str | None = None) -> dict[str, Any]:
        """The blob's OCI descriptor in the local and registry wrappers."""
        desc = self.layer.descriptor(media_type)
        desc["annotations"][ANNOTATION_CACHE_MOUNT] = self.id
        return desc


class CacheConfig(Model):
    layers: tuple[CacheLayer, ...] = ()
    records: tuple[CacheRecord, ...] = ()
    #: exported cache mounts (``--cache-to …,cache-mounts=true``), under ``CACHE_MOUNTS_KEY``
    mounts: tuple[CacheMount, ...] = ()

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self, *, annotations: bool = True) -> bytes:
        records = []
        for r in self.records:
            rec: dict[str, Any] = {"digest": r.digest}
            if r.results:
                rec["layers"] = [{"layer": i, "createdAt": r.created_at} for i in r.results]
            if r.chains:
                rec["chains"] = [{"layers": list(c), "createdAt": r.created_at} for c in r.chains]
            if any(r.inputs):
                rec["inputs"] = [[{"selector": "", "link": link} for link in links]
                                 for links in r.inputs]
            records.append(rec)
        data: dict[str, Any] = {
            "layers": [layer.to_json(annotations=annotations) for layer in self.layers],
            "records": records}
        if self.mounts:
            data[CACHE_MOUNTS_KEY] = [m.to_json() for m in self.mounts]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str, what: str = "cache config") -> CacheConfig:
        try:
            raw = json.loads(data)
            layers = []
            for item in raw.get("layers") or []:
                ann = item.get("annotations") or {}
                layers.append(CacheLayer(
                    blob=str(item["blob"]), parent=int(item.get("parent", 0)),
                    media_type=str(ann.get("mediaType", "")), diff_id=str(ann.get("diffID", "")),
                    size=int(ann.get("size", -1)), created_at=str(ann.get("createdAt", ""))))
            records = []
            for item in raw.get("records") or []:
                stamps = [x.get("createdAt") for x in [*(item.get("layers") or []),
                                                       *(item.get("chains") or [])]]
                records.append(CacheRecord(
                    digest=str(item["digest"]),
                    results=tuple(int(x["layer"]) for x in item.get("layers") or []),
                    chains=tuple(tuple(int(i) for i in c.get("layers") or [])
                                 for c in item.get("chains") or []),
                    inputs=tuple(tuple(int(x["link"]) for x in links)
                                 for links in item.get("inputs") or []),
                    created_at=str(next((t for t in stamps if t), ""))))
            mounts = tuple(CacheMount.from_json(item) for item in raw.get(CACHE_MOUNTS_KEY) or [])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CacheFormatError(f"{what} is not a valid {CACHE_CONFIG_MEDIA_TYPE}: "
                                   f"{exc}") from None
        n = len(layers)
        for layer in layers:
            if not -1 <= layer.parent < n:
                raise CacheFormatError(f"{what}: layer parent {layer.parent} out of range")
        return cls(tuple(layers), tuple(records), mounts)

    def with_descriptors(self, descriptors: Iterable[Mapping[str, Any]]) -> CacheConfig:
        """Layers completed from OCI descriptors (local and registry caches)."""
        by_digest = {d.get("digest"): d for d in descriptors}
        layers = []
        for layer in self.layers:
            d = by_digest.get(layer.blob)
            if d is None:
                layers.append(layer)
                continue
            ann = d.get("annotations") or {}
            layers.append(evolve(
                layer, media_type=layer.media_type or str(d.get("mediaType", "")),
                diff_id=layer.diff_id or str(ann.get(ANNOTATION_UNCOMPRESSED, "")),
                size=layer.size if layer.size >= 0 else int(d.get("size", -1)),
                created_at=layer.created_at or str(ann.get(ANNOTATION_CREATED, ""))))
        return evolve(self, layers=tuple(layers))

    # -- lookups ------------------------------------------------------------------------

    def chain(self, record: CacheRecord) -> list[CacheLayer] | None:
        """The layers (bottom first) of a record's first usable result, or None."""
        for indexes in record.chains:
            if indexes and all(0 <= i < len(self.layers) for i in indexes):
                return [self.layers[i] for i in indexes]
        for top in record.results:
            out: list[CacheLayer] = []
            i, seen = top, set()
            while i != -1:
                if not 0 <= i < len(self.layers) or i in seen:
                    break
                seen.add(i)
                out.append(self.layers[i])
                i = self.layers[i].parent
            else:
                return out[::-1]
        return None


class ConfigBuilder:
    """Collects layers (deduplicated by blob and parent) and records into a config."""

    def __init__(self) -> None:
        self.layers: list[CacheLayer] = []
        self._layer_index: dict[tuple[str, int], int] = {}
        self.records: list[CacheRecord] = []
        self._record_index: dict[str, int] = {}
        self.created = now_rfc3339()

    def add_chain(self, blobs: Iterable[Any]) -> int:
        """Add a chain of ``LayerBlob`` (bottom first); returns the top layer's index."""
        parent = -1
        for blob in blobs:
            key = (blob.digest, parent)
            index = self._layer_index.get(key)
            if index is None:
                index = self._layer_index[key] = len(self.layers)
                self.layers.append(CacheLayer(
                    blob=blob.digest, parent=parent, media_type=blob.media_type(True),
                    diff_id=blob.diff_id, size=blob.size, created_at=self.created))
            parent = index
        return parent

    def record_index(self, digest: str) -> int | None:
        return self._record_index.get(digest)

    def add_record(self, digest: str, top: int | None, inputs: Iterable[Iterable[int]] = (),
                   *, chain: Iterable[int] | None = None) -> int:
        existing = self._record_index.get(digest)
        if existing is not None:
            return existing
        self._record_index[digest] = len(self.records)
        self.records.append(CacheRecord(
            digest=digest, results=(top,) if top is not None and chain is None else (),
            chains=(tuple(chain),) if chain is not None else (),
            inputs=tuple(tuple(x) for x in inputs), created_at=self.created))
        return self._record_index[digest]

    def build(self) -> CacheConfig:
        return CacheConfig(tuple(self.layers), tuple(self.records))
