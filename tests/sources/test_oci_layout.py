"""read_oci_layout on layouts made by the test (by hand, and by umoci when it is installed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.images.layout import read_oci_layout

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _image(layout: Path, arch: str, text: str) -> dict:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text.encode()))
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **_blob(layout, gzip.compress(buf.getvalue()))}
    config = {"architecture": arch, "os": "linux", "config": {"Env": [f"ARCH={arch}"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(
                  buf.getvalue()).hexdigest()]}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc,
                "layers": [layer]}
    return {"mediaType": MANIFEST, **_blob(layout, json.dumps(manifest).encode()),
            "platform": {"os": "linux", "architecture": arch}}


@pytest.fixture
def layout(tmp_path: Path) -> dict:
    root = tmp_path / "layout"
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    amd64 = _image(root, "amd64", "amd64 payload\n")
    arm64 = _image(root, "arm64", "arm64 payload\n")
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [amd64, arm64]}
    index_desc = {"mediaType": INDEX, **_blob(root, json.dumps(index).encode())}
    single = dict(amd64, annotations={"org.opencontainers.image.ref.name": "single"})
    single.pop("platform")
    multi = dict(index_desc, annotations={"org.opencontainers.image.ref.name": "multi"})
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                 "manifests": [single, multi]}))
    return {"root": root, "amd64": amd64, "arm64": arm64, "index": index_desc}


def test_by_tag(layout):
    img = read_oci_layout(layout["root"], "single")
    assert img.digest == layout["amd64"]["digest"]
    assert img.config["config"]["Env"] == ["ARCH=amd64"]
    assert len(img.layers) == 1
    with tarfile.open(img.blob_path(img.layers[0]["digest"])) as tf:
        assert tf.extractfile("hello.txt").read() == b"amd64 payload\n"


def test_index_resolved_for_a_platform(layout):
    arm = read_oci_layout(layout["root"], "multi", platform="linux/arm64")
    assert arm.digest == layout["arm64"]["digest"]
    assert arm.config["architecture"] == "arm64"
    amd = read_oci_layout(layout["root"], "multi", platform={"os": "linux",
                                                           "architecture": "amd64"})
    assert amd.digest == layout["amd64"]["digest"]
    with pytest.raises(BuildError, match=r"no image for platform linux/s390x \(available: "
                                         r"linux/amd64, linux/arm64\)"):
        read_oci_layout(layout["root"], "multi", platform="linux/s390x")


def test_by_digest(layout):
    assert read_oci_layout(layout["root"], layout["arm64"]["digest"]).config[
        "architecture"] == "arm64"  # listed only inside the index
    by_index = read_oci_layout(layout["root"], layout["index"]["digest"], platform="linux/amd64")
    assert by_index.digest == layout["amd64"]["digest"]


def test_errors(layout, tmp_path):
    with pytest.raises(BuildError, match=r"no image tagged 'nope' \(tags: multi, single\)"):
        read_oci_layout(layout["root"], "nope")
    with pytest.raises(BuildError, match="not found"):
        read_oci_layout(layout["root"], "sha256:" + "1" * 64)
    with pytest.raises(BuildError, match="is not an OCI layout"):
        read_oci_layout(tmp_path, "single")
    config_path = read_oci_layout(layout["root"], "single").blob_path(
        read_oci_layout(layout["root"], "single").config_descriptor["digest"])
    Path(config_path).write_bytes(b'{"tampered": true}')
    with pytest.raises(BuildError, match="does not match its digest"):
        read_oci_layout(layout["root"], "single")


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
def test_layout_written_by_umoci(tmp_path):
    root = tmp_path / "umoci"
    subprocess.run(["umoci", "init", "--layout", str(root)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{root}:base"], check=True)
    img = read_oci_layout(root, "base")
    assert img.manifest["config"]["digest"] == img.config_descriptor["digest"]
    assert img.layers == []
    assert img.config["rootfs"]["type"] == "layers"
