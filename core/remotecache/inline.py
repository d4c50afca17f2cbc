"""The inline cache: a cache config inside the image config (key ``moby.buildkit.cache.v0``).

The image exporter calls :func:`inline_cache` (handed to it as ``info["inline_cache"]`` when an
inline cache export is requested) for the base64 config describing the image's own layers;
imports find the key in an image config (:func:`read_inline`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.model import evolve
from pybk.core.remotecache.config import (
    INLINE_CONFIG_KEY,
    CacheConfig,
    CacheFormatError,
    ConfigBuilder,
    record_digest,
)


def inline_config(key: str, layers: Sequence[Any], output: int = 0) -> str | None:
    """The base64 inline cache of an image whose layers (``ExportedLayer``, bottom first) are
    output ``output`` of the vertex with cache key ``key``; None for an image without layers."""
    if not layers:
        return None
    builder = ConfigBuilder()
    top = builder.add_chain(layer.blob for layer in layers)
    builder.add_record(record_digest(key, output), top, chain=range(top + 1))
    return base64.b64encode(builder.build().to_json(annotations=False)).decode()


def inline_cache(result: Any, layers: Sequence[Any]) -> str | None:
    """What the client puts in ``info["inline_cache"]`` for the image exporter: the inline
    cache of one solved result (a platform's) exported with ``layers``."""
    key = getattr(result, "cache_key", "")
    return inline_config(key, layers, getattr(result, "cache_output", 0)) if key else None


def read_inline(config_bytes: bytes, layers: Sequence[Mapping[str, Any]], what: str) -> CacheConfig:
    """The inline cache of an image: its config blob and manifest layer descriptors."""
    try:
        image = json.loads(config_bytes)
        raw = image.get(INLINE_CONFIG_KEY)
        diff_ids = list((image.get("rootfs") or {}).get("diff_ids") or [])
    except (ValueError, AttributeError):
        raise CacheFormatError(f"{what}: the image config is not JSON") from None
    if not raw:
        raise CacheFormatError(f"{what}: not a cache manifest, and the image carries no inline "
                               "cache")
    try:
        data = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        raise CacheFormatError(f"{what}: {INLINE_CONFIG_KEY} is not base64") from None
    config = CacheConfig.from_json(data, what=what)
    position = {d.get("digest"): i for i, d in enumerate(layers)}
    filled = []
    for layer in config.layers:
        i = position.get(layer.blob)
        if i is None or i >= len(diff_ids):
            raise CacheFormatError(f"{what}: inline cache names layer {layer.blob}, which the "
                                   "image does not have")
        d = layers[i]
        filled.append(evolve(layer, media_type=str(d.get("mediaType", "")),
                                   size=int(d.get("size", -1)), diff_id=diff_ids[i]))
    return evolve(config, layers=tuple(filled))
