"""``pybk build`` through the definition cache: rebuilds after a change to the Dockerfile, a
build arg, .dockerignore or a context file produce what a fresh build would."""

from __future__ import annotations

import os
import shutil

import pytest

from pybk.core.cli.commands import main


@pytest.fixture
def store(tmp_path):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    return str(tmp_path / "store")


def _build(store, layout, ctx, out, *extra):
    if out.exists():
        shutil.rmtree(out)
    code = main(["--root", store, "build", "--progress", "quiet", "--build-context",
                 f"busybox=oci-layout://{layout}", "-o", f"type=local,dest={out}", *extra,
                 str(ctx)])
    assert code == 0
    return out


def test_rebuilds_follow_every_input(store, busybox_layout, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nARG V=one\nCOPY . /app\n"
                                    "RUN echo $V > /app/v && ls /app > /app/listing\n")
    (ctx / "a.txt").write_text("a1")
    (ctx / "b.txt").write_text("b1")
    out = tmp_path / "out"

    _build(store, busybox_layout, ctx, out)
    assert (out / "app/a.txt").read_text() == "a1" and (out / "app/v").read_text() == "one\n"
    assert len(os.listdir(os.path.join(store, "defcache"))) == 1

    (ctx / "a.txt").write_text("a2")  # context file: same definition, new content
    _build(store, busybox_layout, ctx, out)
    assert (out / "app/a.txt").read_text() == "a2"

    _build(store, busybox_layout, ctx, out, "--build-arg", "V=two")
    assert (out / "app/v").read_text() == "two\n"

    (ctx / ".dockerignore").write_text("b.txt\n")
    _build(store, busybox_layout, ctx, out)
    assert not (out / "app/b.txt").exists() and "b.txt" not in (out / "app/listing").read_text()

    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a.txt /app/only\n")
    _build(store, busybox_layout, ctx, out)
    assert (out / "app/only").read_text() == "a2" and not (out / "app/v").exists()


def test_a_registry_base_is_resolved_once_per_build(store, busybox_ref, tmp_path, monkeypatch):
    """The solver uses the image the frontend resolved in the same build (as BuildKit's
    frontend pins the digest it saw) instead of asking the registry again; the next build
    resolves the tag again."""
    from pybk.core.images import store as imagestore
    from pybk.core.registry.client import RegistryClient

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN echo built > /built\n")
    resolved = []
    real = RegistryClient.resolve

    async def counting(self, ref, platform=None):
        resolved.append(str(ref))
        return await real(self, ref, platform)

    monkeypatch.setattr(RegistryClient, "resolve", counting)
    digests = []
    for _ in range(2):  # a fresh build, then one whose frontend result is cached
        resolved.clear()
        assert main(["--root", store, "build", "--progress", "quiet", "-t", "once:1",
                     str(ctx)]) == 0
        assert resolved == [busybox_ref]
        digests.append(imagestore.get(store, "once:1").digest)
    manifest = imagestore.inspect(store, "once:1")["manifest"]
    assert len(manifest["layers"]) == 2  # the base and the RUN
