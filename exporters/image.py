"""The ``image`` exporter: an image manifest and config over the result's layers, written into
the local image store (``store=true``) and/or pushed to a registry (``push=true``).

:func:`build_image` is shared with the ``oci`` and ``docker`` exporters: it produces the layer
blobs (:mod:`pybk.core.images.layers`), the image config (the result's config completed with
``rootfs.diff_ids``, platform, ``created`` and one history entry per layer) and the manifest,
all in the store's content store.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pybk.core.converter import setting
from pybk.core.errors import InputError, UsageError
from pybk.core.images.ids import chain_ids
from pybk.core.images.layers import (
    ExportedLayer,
    LayerSpec,
    check_level,
    export_layers,
)
from pybk.core.interfaces import BuildResultView, Exporter, ExporterInstance, ExportResponse
from pybk.core.model import Model, evolve, field
from pybk.core.registry import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST
from pybk.exporters.annotations import Annotations, parse_attrs, platform_of

#: ``created_by`` of history entries pybk adds for layers the config's history does not cover
HISTORY_CREATED_BY = "pybk"


class CommonImageOptions(Model):
    """Attributes every image-producing exporter (image, oci, docker) takes."""

    name: list[str] = setting(factory=list)
    oci_mediatypes: bool | None = setting("oci-mediatypes", default=None)
    compression: Literal["gzip", "zstd", "uncompressed"] = "gzip"
    compression_level: int | None = setting("compression-level", default=None)
    force_compression: bool = setting("force-compression", default=False)
    rewrite_timestamp: bool = setting("rewrite-timestamp", default=False)
    source_date_epoch: int | None = setting("source-date-epoch", default=None)
    #: every ``annotation…`` attribute, without that word (``.K``, ``-index.K``,
    #: ``-manifest[linux/amd64].K`` …): read by :func:`pybk.exporters.annotations.parse_attrs`
    annotation: dict[str, str] = setting(prefix="annotation", factory=dict)


class ImageOptions(CommonImageOptions):
    push: bool = False
    push_by_digest: bool = setting("push-by-digest", default=False)
    registry_insecure: bool = setting("registry.insecure", default=False)
    store: bool = True
    unpack: bool = False
    dangling_name_prefix: str = setting("dangling-name-prefix", default="")


class ImageSettings(Model):
    """Validated common options: normalised names and the layer spec."""

    names: tuple[str, ...]
    oci: bool
    spec: LayerSpec
    epoch_attr: int | None
    rewrite_timestamp: bool
    annotations: Annotations = field(factory=Annotations)

    @property
    def index_annotations(self) -> Mapping[str, str]:
        return self.annotations.index


def check_common(options: CommonImageOptions, flag: str = "--output", *,
                 default_oci: bool = False) -> ImageSettings:
    """Validate the shared attributes before any build work; UsageError naming the flag.

    ``default_oci``: the media types when ``oci-mediatypes`` is not given (OCI for ``oci``,
    Docker's for ``image`` and ``docker``, as BuildKit)."""
    from pybk.core.registry import parse_reference

    names: list[str] = []
    for name in options.name:
        try:
            names.append(str(parse_reference(name.strip())))
        except InputError as exc:
            raise UsageError(f"name={name}: {exc}", flag=flag) from None
    level = options.compression_level
    check_level(options.compression, level, flag)
    annotations = parse_attrs(options.annotation, flag)
    oci = options.oci_mediatypes if options.oci_mediatypes is not None else (
        default_oci or None)
    needs_oci = options.compression == "zstd" or annotations.any_manifest
    if oci is False and needs_oci:
        why = ("zstd layers" if options.compression == "zstd" else "manifest annotations")
        raise UsageError(f"{why} need oci-mediatypes=true", flag=flag)
    if options.source_date_epoch is not None and options.source_date_epoch < 0:
        raise UsageError("source-date-epoch must be a non-negative number of seconds", flag=flag)
    return ImageSettings(
        names=tuple(dict.fromkeys(names)), oci=bool(oci) or needs_oci,
        spec=LayerSpec(compression=options.compression, level=level,
                       force=options.force_compression),
        epoch_attr=options.source_date_epoch, rewrite_timestamp=options.rewrite_timestamp,
        annotations=annotations)


# --------------------------------------------------------------------------------------------
# Building the image
# --------------------------------------------------------------------------------------------


class BuiltImage(Model, eq=False):
    """An image whose manifest, config and layer blobs are in ``content``."""

    content: Any
    oci: bool
    manifest: dict[str, Any]
    manifest_bytes: bytes
    manifest_digest: str
    config: dict[str, Any]
    config_descriptor: dict[str, Any]
    layers: list[ExportedLayer]
    descriptor_annotations: Mapping[str, str]
    epoch: int | None

    @property
    def media_type(self) -> str:
        return self.manifest["mediaType"]

    @property
    def platform(self) -> dict[str, str]:
        plat = {"architecture": self.config.get("architecture", ""),
                "os": self.config.get("os", "")}
        if self.config.get("variant"):
            plat["variant"] = self.config["variant"]
        return plat

    def descriptor(self, *, annotations: Mapping[str, str] | None = None,
                   platform: bool = False) -> dict[str, Any]:
        """The manifest's descriptor (with the manifest-descriptor annotations)."""
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.manifest_digest,
                                "size": len(self.manifest_bytes)}
        merged = {**self.descriptor_annotations, **(annotations or {})}
        if merged:
            desc["annotations"] = merged
        if platform:
            desc["platform"] = self.platform
        return desc

    def blobs(self) -> list[tuple[str, int]]:
        """``(digest, size)`` of every blob the manifest references, each once, in order."""
        seen: dict[str, int] = {}
        for layer in self.layers:
            seen.setdefault(layer.blob.digest, layer.blob.size)
        seen.setdefault(self.config_descriptor["digest"], self.config_descriptor["size"])
        return list(seen.items())

    def response(self, names: Sequence[str]) -> dict[str, Any]:
        """The exporter response keys (``--metadata-file``)."""
        desc = json.dumps(self.descriptor(), separators=(",", ":")).encode()
        out: dict[str, Any] = {
            "containerimage.digest": self.manifest_digest,
            "containerimage.config.digest": self.config_descriptor["digest"],
            "containerimage.descriptor": base64.b64encode(desc).decode(),
        }
        if names:
            out["image.name"] = ",".join(names)
        return out


