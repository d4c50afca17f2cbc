"""The local image store: an OCI image layout at ``<root>/images``.

``index.json`` lists one manifest descriptor per image name (annotations
``io.containerd.image.name`` and ``org.opencontainers.image.ref.name``, both the full normalised
name). ``blobs`` is a symbolic link to the content store's blob directory, so images share their
blobs with the build cache and nothing is copied. Any OCI tool reads the store, e.g.
``skopeo inspect oci:<root>/images:docker.io/library/app:latest``.

Updates of ``index.json`` are serialised by a lock file and written atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pybk.core.errors import InputError, StoreError
from pybk.core.interfaces import ImageLookup
from pybk.core.model import Model
from pybk.core.registry import OCI_INDEX

IMAGES_DIR = "images"
NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


class StoredImage(Model):
    """An image name in the store and the manifest it points at."""

    name: str
    digest: str
    media_type: str
    size: int
    platform: Mapping[str, str] | None = None

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def images_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / IMAGES_DIR


def normalize_name(name: str) -> str:
    """The full spelling of an image name (``app`` → ``docker.io/library/app:latest``)."""
    from pybk.core.registry import parse_reference

    return str(parse_reference(name.strip()))


def _ensure(root: str | os.PathLike[str]) -> Path:
    directory = images_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    blobs = Path(root) / "content" / "blobs"
    (blobs / "sha256").mkdir(parents=True, exist_ok=True)
    link = directory / "blobs"
    if not link.is_symlink() and not link.exists():
        with contextlib.suppress(FileExistsError):
            os.symlink(os.path.join("..", "content", "blobs"), link)
    marker = directory / "oci-layout"
    if not marker.exists():
        _write_atomic(marker, b'{"imageLayoutVersion":"1.0.0"}')
    return directory


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_index(directory: Path) -> dict[str, Any]:
    try:
        with open(directory / "index.json", "rb") as f:
            index = json.load(f)
    except FileNotFoundError:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    except ValueError:
        raise StoreError(f"{directory / 'index.json'} is not valid JSON") from None
    index.setdefault("manifests", [])
    return index


@contextlib.contextmanager
def _editing(root: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The index, locked; written back when the block ends without an exception."""
    directory = _ensure(root)
    with open(directory / "index.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        index = _read_index(directory)
        yield index
        _write_atomic(directory / "index.json", json.dumps(index, indent=2).encode())


def _entry_name(entry: Mapping[str, Any]) -> str | None:
    annotations = entry.get("annotations") or {}
    return annotations.get(NAME_ANNOTATION) or annotations.get(REF_NAME_ANNOTATION)


def _stored(entry: Mapping[str, Any]) -> StoredImage:
    return StoredImage(name=_entry_name(entry) or "", digest=entry["digest"],
                       media_type=entry.get("mediaType", ""), size=int(entry.get("size", 0)),
                       platform=entry.get("platform"))


def put(root: str | os.PathLike[str], names: Sequence[str], descriptor: Mapping[str, Any]) -> None:
    """Point each of ``names`` at the manifest ``descriptor`` (its blobs must be in the content
    store). A name that pointed elsewhere is moved."""
    full = [_normalized_or_raw(n) for n in names]
    with _editing(root) as index:
        index["manifests"] = [m for m in index["manifests"] if _entry_name(m) not in full]
        for name in full:
            entry = dict(descriptor)
            entry["annotations"] = {**(descriptor.get("annotations") or {}),
                                    NAME_ANNOTATION: name, REF_NAME_ANNOTATION: name}
            index["manifests"].append(entry)


def _normalized_or_raw(name: str) -> str:
    try:
        return normalize_name(name)
    except InputError:
        if name.partition("@")[2].startswith("sha256:"):
            return name  # a dangling image: <prefix>@<digest>
        raise


def list_images(root: str | os.PathLike[str]) -> list[StoredImage]:
    directory = images_dir(root)
    if not (directory / "index.json").exists():
        return []
    return sorted((_stored(m) for m in _read_index(directory)["manifests"] if _entry_name(m)),
                  key=lambda s: s.name)


def get(root: str | os.PathLike[str], name: str) -> StoredImage | None:
    """The image called ``name``; ``name@sha256:…`` and a bare manifest digest (or a unique
    prefix of its hex of at least 12 characters) are accepted too."""
    images = list_images(root)
    wanted_digest = None
    if "@" in name:
        name, _, wanted_digest = name.partition("@")
    if name.startswith("sha256:"):
        wanted_digest, name = name, ""
    if name:
        try:
            full = normalize_name(name)
        except InputError:
            full = name
        for image in images:
            if image.name == full and (wanted_digest is None or image.digest == wanted_digest):
                return image
        if wanted_digest is None and len(name) >= 12 and all(c in "0123456789abcdef"
                                                             for c in name):
            matches = {i.digest: i for i in images if i.digest[7:].startswith(name)}
            if len(matches) == 1:
                return next(iter(matches.values()))
        if wanted_digest is None:
            return None
    for image in images:
        if image.digest == wanted_digest:
            return image
    return None


def tag(root: str | os.PathLike[str], source: str, target: str) -> StoredImage:
    """Give the image ``source`` the additional name ``target``."""
    found = get(root, source)
    if found is None:
        raise StoreError(f"no such image: {source}")
    put(root, [target], {**found.descriptor,
                         **({"platform": dict(found.platform)} if found.platform else {})})
    return get(root, target)  # type: ignore[return-value]


def remove(root: str | os.PathLike[str], name: str) -> bool:
    """Remove the name ``name``; returns whether it existed. Blobs stay in the content store."""
    found = get(root, name)
    if found is None:
        return False
    with _editing(root) as index:
        index["manifests"] = [m for m in index["manifests"] if _entry_name(m) != found.name]
    return True


def _blob_json(root: str | os.PathLike[str], digest: str) -> dict[str, Any]:
    from pybk.core.store.content import ContentStore

    return json.loads(ContentStore(root).read_bytes(digest))


def inspect(root: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """Name, descriptor, manifest, config and total size of a stored image."""
    found = get(root, name)
    if found is None:
        raise StoreError(f"no such image: {name}")
    manifest = _blob_json(root, found.digest)
    config = _blob_json(root, manifest["config"]["digest"])
    size = sum(int(layer["size"]) for layer in manifest.get("layers", []))
    return {"name": found.name, "descriptor": found.descriptor, "manifest": manifest,
            "config": config, "size": size + int(manifest["config"]["size"]) + found.size}


def lookup(root: str | os.PathLike[str], ref: str, *, platform: str | None = None) -> Any:
    """``ref`` as an :class:`pybk.core.images.layout.OCILayoutImage` read from the store, or None."""
    found = get(root, ref)
    if found is None:
        return None
    from pybk.core.images.layout import read_oci_layout

    return read_oci_layout(images_dir(root), found.digest, platform=platform)


class LocalImages(ImageLookup):
    """The image store of ``root`` as the solver reads it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = root

    def lookup(self, ref: str, platform: str | None = None) -> Any:
        return lookup(self.root, ref, platform=platform)
