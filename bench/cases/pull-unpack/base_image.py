"""Make the pull-unpack case's base image: busybox plus 4 layers of 50 MiB random data.

``build(outdir, busybox_layout)`` writes an OCI image layout (tag ``latest``) whose first layer
is the busybox layout's and whose next four layers each add ``/data/partN.bin`` (50 MiB from a
seeded generator, so the data cannot be compressed and is the same on every run). Layers are
gzip level 1; the whole image is about 200 MB compressed and unpacked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile

LAYERS = 4
LAYER_BYTES = 50 * 1024 * 1024
CHUNK = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``target``."""

    def __init__(self, target):
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)


class _RandomReader(io.RawIOBase):
    """``size`` bytes from a seeded generator, read in chunks."""

    def __init__(self, seed: int, size: int):
        self.rng = random.Random(seed)
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def _put_json(layout: str, obj: dict) -> tuple[str, int]:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(_blob_path(layout, digest), "wb") as f:
        f.write(data)
    return digest, len(data)


def _write_layer(layout: str, index: int) -> tuple[str, int, str]:
    """Write one random-data layer; return (digest, size, diff_id)."""
    tmp = os.path.join(layout, "blobs", "sha256", f".layer{index}.tmp")
    with open(tmp, "wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                if index == 0:
                    folder = tarfile.TarInfo("data")
                    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(folder)
                info = tarfile.TarInfo(f"data/part{index}.bin")
                info.size, info.mode = LAYER_BYTES, 0o644
                tar.addfile(info, _RandomReader(1000 + index, LAYER_BYTES))
    digest = "sha256:" + compressed.sha.hexdigest()
    os.replace(tmp, _blob_path(layout, digest))
    return digest, compressed.size, "sha256:" + uncompressed.sha.hexdigest()


def build(outdir: str, busybox_layout: str) -> str:
    """Write the layout at ``outdir`` from the busybox layout; return the manifest digest."""
    if os.path.exists(outdir):
        shutil.rmtree(outdir)
    shutil.copytree(busybox_layout, outdir)
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)
    with open(_blob_path(outdir, index["manifests"][0]["digest"])) as f:
        manifest = json.load(f)
    with open(_blob_path(outdir, manifest["config"]["digest"])) as f:
        config = json.load(f)
    for i in range(LAYERS):
        digest, size, diff_id = _write_layer(outdir, i)
        manifest["layers"].append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
        config["rootfs"]["diff_ids"].append(diff_id)
        config.setdefault("history", []).append(
            {"created": "1970-01-01T00:00:00Z", "created_by": f"random data part {i}"})
    config_digest, config_size = _put_json(outdir, config)
    manifest["config"] = {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size}
    manifest_digest, manifest_size = _put_json(outdir, manifest)
    entry = dict(index["manifests"][0], digest=manifest_digest, size=manifest_size)
    index["manifests"] = [entry]
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    return manifest_digest
