"""``oci`` and ``docker`` exporters: the image as an OCI layout tarball (``dest=FILE`` or ``-``
for stdout) or directory (``tar=false``).

The ``docker`` tarball is the same layout plus Docker's ``manifest.json`` and ``repositories``,
so ``docker load`` accepts it; its media types default to Docker's. Names (``name=``) become the
``io.containerd.image.name`` (full name) and ``org.opencontainers.image.ref.name`` (tag)
annotations of the index entries, and ``RepoTags`` in ``manifest.json``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

from pybk.core.errors import UsageError
from pybk.core.fs.files import output_file
from pybk.core.images.store import NAME_ANNOTATION, REF_NAME_ANNOTATION
from pybk.core.interfaces import BuildResultView, Exporter, ExporterInstance, ExportResponse
from pybk.core.registry import OCI_INDEX
from pybk.exporters.image import (
    BuiltImage,
    BuiltIndex,
    CommonImageOptions,
    ImageSettings,
    ahead_spec,
    build_images,
    check_common,
)

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


class ArchiveOptions(CommonImageOptions):
    dest: str = "-"
    tar: bool = True


def _blob_name(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def index_entries(image: BuiltImage | BuiltIndex, names: Sequence[str]) -> list[dict[str, Any]]:
    """One index.json entry per name (one without names when there are none)."""
    from pybk.core.registry import parse_reference

    if not names:
        return [image.descriptor()]
    out = []
    for name in names:
        ref = parse_reference(name)
        annotations = {NAME_ANNOTATION: name}
        if ref.tag:
            annotations[REF_NAME_ANNOTATION] = ref.tag
        out.append(image.descriptor(annotations=annotations))
    return out


def layout_index(image: BuiltImage | BuiltIndex, names: Sequence[str],
                 annotations: Mapping[str, str]) -> dict[str, Any]:
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                             "manifests": index_entries(image, names)}
    if annotations:
        index["annotations"] = dict(annotations)
    return index


def docker_manifest(image: BuiltImage | BuiltIndex,
                    names: Sequence[str]) -> tuple[bytes, bytes]:
    """``manifest.json`` and ``repositories`` of a ``docker load`` tarball (for an index, one
    entry per platform, the names on the first)."""
    from pybk.core.registry import parse_reference

    refs = [parse_reference(n) for n in names]
    tags = [r.familiar for r in refs if r.tag]
    images = list(image.images.values()) if isinstance(image, BuiltIndex) else [image]
    manifest = [{"Config": _blob_name(one.config_descriptor["digest"]),
                 "RepoTags": (tags or None) if number == 0 else None,
                 "Layers": [_blob_name(layer.blob.digest) for layer in one.layers]}
                for number, one in enumerate(images)]
    image = images[0]
    repositories: dict[str, dict[str, str]] = {}
    if image.layers:
        top = image.layers[-1].blob.digest.partition(":")[2]
        for r in refs:
            if r.tag:
                repositories.setdefault(r.familiar.rsplit(":", 1)[0], {})[r.tag] = top
    return (json.dumps(manifest, separators=(",", ":")).encode(),
            json.dumps(repositories, separators=(",", ":")).encode())


def write_archive(image: BuiltImage | BuiltIndex, names: Sequence[str], out: IO[bytes], *, docker: bool,
                  index_annotations: Mapping[str, str] = {}) -> None:  # noqa: B006
    """Stream the image as a tarball: ``oci-layout``, blobs, ``index.json`` (and for Docker
    ``manifest.json`` and ``repositories``). Entry times are SOURCE_DATE_EPOCH, or 0."""
    mtime = image.epoch or 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        def directory(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)

        def data(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o644, mtime
            tar.addfile(info, io.BytesIO(payload))

        data("oci-layout", OCI_LAYOUT)
        directory("blobs")
        directory("blobs/sha256")
        for digest, size in [(image.manifest_digest, len(image.manifest_bytes)),
                             *image.blobs()]:
            info = tarfile.TarInfo(_blob_name(digest))
            info.size, info.mode, info.mtime = size, 0o644, mtime
            with image.content.open(digest) as blob:
                tar.addfile(info, blob)
        index = layout_index(image, names, index_annotations)
        data("index.json", json.dumps(index, separators=(",", ":")).encode())
        if docker:
            manifest_json, repositories = docker_manifest(image, names)
            data("manifest.json", manifest_json)
            data("repositories", repositories)


def write_layout(image: BuiltImage | BuiltIndex, names: Sequence[str], dest: str, *,
                 index_annotations: Mapping[str, str] = {}) -> None:  # noqa: B006
    """Write (or add to) an OCI layout directory; entries with the same names are replaced."""
    os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
    for digest, _size in [(image.manifest_digest, 0), *image.blobs()]:
        target = os.path.join(dest, _blob_name(digest))
        if os.path.exists(target):
            continue
        tmp = f"{target}.{os.getpid()}.tmp"
        with image.content.open(digest) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    with open(os.path.join(dest, "oci-layout"), "wb") as f:
        f.write(OCI_LAYOUT)
    index_path = os.path.join(dest, "index.json")
    new = layout_index(image, names, index_annotations)
    if os.path.exists(index_path):
        with open(index_path, "rb") as f:
            old = json.load(f)
        ours = {(m.get("annotations") or {}).get(NAME_ANNOTATION) for m in new["manifests"]}
        kept = [m for m in old.get("manifests") or []
                if (m.get("annotations") or {}).get(NAME_ANNOTATION) not in ours
                and m.get("digest") != image.manifest_digest]
        new["manifests"] = kept + new["manifests"]
    tmp = index_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps(new, indent=2).encode())
    os.replace(tmp, index_path)


class _ArchiveInstance(ExporterInstance):
    def __init__(self, options: ArchiveOptions, settings: ImageSettings, docker: bool):
        self.options = options
        self.settings = settings
        self.docker = docker

    def layer_spec(self, info: Mapping[str, Any]) -> Any:
        return ahead_spec(self.settings, info)

    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse:
        image = build_images(result, self.settings, info)
        names = self.settings.names
        dest = self.options.dest
        annotations = self.settings.index_annotations
        if not self.options.tar:
            write_layout(image, names, dest, index_annotations=annotations)
        elif dest == "-":
            write_archive(image, names, sys.stdout.buffer, docker=self.docker,
                          index_annotations=annotations)
            sys.stdout.buffer.flush()
        else:
            with output_file(dest) as out:
                write_archive(image, names, out, docker=self.docker,
                              index_annotations=annotations)
        return ExportResponse(image.response(names))


def check_dest(options: ArchiveOptions) -> None:
    """UsageError for a destination the archive cannot be written to."""
    dest = options.dest
    if not options.tar:
        if dest == "-":
            raise UsageError("tar=false writes an OCI layout directory: set dest=DIR",
                             flag="--output")
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise UsageError(f"tar=false needs a directory, but dest {dest!r} is a file",
                             flag="--output")
        existing = dest if os.path.isdir(dest) else os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
            raise UsageError(f"dest {dest!r}: {existing} is not a writable directory",
                             flag="--output")
        return
    if dest == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write a tarball to a terminal; set dest=FILE",
                             flag="--output")
        return
    if os.path.isdir(dest):
        raise UsageError(f"dest {dest!r} is a directory; the tarball needs a file name "
                         "(or tar=false for a layout directory)", flag="--output")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"dest {dest!r}: directory {parent} is not writable", flag="--output")


class OCIExporter(Exporter):
    """The image as an OCI layout tarball or directory."""

    name = "oci"
    Options = ArchiveOptions
    docker = False

    def resolve(self, options: ArchiveOptions) -> ExporterInstance:
        settings = check_common(options, default_oci=not self.docker)
        check_dest(options)
        return _ArchiveInstance(options, settings, self.docker)


class DockerExporter(OCIExporter):
    """The image as a ``docker load`` tarball (an OCI layout with ``manifest.json``)."""

    name = "docker"
    docker = True
