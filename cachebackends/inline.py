"""``type=inline``: the cache config inside the image config (key ``moby.buildkit.cache.v0``).

The image exporter writes it (:mod:`pybk.core.remotecache.inline`); importing goes through
``type=registry,ref=IMAGE``, which finds the key in the image config.
"""

from __future__ import annotations

from pybk.core.errors import UsageError
from pybk.core.interfaces import CacheBackend, CacheExporter
from pybk.core.remotecache.store import CommonCacheOptions, cache_exporter


class InlineCache(CacheBackend):
    """The cache in the exported image's config (import it with type=registry,ref=IMAGE)."""

    name = "inline"
    Options = CommonCacheOptions

    def resolve_exporter(self, options: CommonCacheOptions) -> CacheExporter:
        if options.cache_mounts:
            raise UsageError("type=inline cannot carry cache mounts (cache-mounts=true): "
                             "export them with another cache type", flag="--cache-to")
        return cache_exporter(self.name, options, None, where="inline")
