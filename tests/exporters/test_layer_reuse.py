"""Compressed blocks of earlier layers are reused when a context changes: the exported images
are byte for byte those of a store that never saw the earlier build, and a changed file always
gives a new layer with the new content."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import time

import pytest

from pybk.core import llb
from pybk.core.images import pgzip


def _blob(layout, desc) -> bytes:
    data = (layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes()
    assert len(data) == desc["size"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
    return data


def _manifest(layout) -> dict:
    """The layout's one manifest, after checking every digest, size and diffID."""
    desc, = json.loads((layout / "index.json").read_text())["manifests"]
    manifest = json.loads(_blob(layout, desc))
    config = json.loads(_blob(layout, manifest["config"]))
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(_blob(layout, layer))).hexdigest()
                for layer in manifest["layers"]]
    assert config["rootfs"]["diff_ids"] == diff_ids
    return manifest


def _context(path, big: bytes):
    (path / "big").mkdir(parents=True)
    (path / "big" / "blob.bin").write_bytes(big)
    for i in range(40):
        (path / "small").mkdir(exist_ok=True)
        (path / "small" / f"f{i:02d}.txt").write_text(f"small file {i}\n" * 8)
    return path


def _graph(busybox_layout):
    digest = json.loads((busybox_layout / "index.json").read_text())["manifests"][0]["digest"]
    base = llb.oci_layout(f"busybox@{digest}", store_id="base")
    return base.file(llb.copy(llb.local("context"), "/", "/ctx", create_dest_path=True))


def _export(client, busybox_layout, ctx, dest):
    client.solve(_graph(busybox_layout), local_dirs={"context": str(ctx)},
                 oci_layouts={"base": str(busybox_layout)}, progress=None,
                 outputs=[{"type": "oci", "dest": str(dest), "tar": "false"}])
    return _manifest(dest)


def _layer_files(layout, layer) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(layout, layer)))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.fixture
def deflated(monkeypatch):
    """Counts the blocks actually compressed."""
    calls = []
    real = pgzip._deflate
    monkeypatch.setattr(pgzip, "_deflate", lambda *a: calls.append(1) or real(*a))
    return calls


def test_changed_context_reuses_blocks_with_identical_digests(make_client, busybox_layout,
                                                               tmp_path, deflated):
    ctx = _context(tmp_path / "ctx", random.Random(5).randbytes(3 << 20))
    client = make_client("warm")
    first = _export(client, busybox_layout, ctx, tmp_path / "first")
    cold_blocks = len(deflated)
    assert cold_blocks == 4  # 3 MiB of data, then the small files: four 1 MiB blocks

    (ctx / "small" / "f07.txt").write_text("changed\n")
    deflated.clear()
    changed = _export(client, busybox_layout, ctx, tmp_path / "changed")
    assert len(deflated) == 1  # only the last block (small/ sorts after big/) is compressed
    fresh = _export(make_client("fresh"), busybox_layout, ctx, tmp_path / "fresh")

    assert changed["layers"] == fresh["layers"]  # same blobs as compressing from scratch
    assert changed["layers"][-1]["digest"] != first["layers"][-1]["digest"]
    files = _layer_files(tmp_path / "changed", changed["layers"][-1])
    assert files["ctx/small/f07.txt"] == b"changed\n"
    assert files["ctx/big/blob.bin"] == (ctx / "big" / "blob.bin").read_bytes()


def test_blocks_that_do_not_verify_are_compressed_again(make_client, busybox_layout, tmp_path,
                                                        deflated):
    ctx = _context(tmp_path / "ctx", random.Random(6).randbytes(2 << 20))
    client = make_client("warm")
    _export(client, busybox_layout, ctx, tmp_path / "first")
    store = client.worker().store
    entries = store.query("SELECT key, value FROM meta WHERE key LIKE 'gzip-block:%'")
    assert entries
    for key, value in entries:  # a wrong CRC: the recorded bytes cannot be trusted
        digest, offset, length, crc = json.loads(value)
        store.set_meta(key, [digest, offset, length, crc ^ 1])

    (ctx / "small" / "f30.txt").write_text("changed\n")
    deflated.clear()
    again = _export(client, busybox_layout, ctx, tmp_path / "again")
    assert len(deflated) == len(entries)  # every block of the layer compressed again
    fresh = _export(make_client("fresh"), busybox_layout, ctx, tmp_path / "fresh")
    assert again["layers"] == fresh["layers"]


def test_lower_layers_are_written_while_the_last_step_runs(make_client, busybox_layout,
                                                           tmp_path, monkeypatch):
    """The export's lower layers are written (once) while the last step runs; the image is
    the one a store without that gives."""
    from pybk.core.engine import client as client_mod
    from pybk.core.images import layers
    from pybk.core.progress.events import EventRecorder

    ctx = _context(tmp_path / "ctx", random.Random(8).randbytes(2 << 20))
    digest = json.loads((busybox_layout / "index.json").read_text())["manifests"][0]["digest"]
    base = llb.oci_layout(f"busybox@{digest}", store_id="base")
    state = base.file(llb.copy(llb.local("context"), "/", "/ctx", create_dest_path=True)) \
        .run("sleep 1; du -s /ctx > /size").root()
    written = []
    real = layers.write_blob
    monkeypatch.setattr(layers, "write_blob",
                        lambda *a, **kw: written.append(time.time()) or real(*a, **kw))

    def export(client, dest):
        recorder = EventRecorder()
        client.solve(state, local_dirs={"context": str(ctx)},
                     oci_layouts={"base": str(busybox_layout)}, progress=recorder,
                     outputs=[{"type": "oci", "dest": str(dest), "tar": "false"}])
        run = next(v for v in recorder.final_vertexes().values() if "sleep 1" in v.name)
        return _manifest(dest), run

    ahead, run = export(make_client("ahead"), tmp_path / "ahead")
    assert len(written) == 2  # the COPY layer and the RUN's, each once
    assert run.started < written[0] < run.completed  # the COPY layer: during the RUN
    monkeypatch.setattr(client_mod, "_write_ahead_of_head", lambda *a: None)
    plain, _ = export(make_client("plain"), tmp_path / "plain")
    assert ahead["layers"][:2] == plain["layers"][:2]  # (the RUN's file has this run's mtime)
