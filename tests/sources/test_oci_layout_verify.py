"""An oci-layout source's layers are checked while unpacked: a blob that is not what its digest
says, or whose uncompressed content is not the config's diff_id, fails the build and leaves no
snapshot or record behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pybk.core import llb
from pybk.core.engine.client import Client
from pybk.core.errors import PybkError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _tar(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def _layout(root: Path, *, diff_id_of: str = "payload\n") -> tuple[str, str, Path]:
    """A one-layer image; returns (manifest digest, layer digest, layer blob path)."""
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **_blob(root, gzip.compress(_tar("payload\n"), mtime=0))}
    diff_id = "sha256:" + hashlib.sha256(_tar(diff_id_of)).hexdigest()
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(root, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc,
                "layers": [layer]}
    desc = {"mediaType": MANIFEST, **_blob(root, json.dumps(manifest).encode()),
            "annotations": {"org.opencontainers.image.ref.name": "img"}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    path = root / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
    return desc["digest"], layer["digest"], path


@pytest.fixture
def client(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (the store's mounts)")
    with Client(root=str(tmp_path / "store")) as c:
        yield c


def _state(store, root: Path):
    """What the store holds: its records, and the snapshot directories on disk."""
    dirs = sorted(str(p.relative_to(root)) for p in root.glob("snapshots/*/*"))
    return sorted(r.id for r in store.records()), dirs


def _solve(client, tmp_path, manifest_digest, layout):
    state = llb.oci_layout(f"img@{manifest_digest}", store_id="base").file(
        llb.mkfile("/marker", 0o644, b"x"))
    return client.solve(state, oci_layouts={"base": str(layout)}, progress=None)


def test_an_intact_layout_builds(client, tmp_path):
    manifest, _, _ = _layout(tmp_path / "layout")
    result = _solve(client, tmp_path, manifest, tmp_path / "layout")
    out = tmp_path / "out"
    client.export_local(result, out)
    assert (out / "hello.txt").read_text() == "payload\n"


def _assert_fails_clean(client, tmp_path, manifest, layout, layer, needle):
    client.solve(llb.scratch().file(llb.mkfile("/warm", 0o644, b"up")), progress=None)
    store = client.worker().store
    before = _state(store, tmp_path / "store")
    with pytest.raises(PybkError) as err:
        _solve(client, tmp_path, manifest, layout)
    assert _state(store, tmp_path / "store") == before
    assert layer in str(err.value) and needle in str(err.value)
    assert not [r for r in store.records() if "pulled from" in (r.description or "")]


def test_a_tampered_blob_fails_and_leaves_nothing(client, tmp_path):
    layout = tmp_path / "layout"
    manifest, layer, path = _layout(layout)
    path.write_bytes(gzip.compress(_tar("evil!!!\n"), mtime=0))  # same name, other content
    _assert_fails_clean(client, tmp_path, manifest, layout, layer, "content digest")


def test_a_layer_not_matching_its_diff_id_fails_and_leaves_nothing(client, tmp_path):
    layout = tmp_path / "layout"
    manifest, layer, _ = _layout(layout, diff_id_of="something else\n")
    _assert_fails_clean(client, tmp_path, manifest, layout, layer, "diff_id")
