"""The ``annotation*`` attributes of the image-producing exporters (image, oci, docker), in
BuildKit's spellings:

- ``annotation.K=V`` and ``annotation-manifest.K=V``: on every image manifest;
- ``annotation-manifest-descriptor.K=V``: on the descriptors pointing at the manifests (the
  index's entries, or the OCI layout's ``index.json`` entry of a single-platform image);
- ``annotation-index.K=V``: on the image index (and the OCI layout's ``index.json``);
- ``annotation-index-descriptor.K=V``: on the ``index.json`` entry pointing at the image index
  (a single-platform image has no index: nothing to put them on, as in BuildKit).

``annotation[PLATFORM].K``, ``annotation-manifest[PLATFORM].K`` and
``annotation-manifest-descriptor[PLATFORM].K`` apply to that platform's manifest only.
``pybk build --annotation`` (buildx's flag) turns ``[TYPE[,TYPE…]:]K=V`` into these attributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pybk.core.errors import InputError, UsageError
from pybk.core.model import Model, field

#: the annotation types (buildx's ``--annotation TYPE:K=V``, BuildKit's ``annotation-TYPE.K``)
TYPES = ("manifest", "manifest-descriptor", "index", "index-descriptor")
#: the types a platform may qualify
PLATFORM_TYPES = ("manifest", "manifest-descriptor")
_ATTR = re.compile(r"^(?:-(?P<type>[a-z-]+))?(?:\[(?P<platform>[^\]]*)\])?\.(?P<key>.+)$")


class Annotations(Model):
    """The annotations of one export: per platform (``""``: every platform) for manifests and
    their descriptors; once for the index and its descriptor."""

    manifest: Mapping[str, Mapping[str, str]] = field(factory=dict)
    manifest_descriptor: Mapping[str, Mapping[str, str]] = field(factory=dict)
    index: Mapping[str, str] = field(factory=dict)
    index_descriptor: Mapping[str, str] = field(factory=dict)

    def for_manifest(self, platform: str) -> dict[str, str]:
        return {**self.manifest.get("", {}), **self.manifest.get(platform, {})}

    def for_descriptor(self, platform: str) -> dict[str, str]:
        return {**self.manifest_descriptor.get("", {}),
                **self.manifest_descriptor.get(platform, {})}

    @property
    def any_manifest(self) -> bool:
        return any(self.manifest.values())


def normalized_platform(text: str, *, where: str, flag: str) -> str:
    from pybk.core.platform import parse_platform

    try:
        return str(parse_platform(text))
    except InputError:
        raise UsageError(f'{where}: invalid platform "{text}" (os/arch[/variant], e.g. '
                         '"linux/amd64")', flag=flag) from None


def parse_attrs(collected: Mapping[str, str], flag: str = "--output") -> Annotations:
    """The annotations of the exporter attributes that start with ``annotation`` (given
    without that word: ``.K``, ``-manifest[linux/amd64].K`` …); a UsageError naming the
    attribute for anything else."""
    tables: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TYPES}
    for rest, value in collected.items():
        attr = "annotation" + rest
        m = _ATTR.match(rest)
        typ = (m["type"] if m else None) or "manifest"
        if m is None or typ not in TYPES:
            raise UsageError(f'unknown attribute "{attr}": expected annotation.KEY or '
                             f"annotation-TYPE[PLATFORM].KEY with TYPE one of "
                             f"{', '.join(TYPES)}", flag=flag)
        platform = ""
        if m["platform"] is not None:
            if typ not in PLATFORM_TYPES:
                raise UsageError(f'attribute "{attr}": a platform applies to manifest and '
                                 "manifest-descriptor annotations only", flag=flag)
            platform = normalized_platform(m["platform"], where=f'attribute "{attr}"',
                                           flag=flag)
        tables[typ].setdefault(platform, {})[m["key"]] = value
    return Annotations(manifest=tables["manifest"],
                       manifest_descriptor=tables["manifest-descriptor"],
                       index=tables["index"].get("", {}),
                       index_descriptor=tables["index-descriptor"].get("", {}))


def platform_of(config: Mapping[str, object]) -> str:
    """``os/arch[/variant]`` of an image config, normalised."""
    parts = [str(config.get("os") or ""), str(config.get("architecture") or "")]
    if config.get("variant"):
        parts.append(str(config["variant"]))
    text = "/".join(parts)
    try:
        from pybk.core.platform import parse_platform

        return str(parse_platform(text))
    except InputError:
        return text