def _timestamp(seconds: int | float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    if float(seconds).is_integer():
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    clean = text.replace("Z", "+00:00")
    if "." in clean:  # Go writes nanoseconds; Python parses at most microseconds
        head, _, rest = clean.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        clean = head + "." + digits[:6] + rest[len(digits):]
    try:
        return datetime.datetime.fromisoformat(clean).timestamp()
    except ValueError:
        return None


def resolve_epoch(settings: ImageSettings, info: Mapping[str, Any]) -> int | None:
    """SOURCE_DATE_EPOCH: the exporter attribute, else the build's (``info``)."""
    if settings.epoch_attr is not None:
        return settings.epoch_attr
    value = info.get("source_date_epoch")
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds") from None


def image_config(base: Mapping[str, Any] | None, diff_ids: Sequence[str], *,
                 created: str, epoch: int | None) -> dict[str, Any]:
    """The image config for ``diff_ids``: ``base`` (a frontend's or the base image's, may be
    None) with rootfs, platform and ``created`` set and history matched to the layers."""
    from pybk.core.platform import host_platform

    img = copy.deepcopy(dict(base or {}))
    host = host_platform()
    if not img.get("architecture"):
        img["architecture"] = host.architecture
        if host.variant and not img.get("variant"):
            img["variant"] = host.variant
    img.setdefault("os", host.os)
    img.setdefault("config", {})
    img["created"] = created
    img["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    history = [dict(h) for h in img.get("history") or []]
    layered = [i for i, h in enumerate(history) if not h.get("empty_layer")]
    for i in layered[len(diff_ids):]:
        history[i]["empty_layer"] = True
    for _ in range(len(diff_ids) - len(layered)):
        history.append({"created": created, "created_by": HISTORY_CREATED_BY,
                        "comment": "pybk.exporter.image.v0"})
    for entry in history:
        when = _parse_time(entry.get("created"))
        if when is None or (epoch is not None and when > epoch):
            entry["created"] = created
    img["history"] = history
    return img


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def content_store_for(result: BuildResultView, info: Mapping[str, Any]) -> Any:
    """The content store of the result's store (``info["root"]`` for a storeless result)."""
    from pybk.core.store.content import ContentStore

    store = getattr(result, "store", None)
    root = info.get("root") or (store.root if store is not None else None)
    if root is None:
        root = tempfile.mkdtemp(prefix="pybk-export-")
    return ContentStore(root)


def layer_spec(settings: ImageSettings, info: Mapping[str, Any]) -> LayerSpec:
    """The layers' compression and, with ``rewrite-timestamp``, the epoch of their mtimes."""
    epoch = resolve_epoch(settings, info)
    return evolve(settings.spec, epoch=epoch if settings.rewrite_timestamp else None)


def ahead_spec(settings: ImageSettings, info: Mapping[str, Any]) -> LayerSpec | None:
    """:func:`layer_spec` for writing layers ahead, or None when it cannot be known yet (an
    invalid SOURCE_DATE_EPOCH: the export reports it)."""
    try:
        return layer_spec(settings, info)
    except UsageError:
        return None


def build_image(result: BuildResultView, settings: ImageSettings, info: Mapping[str, Any],
                content: Any = None) -> BuiltImage:
    """Write the result's layers, config and manifest into the content store."""
    content = content if content is not None else content_store_for(result, info)
    epoch = resolve_epoch(settings, info)
    spec = layer_spec(settings, info)
    layers = export_layers(result, content, spec)
    created = _timestamp(epoch if epoch is not None else round(time.time(), 6))
    config = image_config(result.image_config, [layer.blob.diff_id for layer in layers],
                          created=created, epoch=epoch)
    inline_cache = info.get("inline_cache")  # set by the client for --cache-to type=inline
    if inline_cache is not None:
        cache = inline_cache(result, layers)
        if cache:
            config["moby.buildkit.cache.v0"] = cache
    config_bytes = _json_bytes(config)
    config_digest = content.put_bytes(config_bytes)
    oci = settings.oci
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [layer.blob.descriptor(oci) for layer in layers],
    }
    platform = platform_of(config)
    if settings.annotations.for_manifest(platform):
        manifest["annotations"] = settings.annotations.for_manifest(platform)
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = content.put_bytes(manifest_bytes)
    return BuiltImage(content=content, oci=oci, manifest=manifest, manifest_bytes=manifest_bytes,
                      manifest_digest=manifest_digest, config=config,
                      config_descriptor=dict(manifest["config"]), layers=layers,
                      descriptor_annotations=settings.annotations.for_descriptor(platform),
                      epoch=epoch)


class BuiltIndex(Model, eq=False):
    """A multi-platform image: one :class:`BuiltImage` per platform under an OCI index (or a
    Docker manifest list), all in ``content``. It answers like a BuiltImage whose manifest is
    the index, so layout and tarball writers treat both alike."""

    content: Any
    oci: bool
    images: Mapping[str, BuiltImage]
    manifest: dict[str, Any]
    manifest_bytes: bytes
    manifest_digest: str
    epoch: int | None
    #: ``{platform: attestation manifest}`` (provenance), listed after the images
    attestations: Mapping[str, BuiltImage] = field(factory=dict)
    #: the index-descriptor annotations (on the descriptors pointing at the index)
    descriptor_annotations: Mapping[str, str] = field(factory=dict)

    @property
    def media_type(self) -> str:
        return self.manifest["mediaType"]

    def descriptor(self, *, annotations: Mapping[str, str] | None = None,
                   platform: bool = False) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.manifest_digest,
                                "size": len(self.manifest_bytes)}
        merged = {**self.descriptor_annotations, **(annotations or {})}
        if merged:
            desc["annotations"] = merged
        return desc

    def blobs(self) -> list[tuple[str, int]]:
        """Every platform's manifest and blobs, then the attestations', each once."""
        seen: dict[str, int] = {}
        for image in [*self.images.values(), *self.attestations.values()]:
            seen.setdefault(image.manifest_digest, len(image.manifest_bytes))
            for digest, size in image.blobs():
                seen.setdefault(digest, size)
        return list(seen.items())

    def response(self, names: Sequence[str]) -> dict[str, Any]:
        desc = json.dumps(self.descriptor(), separators=(",", ":")).encode()
        out: dict[str, Any] = {"containerimage.digest": self.manifest_digest,
                               "containerimage.descriptor": base64.b64encode(desc).decode()}
        if names:
            out["image.name"] = ",".join(names)
        return out


