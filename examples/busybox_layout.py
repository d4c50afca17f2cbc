#!/usr/bin/env python3
"""Make a small busybox base image as an OCI image layout, without any network.

The image has one layer: Debian's static ``/bin/busybox``, one symlink per applet
(``busybox --list-full``), ``/etc/passwd`` and ``/etc/group`` (root, nobody and a ``tester`` user,
uid 1000), ``/tmp`` (1777), ``/root`` and ``/home/tester``. Entries are sorted, owned by root
(``/home/tester`` by the tester) and share one fixed mtime, so the same busybox binary always gives
the same digests. The config's architecture is this machine's.

Usage: ``python examples/busybox_layout.py OUTDIR [--tag latest] [--busybox /bin/busybox]
[--other arm64=ARM64_BUSYBOX]`` (``--other`` makes the tag an image index with one more
architecture, from Debian's busybox-static of it).
Push the result with ``skopeo copy oci:OUTDIR:latest docker://HOST/busybox:latest``.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from typing import NamedTuple

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MTIME = 0
CREATED = "1970-01-01T00:00:00Z"
TESTER_UID = 1000

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    f"tester:x:{TESTER_UID}:{TESTER_UID}:tester:/home/tester:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = f"root:x:0:\ntester:x:{TESTER_UID}:\nnogroup:x:65534:\n"


class Built(NamedTuple):
    """What was written: digests and sizes of the image's parts."""

    manifest_digest: str
    manifest_size: int
    config_digest: str
    layer_digest: str
    layer_size: int
    diff_id: str
    platform: dict


def host_platform() -> dict:
    """This machine's OCI platform (``architecture``, ``os`` and ``variant`` for 32-bit arm)."""
    machine = platform.machine().lower()
    aliases = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}
    result = {"architecture": aliases.get(machine, machine), "os": "linux"}
    if machine.startswith("armv"):
        result = {"architecture": "arm", "os": "linux", "variant": machine[3:5]}
    return result


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class _HashingWriter:
    """A write-only stream that hashes what passes through to ``target``."""

    def __init__(self, target):
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()


def applet_paths(busybox: str) -> list[str]:
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})


def _entries(busybox: str, applets_from: str | None = None
             ) -> list[tuple[str, tarfile.TarInfo, bytes | str | None]]:
    """(path, header, content) for every entry, parents before children, sorted. The applet
    list comes from ``applets_from`` (default: ``busybox`` itself, which must run here)."""
    items: dict[str, tuple[tarfile.TarInfo, bytes | str | None]] = {}

    def directory(path: str, mode: int = 0o755, owner: int = 0) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in items:
                directory(parent)
        info = tarfile.TarInfo(path + "/")
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, owner, owner
        items[path] = (info, None)

    def parent_dirs(path: str) -> None:
        if "/" in path:
            parent = path.rsplit("/", 1)[0]
            if parent not in items:
                directory(parent)

    for path, mode in [("bin", 0o755), ("etc", 0o755), ("home", 0o755), ("root", 0o700),
                       ("sbin", 0o755), ("tmp", 0o1777), ("usr/bin", 0o755), ("usr/sbin", 0o755),
                       ("var", 0o755)]:
        directory(path, mode)
    directory("home/tester", 0o755, TESTER_UID)
    for path, text in [("etc/passwd", PASSWD), ("etc/group", GROUP)]:
        info = tarfile.TarInfo(path)
        info.mode = 0o644
        items[path] = (info, text.encode())
    info = tarfile.TarInfo("bin/busybox")
    info.mode = 0o755
    items["bin/busybox"] = (info, busybox)
    for path in applet_paths(applets_from or busybox):
        if path in items:
            continue
        parent_dirs(path)
        link = tarfile.TarInfo(path)
        link.type, link.linkname, link.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
        items[path] = (link, None)
    result = []
    for path in sorted(items, key=lambda p: p.split("/")):
        info, content = items[path]
        info.mtime = MTIME
        info.uname = info.gname = ""
        result.append((path, info, content))
    return result


def write_entries_layer(entries, blobs_dir: str, compresslevel: int = 9) -> tuple[str, int, str]:
    """Write a gzip layer of ``entries`` (``(path, TarInfo, content)``, in order; content is
    bytes, a host file's path or None) into ``blobs_dir``; returns (digest, size, diff_id)."""
    fd, tmp = tempfile.mkstemp(dir=blobs_dir, prefix=".layer-")
    try:
        with os.fdopen(fd, "wb") as raw:
            compressed = _HashingWriter(raw)
            with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0,
                               compresslevel=compresslevel) as gz:
                uncompressed = _HashingWriter(gz)
                with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for _path, info, content in entries:
                        if isinstance(content, str):
                            info.size = os.path.getsize(content)
                            with open(content, "rb") as f:
                                tar.addfile(info, f)
                        elif content is not None:
                            info.size = len(content)
                            tar.addfile(info, io.BytesIO(content))
                        else:
                            tar.addfile(info)
        digest = "sha256:" + compressed.sha.hexdigest()
        os.replace(tmp, os.path.join(blobs_dir, digest.split(":", 1)[1]))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest, compressed.size, "sha256:" + uncompressed.sha.hexdigest()


