"""Registers the built-in remote cache backends (local, registry, inline, s3, azblob, gha)."""

from __future__ import annotations

from pybk.core.markers import hookimpl


@hookimpl
def pybk_register_cache_backends():
    from pybk.cachebackends.azblob import AzblobCache
    from pybk.cachebackends.gha_backend import GHACache
    from pybk.cachebackends.inline import InlineCache
    from pybk.cachebackends.local import LocalCache
    from pybk.cachebackends.registry import RegistryCache
    from pybk.cachebackends.s3 import S3Cache

    return [LocalCache, RegistryCache, InlineCache, S3Cache, AzblobCache, GHACache]
