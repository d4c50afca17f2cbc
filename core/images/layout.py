"""OCI image layouts on disk: an image found by tag or digest, an index resolved for a platform.

Read for ``oci-layout://`` sources, for ``--build-context name=oci-layout://…`` and for the local
image store (itself an OCI layout).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.model import Model

_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_REF_NAME = "org.opencontainers.image.ref.name"


class OCILayoutImage(Model):
    """An image of an OCI layout: its manifest and config (descriptors and parsed JSON)."""

    layout_dir: str
    manifest_descriptor: dict[str, Any]
    manifest: dict[str, Any]
    config_descriptor: dict[str, Any]
    config: dict[str, Any]
    layers: list[dict[str, Any]]

    @property
    def digest(self) -> str:
        return self.manifest_descriptor["digest"]

    def blob_path(self, digest: str) -> str:
        return _blob_path(self.layout_dir, digest)


def _blob_path(layout_dir: str, digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo not in ("sha256", "sha512") or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise BuildError(f"invalid digest {digest!r}")
    return os.path.join(layout_dir, "blobs", algo, hexpart)


def _read_json_blob(layout_dir: str, descriptor: Mapping[str, Any]) -> dict[str, Any]:
    import orjson

    digest = descriptor.get("digest", "")
    path = _blob_path(layout_dir, digest)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BuildError(f"oci layout {layout_dir}: blob {digest} not found") from None
    algo = digest.partition(":")[0]
    if f"{algo}:{hashlib.new(algo, data).hexdigest()}" != digest:
        raise BuildError(f"oci layout {layout_dir}: blob {digest} does not match its digest")
    try:
        return orjson.loads(data)
    except ValueError:
        raise BuildError(f"oci layout {layout_dir}: blob {digest} is not JSON") from None


def _host_platform() -> dict[str, str]:
    from pybk.core.platform import host_platform

    return host_platform().to_dict()


def _parse_platform(value: str | Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return _host_platform()
    if isinstance(value, Mapping):
        return dict(value)
    parts = value.split("/")
    plat = {"os": parts[0], "architecture": parts[1] if len(parts) > 1 else ""}
    if len(parts) > 2:
        plat["variant"] = parts[2]
    return plat


def layout_descriptor(layout_dir: str | os.PathLike[str], ref_or_digest: str) -> dict[str, Any]:
    """The descriptor of ``ref_or_digest`` (a tag in ``org.opencontainers.image.ref.name``, or a
    digest) in the layout's index.json: an image index stays an index."""
    import orjson

    layout = os.fspath(layout_dir)
    try:
        with open(os.path.join(layout, "oci-layout"), "rb") as f:
            marker = orjson.loads(f.read())
        with open(os.path.join(layout, "index.json"), "rb") as f:
            index = orjson.loads(f.read())
    except FileNotFoundError as e:
        raise BuildError(f"{layout} is not an OCI layout: missing {os.path.basename(e.filename)}"
                         ) from None
    except ValueError:
        raise BuildError(f"{layout} is not an OCI layout: invalid JSON") from None
    if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
        raise BuildError(f"{layout} is not an OCI layout: no imageLayoutVersion")

    manifests = index.get("manifests") or []
    if ref_or_digest.startswith(("sha256:", "sha512:")):
        found = [m for m in manifests if m.get("digest") == ref_or_digest]
        descriptor = found[0] if found else _nested(layout, manifests, ref_or_digest)
    else:
        found = [m for m in manifests
                 if (m.get("annotations") or {}).get(_REF_NAME) == ref_or_digest]
        if not found:
            tags = sorted({(m.get("annotations") or {}).get(_REF_NAME) for m in manifests} - {None})
            raise BuildError(f"oci layout {layout}: no image tagged {ref_or_digest!r}"
                             + (f" (tags: {', '.join(tags)})" if tags else ""))
        descriptor = found[0]
    if descriptor is None:
        raise BuildError(f"oci layout {layout}: {ref_or_digest} not found")
    return descriptor


def read_oci_layout(layout_dir: str | os.PathLike[str], ref_or_digest: str, *,
                    platform: str | Mapping[str, str] | None = None) -> OCILayoutImage:
    """Find ``ref_or_digest`` (see :func:`layout_descriptor`) in the layout; an image index is
    resolved for ``platform`` (default: this host)."""
    layout = os.fspath(layout_dir)
    descriptor = layout_descriptor(layout, ref_or_digest)
    want = _parse_platform(platform)
    for _ in range(8):
        content = _read_json_blob(layout, descriptor)
        media_type = descriptor.get("mediaType") or content.get("mediaType")
        if media_type not in _INDEX_TYPES and "manifests" not in content:
            break
        descriptor = _select_platform(layout, content.get("manifests") or [], want)
    else:
        raise BuildError(f"oci layout {layout}: image indexes nested too deeply")

    config_descriptor = content.get("config")
    if not isinstance(config_descriptor, dict):
        raise BuildError(f"oci layout {layout}: {descriptor.get('digest')} is not an image "
                         "manifest")
    return OCILayoutImage(
        layout_dir=layout,
        manifest_descriptor=dict(descriptor),
        manifest=content,
        config_descriptor=config_descriptor,
        config=_read_json_blob(layout, config_descriptor),
        layers=list(content.get("layers") or []),
    )


def _nested(layout: str, manifests: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
    """A descriptor for ``digest`` found inside an index listed in index.json, or the blob."""
    for m in manifests:
        if m.get("mediaType") in _INDEX_TYPES:
            for child in _read_json_blob(layout, m).get("manifests") or []:
                if child.get("digest") == digest:
                    return child
    path = _blob_path(layout, digest)
    if os.path.isfile(path):
        return {"digest": digest, "size": os.path.getsize(path)}
    return None


def _select_platform(layout: str, manifests: list[dict[str, Any]],
                     want: Mapping[str, str]) -> dict[str, Any]:
    def matches(m: dict[str, Any]) -> bool:
        plat = m.get("platform") or {}
        if plat.get("os") != want.get("os") or plat.get("architecture") != want.get(
                "architecture"):
            return False
        return not want.get("variant") or plat.get("variant") in (None, want["variant"])

    for m in manifests:
        if matches(m):
            return m
    available = sorted("/".join(filter(None, (p.get("os"), p.get("architecture"),
                                                p.get("variant"))))
                       for p in (m.get("platform") or {} for m in manifests))
    wanted = "/".join(filter(None, (want.get("os"), want.get("architecture"),
                                    want.get("variant"))))
    raise BuildError(f"oci layout {layout}: no image for platform {wanted}"
                     + (f" (available: {', '.join(available)})" if available else ""))