def write_layer(busybox: str, blobs_dir: str,
                applets_from: str | None = None) -> tuple[str, int, str]:
    """Write the busybox gzip layer into ``blobs_dir``; returns (digest, size, diff_id)."""
    return write_entries_layer(_entries(busybox, applets_from), blobs_dir)


def _put_blob(blobs_dir: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs_dir, digest.split(":", 1)[1]), "wb") as f:
        f.write(data)
    return digest


class Layer(NamedTuple):
    """A written layer and the history line that describes it."""

    digest: str
    size: int
    diff_id: str
    created_by: str


def write_image(blobs_dir: str, plat: dict, layers: list[Layer],
                env: tuple[str, ...] = (PATH_ENV,)) -> Built:
    """Write the config and manifest of an image of ``layers`` (bottom first); returns its
    parts (the layer fields describe the top layer)."""
    config = {
        **plat,
        "created": CREATED,
        "config": {"Env": list(env), "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": layer.created_by} for layer in layers],
    }
    config_bytes = _dumps(config)
    config_digest = _put_blob(blobs_dir, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    }
    manifest_bytes = _dumps(manifest)
    manifest_digest = _put_blob(blobs_dir, manifest_bytes)
    top = layers[-1]
    return Built(manifest_digest, len(manifest_bytes), config_digest, top.digest, top.size,
                 top.diff_id, plat)


def busybox_layer(blobs_dir: str, busybox: str = "/bin/busybox",
                  applets_from: str | None = None) -> Layer:
    """Write the busybox layer; returns it with its history line."""
    return Layer(*write_layer(busybox, blobs_dir, applets_from),
                 "busybox_layout.py: busybox + applet links")


def _write_image(blobs_dir: str, busybox: str, plat: dict,
                 applets_from: str | None = None) -> Built:
    return write_image(blobs_dir, plat, [busybox_layer(blobs_dir, busybox, applets_from)])


def tag_layout(outdir: str, top: dict, tag: str) -> None:
    """Write ``oci-layout`` and point ``tag`` in ``index.json`` at the descriptor ``top``
    (other tags are kept)."""
    with open(os.path.join(outdir, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    index_path = os.path.join(outdir, "index.json")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"] = [m for m in index.get("manifests", [])
                          if (m.get("annotations") or {}).get(REF_NAME) != tag]
    index["manifests"].append({**top, "annotations": {REF_NAME: tag}})
    with open(index_path, "wb") as f:
        f.write(_dumps(index))


def build_layout(outdir: str, tag: str = "latest", busybox: str = "/bin/busybox",
                 others: dict[str, str] | None = None) -> Built:
    """Write (or add ``tag`` to) the OCI layout at ``outdir``: the image of this machine's
    ``busybox``, or with ``others`` (``{architecture: busybox binary of it}``) an image index of
    this machine's image and one per other architecture. Returns the host image's parts (the
    index's digest as ``manifest_digest`` for an index)."""
    if not os.access(busybox, os.X_OK):
        raise SystemExit(f"{busybox} is missing: install Debian's busybox-static")
    blobs_dir = os.path.join(outdir, "blobs", "sha256")
    os.makedirs(blobs_dir, exist_ok=True)
    built = _write_image(blobs_dir, busybox, host_platform())
    images = [built]
    for arch, binary in (others or {}).items():
        if not os.path.isfile(binary):
            raise SystemExit(f"{binary} (busybox for {arch}) is missing")
        images.append(_write_image(blobs_dir, binary, {"architecture": arch, "os": "linux"},
                                   applets_from=busybox))
    top = {"mediaType": OCI_MANIFEST, "digest": built.manifest_digest,
           "size": built.manifest_size, "platform": built.platform}
    if others:
        index_bytes = _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": b.manifest_digest, "size": b.manifest_size,
             "platform": b.platform} for b in images]})
        built = built._replace(manifest_digest=_put_blob(blobs_dir, index_bytes),
                               manifest_size=len(index_bytes))
        top = {"mediaType": OCI_INDEX, "digest": built.manifest_digest,
               "size": built.manifest_size}
    tag_layout(outdir, top, tag)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", help="OCI layout directory to write")
    parser.add_argument("--tag", default="latest", help="ref name in index.json (default: latest)")
    parser.add_argument("--busybox", default="/bin/busybox", help="static busybox binary")
    parser.add_argument("--other", action="append", default=[], metavar="ARCH=BINARY",
                        help="also an image of another architecture's static busybox (the tag "
                             "then names an image index), e.g. arm64=/tmp/arm64/busybox")
    args = parser.parse_args(argv)
    others = dict(item.split("=", 1) for item in args.other)
    built = build_layout(args.outdir, args.tag, args.busybox, others)
    print(built.manifest_digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
