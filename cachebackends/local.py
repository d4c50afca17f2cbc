"""``type=local``: the cache as an OCI layout directory (``dest=`` / ``src=``)."""

from __future__ import annotations

import os
import re

from pybk.core.converter import setting
from pybk.core.errors import UsageError
from pybk.core.interfaces import CacheBackend, CacheExporter, CacheImporter
from pybk.core.remotecache.store import (
    CommonCacheOptions,
    LayoutCacheStore,
    cache_exporter,
    cache_importer,
)


class LocalCacheOptions(CommonCacheOptions):
    dest: str = ""
    src: str = ""
    tag: str = "latest"
    digest: str = ""
    image_manifest: bool | None = setting("image-manifest", default=None)
    oci_mediatypes: bool = setting("oci-mediatypes", default=True)
    reset: bool = False


class LocalCache(CacheBackend):
    """A directory holding the cache as an OCI layout (dest= to export, src= to import)."""

    name = "local"
    Options = LocalCacheOptions

    def resolve_exporter(self, options: LocalCacheOptions) -> CacheExporter:
        if not options.dest:
            raise UsageError("type=local needs dest=DIR", flag="--cache-to")
        image_manifest = (options.oci_mediatypes if options.image_manifest is None
                          else options.image_manifest)
        if image_manifest and not options.oci_mediatypes:
            raise UsageError("image-manifest=true needs oci-mediatypes=true", flag="--cache-to")
        dest = os.path.abspath(options.dest)
        return cache_exporter(
            self.name, options,
            lambda info: LayoutCacheStore(dest, tag=options.tag, image_manifest=image_manifest,
                                          oci=options.oci_mediatypes, reset=options.reset),
            where=f"local:{dest}")

    def resolve_importer(self, options: LocalCacheOptions) -> CacheImporter:
        if not options.src:
            raise UsageError("type=local needs src=DIR", flag="--cache-from")
        if options.digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", options.digest):
            raise UsageError(f"digest={options.digest}: expected sha256:<64 hex>",
                             flag="--cache-from")
        src = os.path.abspath(options.src)
        return cache_importer(
            self.name, options,
            lambda info: LayoutCacheStore(src, tag=options.tag, digest=options.digest),
            f"local:{src}")