def build_images(result: BuildResultView, settings: ImageSettings, info: Mapping[str, Any],
                 content: Any = None) -> BuiltImage | BuiltIndex:
    """:func:`build_image`, or for a multi-platform result one image per platform and the
    index over them (platform fields set; the index annotations go on the index). With a
    provenance request (``info["provenance"]``) the result is always an index: the images,
    then one attestation manifest per image."""
    from pybk.core.registry import DOCKER_MANIFEST_LIST, OCI_INDEX

    results = result.platform_results()
    content = content if content is not None else content_store_for(result, info)
    provenance = info.get("provenance")
    if provenance is not None and not settings.oci:
        settings = evolve(settings, oci=True)  # attestation manifests are OCI's
    if results is None and provenance is None:
        return build_image(result, settings, info, content)
    results = results or {"": result}
    images = {platform: build_image(one, settings, info, content)
              for platform, one in results.items()}
    attestations = {platform: build_attestation(
        content, provenance.statement(results[platform], _subjects(image, settings.names)),
        image.manifest_digest) for platform, image in images.items()} if provenance else {}
    index: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_INDEX if settings.oci else DOCKER_MANIFEST_LIST,
        "manifests": [image.descriptor(platform=True) for image in images.values()]
        + [att.descriptor(platform=True) for att in attestations.values()]}
    if settings.index_annotations:
        index["annotations"] = dict(settings.index_annotations)
    index_bytes = _json_bytes(index)
    first = next(iter(images.values()))
    return BuiltIndex(content=content, oci=settings.oci, images=images, manifest=index,
                      manifest_bytes=index_bytes, manifest_digest=content.put_bytes(index_bytes),
                      epoch=first.epoch, attestations=attestations,
                      descriptor_annotations=settings.annotations.index_descriptor)


