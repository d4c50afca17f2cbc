"""``type=s3``: blobs at ``<prefix><blobs_prefix>sha256:<hex>``, the cache config at
``<prefix><manifests_prefix><name>`` for each name, in one bucket (``s3://<bucket>`` through
fsspec's s3fs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

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
    split_names,
)


class S3CacheOptions(CommonCacheOptions):
    bucket: str = ""
    region: str = ""
    name: str = "buildkit"
    prefix: str = ""
    blobs_prefix: str = "blobs/"
    manifests_prefix: str = "manifests/"
    endpoint_url: str = ""
    use_path_style: bool = False
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    upload_parallelism: int = setting(default=4, check=lambda v: _positive(v))
    retry_mode: Literal["", "standard", "adaptive", "legacy"] = ""
    retry_max_attempts: int | None = None
    touch_refresh: str = setting(default="24h", unsupported="existing blobs are not touched")
    disable_accept_encoding: bool = setting(
        default=False, unsupported="s3fs negotiates encodings itself")


def _positive(value: int) -> None:
    if value < 1:
        raise ValueError("must be at least 1")


class _S3(Model):
    bucket: str
    options: S3CacheOptions
    region: str

    def storage_options(self) -> dict[str, Any]:
        """The s3fs filesystem's options."""
        config: dict[str, Any] = {}
        if self.options.use_path_style:
            config["s3"] = {"addressing_style": "path"}
        if self.options.retry_mode or self.options.retry_max_attempts:
            retries: dict[str, Any] = {}
            if self.options.retry_mode:
                retries["mode"] = self.options.retry_mode
            if self.options.retry_max_attempts:
                retries["max_attempts"] = self.options.retry_max_attempts
            config["retries"] = retries
        o = self.options
        return {"key": o.access_key_id or None, "secret": o.secret_access_key or None,
                "token": o.session_token or None, "endpoint_url": o.endpoint_url or None,
                "client_kwargs": {"region_name": self.region} if self.region else {},
                "config_kwargs": config, "skip_instance_cache": True}

    def store(self, info: Mapping[str, Any]) -> FsspecCacheStore:
        o = self.options
        return FsspecCacheStore.open(
            f"s3://{self.bucket}", self.storage_options(),
            blob_name=lambda digest: f"{o.prefix}{o.blobs_prefix}{digest}",
            manifests=[f"{o.prefix}{o.manifests_prefix}{n}" for n in split_names(o.name)],
            parallelism=o.upload_parallelism)


class S3Cache(CacheBackend):
    """An S3 bucket (or any S3-compatible service: endpoint_url=, use_path_style=true)."""

    name = "s3"
    Options = S3CacheOptions

    def _settings(self, options: S3CacheOptions, flag: str) -> _S3:
        bucket = env_or(options.bucket, "AWS_BUCKET")
        region = env_or(options.region, "AWS_REGION", "AWS_DEFAULT_REGION")
        if not bucket:
            raise UsageError("type=s3 needs bucket= (or $AWS_BUCKET)", flag=flag)
        if not region:
            raise UsageError("type=s3 needs region= (or $AWS_REGION)", flag=flag)
        if not split_names(options.name):
            raise UsageError("type=s3 needs a name", flag=flag)
        return _S3(bucket, options, region)

    def resolve_exporter(self, options: S3CacheOptions) -> CacheExporter:
        s3 = self._settings(options, "--cache-to")
        return cache_exporter(self.name, options, s3.store,
                              where=f"s3://{s3.bucket}/{options.prefix}")

    def resolve_importer(self, options: S3CacheOptions) -> CacheImporter:
        s3 = self._settings(options, "--cache-from")
        return cache_importer(self.name, options, s3.store, f"s3://{s3.bucket}/{options.prefix}")
