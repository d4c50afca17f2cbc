"""A cache in a registry: the cache manifest pushed to a reference, read back with the image's
inline cache as a fallback (an image exported with ``type=inline``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from pybk.core.interfaces import CacheStore
from pybk.core.remotecache.config import CACHE_CONFIG_MEDIA_TYPE, CacheConfig, CacheLayer
from pybk.core.remotecache.inline import read_inline
from pybk.core.remotecache.store import ExportPlan, layer_media_type, unwrap_manifest, wrap_config


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