IN_TOTO = "application/vnd.in-toto+json"
PREDICATE_TYPE_ANNOTATION = "in-toto.io/predicate-type"
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
REFERENCE_DIGEST_ANNOTATION = "vnd.docker.reference.digest"


def _subjects(image: BuiltImage, names: Sequence[str]) -> list[dict[str, Any]]:
    """The in-toto subjects of an image: one package URL per name (``_`` without names)."""
    from pybk.core.images.purl import image_purl

    digest = dict([image.manifest_digest.split(":", 1)])
    plat = image.platform
    platform = "/".join(filter(None, (plat["os"], plat["architecture"], plat.get("variant"))))
    if not names:
        return [{"name": "_", "digest": digest}]
    return [{"name": image_purl(name, platform), "digest": digest} for name in names]


def build_attestation(content: Any, statement: Mapping[str, Any], target: str) -> BuiltImage:
    """An attestation manifest (BuildKit's layout: platform ``unknown/unknown``, one in-toto
    blob as its layer) for the manifest ``target``."""
    from pybk.core.images.layers import LayerBlob

    blob = _json_bytes(statement)
    blob_digest = content.put_bytes(blob)
    config = {"architecture": "unknown", "os": "unknown", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [blob_digest]}}
    config_bytes = _json_bytes(config)
    config_descriptor = {"mediaType": OCI_CONFIG, "digest": content.put_bytes(config_bytes),
                         "size": len(config_bytes)}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor,
                "layers": [{"mediaType": IN_TOTO, "digest": blob_digest, "size": len(blob),
                            "annotations": {PREDICATE_TYPE_ANNOTATION:
                                            statement["predicateType"]}}]}
    manifest_bytes = _json_bytes(manifest)
    layer = ExportedLayer(snapshot=None, blob=LayerBlob(
        digest=blob_digest, size=len(blob), diff_id=blob_digest, compression="uncompressed",
        media=IN_TOTO))
    return BuiltImage(content=content, oci=True, manifest=manifest,
                      manifest_bytes=manifest_bytes,
                      manifest_digest=content.put_bytes(manifest_bytes), config=config,
                      config_descriptor=config_descriptor, layers=[layer],
                      descriptor_annotations={REFERENCE_TYPE_ANNOTATION: "attestation-manifest",
                                              REFERENCE_DIGEST_ANNOTATION: target},
                      epoch=None)


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------


class _HostSettings:
    """A registry host's configuration with some attributes overridden."""

    def __init__(self, base: Any, **overrides: Any):
        self._base = base
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._base, name, None)


def push_image(image: BuiltImage | BuiltIndex, names: Sequence[str], *,
               hosts: Mapping[str, Any] | None = None, insecure: bool = False,
               by_digest: bool = False) -> None:
    """Push the image's blobs and manifest to every name (tag, or digest only); for an index,
    every platform's image by digest, then the index."""
    asyncio.run(_push(image, names, hosts=dict(hosts or {}), insecure=insecure,
                      by_digest=by_digest))


