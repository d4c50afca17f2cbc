"""``type=azblob``: blobs at ``<prefix>/<blobs_prefix>/sha256:<hex>``, the cache config at
``<prefix>/<manifests_prefix>/<name>``, in one container (created if missing): ``abfs://<container>`` through fsspec's adlfs."""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Mapping
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.interfaces import CacheBackend, CacheExporter, CacheImporter
from pybk.core.model import Model, evolve
from pybk.core.remotecache.store import (
    CommonCacheOptions,
    FsspecCacheStore,
    cache_exporter,
    cache_importer,
    env_or,
    split_names,
)


class AzblobCacheOptions(CommonCacheOptions):
    account_url: str = ""
    account_name: str = ""
    container: str = ""
    prefix: str = ""
    blobs_prefix: str = "blobs"
    manifests_prefix: str = "manifests"
    name: str = "buildkit"
    secret_access_key: str = ""


class _Azure(Model):
    account_url: str
    account_name: str
    container: str
    options: AzblobCacheOptions

    def storage_options(self) -> dict[str, Any]:
        """The adlfs filesystem's options: a connection string with the key, else the
        account's default credentials."""
        key = self.options.secret_access_key
        if key:
            scheme = urllib.parse.urlsplit(self.account_url).scheme or "https"
            conn = (f"DefaultEndpointsProtocol={scheme};AccountName={self.account_name};"
                    f"AccountKey={key};BlobEndpoint={self.account_url};")
            return {"connection_string": conn, "skip_instance_cache": True}
        host = urllib.parse.urlsplit(self.account_url).netloc
        return {"account_name": self.account_name, "account_host": host, "anon": False,
                "skip_instance_cache": True}

    def store(self, info: Mapping[str, Any]) -> FsspecCacheStore:
        o = self.options
        container = self.container

        def name(*parts: str) -> str:
            return posixpath.join(*(p for p in parts if p))

        def create_container(fs: Any) -> None:
            if not fs.exists(container):
                fs.mkdir(container)

        return FsspecCacheStore.open(
            f"abfs://{container}", self.storage_options(),
            blob_name=lambda digest: name(o.prefix, o.blobs_prefix, digest),
            manifests=[name(o.prefix, o.manifests_prefix, n) for n in split_names(o.name)],
            prepare=create_container)


class AzblobCache(CacheBackend):
    """An Azure Blob Storage container."""

    name = "azblob"
    Options = AzblobCacheOptions

    def _settings(self, options: AzblobCacheOptions, flag: str) -> _Azure:
        url = env_or(options.account_url, "BUILDKIT_AZURE_STORAGE_ACCOUNT_URL")
        if not url:
            raise UsageError("type=azblob needs account_url= "
                             "(or $BUILDKIT_AZURE_STORAGE_ACCOUNT_URL)", flag=flag)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"account_url={url}: expected http(s)://HOST[/PATH]", flag=flag)
        name = env_or(options.account_name, "BUILDKIT_AZURE_STORAGE_ACCOUNT_NAME",
                      default=parsed.hostname.split(".")[0] if parsed.hostname else "")
        container = env_or(options.container, "BUILDKIT_AZURE_STORAGE_CONTAINER",
                           default="buildkit-cache")
        prefix = env_or(options.prefix, "BUILDKIT_AZURE_STORAGE_PREFIX")
        if not split_names(options.name):
            raise UsageError("type=azblob needs a name", flag=flag)
        return _Azure(url.rstrip("/"), name, container, evolve(options, prefix=prefix))

    def resolve_exporter(self, options: AzblobCacheOptions) -> CacheExporter:
        az = self._settings(options, "--cache-to")
        return cache_exporter(self.name, options, az.store, where=f"azblob://{az.container}")

    def resolve_importer(self, options: AzblobCacheOptions) -> CacheImporter:
        az = self._settings(options, "--cache-from")
        return cache_importer(self.name, options, az.store, f"azblob://{az.container}")
