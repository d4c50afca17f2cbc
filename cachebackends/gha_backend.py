"""``type=gha``: the GitHub Actions cache through the ``gha://`` fsspec filesystem
(:mod:`pybk.cachebackends.gha`): blobs ``blobs/sha256:<hex>``, the config as the ``index``
entry of ``scope``; imports read the index of every scope the token can read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pybk.core.converter import setting
from pybk.core.errors import UsageError
from pybk.core.interfaces import CacheBackend, CacheExporter, CacheImporter
from pybk.core.model import Model
from pybk.core.remotecache.store import (
    CommonCacheOptions,
    FsspecCacheStore,
    cache_exporter,
    cache_importer,
    env_or,
)


class GHACacheOptions(CommonCacheOptions):
    url: str = ""
    url_v2: str = ""
    token: str = ""
    scope: str = "buildkit"
    version: str = ""
    timeout: str = "10m"
    repository: str = setting(default="", unsupported="blobs are looked up one by one")
    ghtoken: str = setting(default="", unsupported="blobs are looked up one by one")


class _GHA(Model):
    options: GHACacheOptions
    token: str
    url: str
    url_v2: str

    def store(self, info: Mapping[str, Any]) -> FsspecCacheStore:
        import pybk.cachebackends.gha  # noqa: F401  (registers the gha:// filesystem)

        o = self.options
        return FsspecCacheStore.open(
            "gha://", {"url": self.url or None, "url_v2": self.url_v2 or None,
                       "token": self.token, "scope": o.scope, "version": o.version or None,
                       "timeout": o.timeout, "skip_instance_cache": True},
            blob_name=lambda digest: f"blobs/{digest}", manifests=["index"],
            imports=lambda fs: fs.index_paths())


class GHACache(CacheBackend):
    """The GitHub Actions cache service (v1 REST or v2 Twirp)."""

    name = "gha"
    Options = GHACacheOptions

    def _settings(self, options: GHACacheOptions, flag: str) -> _GHA:
        from pybk.cachebackends.gha import GHACacheError, RuntimeToken, parse_timeout

        token = env_or(options.token, "ACTIONS_RUNTIME_TOKEN")
        if not token:
            raise UsageError("type=gha needs token= (or $ACTIONS_RUNTIME_TOKEN)", flag=flag)
        url = env_or(options.url, "ACTIONS_CACHE_URL", "ACTIONS_RESULTS_URL")
        url_v2 = env_or(options.url_v2, "ACTIONS_RESULTS_URL")
        if not (url or url_v2):
            raise UsageError("type=gha needs url= or url_v2= (or $ACTIONS_CACHE_URL / "
                             "$ACTIONS_RESULTS_URL)", flag=flag)
        if options.version and options.version.lstrip("v") not in ("1", "2"):
            raise UsageError(f"version={options.version}: expected 1 or 2", flag=flag)
        try:
            RuntimeToken.parse(token)
            parse_timeout(options.timeout)
        except (GHACacheError, ValueError) as exc:
            raise UsageError(f"type=gha: {exc}", flag=flag) from None
        return _GHA(options, token, url, url_v2)

    def resolve_exporter(self, options: GHACacheOptions) -> CacheExporter:
        gha = self._settings(options, "--cache-to")
        return cache_exporter(self.name, options, gha.store, where=f"gha:{options.scope}")

    def resolve_importer(self, options: GHACacheOptions) -> CacheImporter:
        gha = self._settings(options, "--cache-from")
        return cache_importer(self.name, options, gha.store, f"gha:{options.scope}")