async def _push(image: BuiltImage | BuiltIndex, names: Sequence[str], *, hosts: dict[str, Any],
                insecure: bool, by_digest: bool) -> None:
    from pybk.core.registry import parse_reference
    from pybk.core.registry.client import RegistryClient

    refs = [parse_reference(n) for n in names]
    if insecure:
        for ref in refs:
            hosts[ref.domain] = _HostSettings(hosts.get(ref.domain), insecure=True)
    async with RegistryClient(hosts, image.content) as client:
        for ref in refs:
            if isinstance(image, BuiltIndex):
                for one in [*image.images.values(), *image.attestations.values()]:
                    await _push_one(client, one, ref, by_digest=True)
                await client.push_manifest(ref, image.manifest_bytes, image.media_type,
                                           by_digest=by_digest)
            else:
                await _push_one(client, image, ref, by_digest=by_digest)


async def _push_one(client: Any, image: BuiltImage, ref: Any, *, by_digest: bool) -> None:
    from pybk.core.registry import parse_reference
    from pybk.core.registry.client import Descriptor

    async def layer(exported: ExportedLayer) -> None:
        blob = exported.blob
        source = parse_reference(blob.source) if blob.source else None
        await client.push_blob(
            ref, Descriptor(blob.media_type(image.oci), blob.digest, blob.size),
            mount_from=source if source is not None and source.domain == ref.domain
            else None)

    await asyncio.gather(*(layer(e) for e in image.layers))
    cfg = image.config_descriptor
    await client.push_blob(ref, Descriptor(cfg["mediaType"], cfg["digest"], cfg["size"]))
    await client.push_manifest(ref, image.manifest_bytes, image.media_type, by_digest=by_digest)


def register_unpacked(result: BuildResultView, image: BuiltImage) -> None:
    """Record the result's snapshots as the unpacked layers of the image, so building ``FROM``
    it reuses them instead of extracting its blobs again."""
    store = getattr(result, "store", None)
    if store is None:
        return
    chains = chain_ids([layer.blob.diff_id for layer in image.layers])
    for layer, chain in zip(image.layers, chains, strict=True):
        if layer.snapshot is None or store.get_record(layer.snapshot) is None:
            continue
        if store.get_cache("layer:" + chain) is None:
            store.put_cache("layer:" + chain, layer.snapshot)
        if store.layer_blob(layer.snapshot) is None:
            store.set_layer_blob(layer.snapshot, {
                **layer.blob.descriptor(image.oci), "diffID": layer.blob.diff_id})


# --------------------------------------------------------------------------------------------
# The exporter
# --------------------------------------------------------------------------------------------


class _ImageInstance(ExporterInstance):
    def __init__(self, options: ImageOptions, settings: ImageSettings):
        self.options = options
        self.settings = settings

    def layer_spec(self, info: Mapping[str, Any]) -> LayerSpec | None:
        return ahead_spec(self.settings, info)

    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse:
        from pybk.core.images import store as imagestore

        content = content_store_for(result, info)
        image = build_images(result, self.settings, info, content)
        names = list(self.settings.names)
        opts = self.options
        if opts.store:
            stored = names or ([f"{opts.dangling_name_prefix}@{image.manifest_digest}"]
                               if opts.dangling_name_prefix else [])
            if stored:
                imagestore.put(content.root, stored, image.descriptor(platform=True))
        if opts.unpack:
            results = result.platform_results() or {"": result}
            for platform, one in results.items():
                register_unpacked(one, image.images[platform] if isinstance(image, BuiltIndex)
                                  else image)
        if opts.push:
            push_image(image, names, hosts=info.get("registry_hosts"),
                       insecure=opts.registry_insecure, by_digest=opts.push_by_digest)
        return ExportResponse(image.response(names))


class ImageExporter(Exporter):
    """An image in the local image store (``name=``), pushed with ``push=true``."""

    name = "image"
    Options = ImageOptions

    def resolve(self, options: ImageOptions) -> ExporterInstance:
        settings = check_common(options)
        if options.push and not settings.names:
            raise UsageError("push=true needs a name (name=REGISTRY/REPO:TAG)", flag="--output")
        return _ImageInstance(options, settings)


class RegistryExporter(ImageExporter):
    """``type=registry``: the image exporter with ``push=true``."""

    name = "registry"

    def resolve(self, options: ImageOptions) -> ExporterInstance:
        return super().resolve(evolve(options, push=True))
