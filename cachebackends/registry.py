"""``type=registry``: the cache manifest pushed to a registry reference (``ref=``).

Imports also read images carrying an inline cache (``type=inline`` exports), so
``--cache-from type=registry,ref=IMAGE`` reuses an image's own layers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import attrs

from pybk.core.converter import setting
from pybk.core.errors import InputError, UsageError
from pybk.core.interfaces import CacheBackend
from pybk.core.remotecache.config import CACHE_CONFIG_MEDIA_TYPE, CacheConfig, CacheLayer
from pybk.core.remotecache.store import (
    CacheStore,
    CommonCacheOptions,
    ExportPlan,
    RemoteCacheExporter,
    RemoteCacheImporter,
    export_settings,
    layer_media_type,
    unwrap_manifest,
    wrap_config,
)


@attrs.frozen
class RegistryCacheOptions(CommonCacheOptions):
    ref: str = ""
    image_manifest: bool = setting("image-manifest", default=True)
    oci_mediatypes: bool = setting("oci-mediatypes", default=True)
    registry_insecure: bool = setting("registry.insecure", default=False)


class _Insecure:
    """A registry host's configuration with ``insecure`` (plain HTTP allowed) turned on."""

    def __init__(self, base: Any):
        self._base = base

    def __getattr__(self, name: str) -> Any:
        if name == "insecure":
            return True
        return getattr(self._base, name, None)


class RegistryCacheStore(CacheStore):
    """A cache manifest (or an image with an inline cache) at ``ref``."""

    def __init__(self, ref: str, info: Mapping[str, Any], *, image_manifest: bool = True,
                 oci: bool = True, insecure: bool = False):
        from pybk.core.registry import parse_reference

        self.ref = parse_reference(ref)
        hosts = dict(info.get("registry_hosts") or {})
        if insecure:
            hosts[self.ref.domain] = _Insecure(hosts.get(self.ref.domain))
        self.hosts = hosts
        self.image_manifest = image_manifest
        self.oci = oci

    def _client(self, content: Any = None) -> Any:
        from pybk.core.registry.client import RegistryClient

        return RegistryClient(self.hosts, content)

    def _run(self, work: Any, content: Any = None) -> Any:
        async def main() -> Any:
            async with self._client(content) as client:
                return await work(client)
        return asyncio.run(main())

    @staticmethod
    def _descriptor(desc: Mapping[str, Any]) -> Any:
        from pybk.core.registry.client import Descriptor

        return Descriptor(str(desc.get("mediaType", "")), str(desc["digest"]),
                          int(desc.get("size", -1)))

    # blobs are pushed by export() in one session; these serve single lookups
    def has_blob(self, digest: str) -> bool:
        return self._run(lambda c: c.blob_exists(self.ref, digest))

    def put_blob(self, layer: CacheLayer, path: str) -> None:
        desc = self._descriptor(layer.descriptor(layer_media_type(layer.media_type, self.oci)))
        self._run(lambda c: c.push_blob(self.ref, desc, path))

    def fetch_blob(self, layer: CacheLayer, content: Any) -> None:
        desc = self._descriptor({"mediaType": layer.media_type, "digest": layer.blob,
                                 "size": layer.size})
        self._run(lambda c: c.fetch_blob(self.ref, desc), content)

    def export(self, plan: ExportPlan) -> dict[str, Any]:
        wrapped = wrap_config(plan.config, image_manifest=self.image_manifest, oci=self.oci)

        async def main() -> int:
            async with self._client(plan.content) as client:
                limit = asyncio.Semaphore(4)

                async def push(desc: Mapping[str, Any]) -> bool:
                    async with limit:
                        return await client.push_blob(self.ref, self._descriptor(desc))

                sent = await asyncio.gather(*(push(d) for d in wrapped.layers))
                await client.push_blob(self.ref, self._descriptor(
                    {"mediaType": CACHE_CONFIG_MEDIA_TYPE,
                     "digest": wrapped.config_digest, "size": len(wrapped.config)}),
                    wrapped.config)
                await client.push_manifest(self.ref, wrapped.manifest, wrapped.media_type)
                return sum(1 for s in sent if s)

        uploaded = asyncio.run(main())
        return {"cache.manifest": json.dumps(wrapped.descriptor, separators=(",", ":")),
                "cache.blobs.uploaded": uploaded, "cache.blobs.total": len(wrapped.layers)}

    def write_config(self, plan: ExportPlan) -> dict[str, Any]:
        return self.export(plan)

    def read_configs(self) -> list[CacheConfig]:
        from pybk.core.registry import INDEX_TYPES

        what = str(self.ref)

        async def main() -> CacheConfig:
            async with self._client() as client:
                _, media_type, body = await client.get_manifest(self.ref)
                blobs: dict[str, bytes] = {}

                async def prefetch(desc: Mapping[str, Any]) -> None:
                    blobs[desc["digest"]] = await client.fetch_blob_bytes(
                        self.ref, self._descriptor(desc))

                parsed = json.loads(body)
                if media_type in INDEX_TYPES and not any(
                        d.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE
                        for d in parsed.get("manifests") or []):
                    image = await client.resolve(self.ref)
                    from pybk.cachebackends.inline import read_inline

                    return read_inline(json.dumps(image.config).encode(),
                                       image.manifest.get("layers") or [], what)
                wanted = [d for d in [parsed.get("config") or {}, *(parsed.get("manifests") or [])]
                          if d.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE]
                if not wanted and parsed.get("config"):
                    wanted = [parsed["config"]]
                for desc in wanted:
                    await prefetch(desc)
                return unwrap_manifest(body, lambda d: blobs[d["digest"]], what)

        return [asyncio.run(main())]


class RegistryCache(CacheBackend):
    """A cache manifest in a registry repository (ref=REGISTRY/REPO:TAG)."""

    name = "registry"
    Options = RegistryCacheOptions

    @staticmethod
    def _ref(options: RegistryCacheOptions, flag: str) -> str:
        from pybk.core.registry import parse_reference

        if not options.ref:
            raise UsageError("type=registry needs ref=REGISTRY/REPOSITORY[:TAG]", flag=flag)
        try:
            return str(parse_reference(options.ref))
        except InputError as exc:
            raise UsageError(f"ref={options.ref}: {exc}", flag=flag) from None

    def resolve_exporter(self, options: RegistryCacheOptions) -> RemoteCacheExporter:
        ref = self._ref(options, "--cache-to")
        if options.image_manifest and not options.oci_mediatypes:
            raise UsageError("image-manifest=true needs oci-mediatypes=true", flag="--cache-to")
        return RemoteCacheExporter(
            self.name, export_settings(options),
            lambda info: RegistryCacheStore(ref, info, image_manifest=options.image_manifest,
                                            oci=options.oci_mediatypes,
                                            insecure=options.registry_insecure),
            where=ref)

    def resolve_importer(self, options: RegistryCacheOptions) -> RemoteCacheImporter:
        ref = self._ref(options, "--cache-from")
        return RemoteCacheImporter(
            self.name, lambda info: RegistryCacheStore(ref, info,
                                                       insecure=options.registry_insecure),
            where=ref)
