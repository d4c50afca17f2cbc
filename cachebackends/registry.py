"""``type=registry``: the cache manifest pushed to a registry reference (``ref=``).

Imports also read images carrying an inline cache (``type=inline`` exports), so
``--cache-from type=registry,ref=IMAGE`` reuses an image's own layers. The bytes go through the
registry client (:mod:`pybk.core.remotecache.registry`).
"""

from __future__ import annotations

from pybk.core.converter import setting
from pybk.core.errors import InputError, UsageError
from pybk.core.interfaces import CacheBackend, CacheExporter, CacheImporter
from pybk.core.remotecache.store import (
    CommonCacheOptions,
    cache_exporter,
    cache_importer,
)


class RegistryCacheOptions(CommonCacheOptions):
    ref: str = ""
    image_manifest: bool = setting("image-manifest", default=True)
    oci_mediatypes: bool = setting("oci-mediatypes", default=True)
    registry_insecure: bool = setting("registry.insecure", default=False)


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

    def resolve_exporter(self, options: RegistryCacheOptions) -> CacheExporter:
        from pybk.core.remotecache.registry import RegistryCacheStore

        ref = self._ref(options, "--cache-to")
        if options.image_manifest and not options.oci_mediatypes:
            raise UsageError("image-manifest=true needs oci-mediatypes=true", flag="--cache-to")
        return cache_exporter(
            self.name, options,
            lambda info: RegistryCacheStore(ref, info, image_manifest=options.image_manifest,
                                            oci=options.oci_mediatypes,
                                            insecure=options.registry_insecure),
            where=ref)

    def resolve_importer(self, options: RegistryCacheOptions) -> CacheImporter:
        from pybk.core.remotecache.registry import RegistryCacheStore

        ref = self._ref(options, "--cache-from")
        return cache_importer(
            self.name, options,
            lambda info: RegistryCacheStore(ref, info, insecure=options.registry_insecure), ref)
