"""``pybk build --platform linux/amd64,linux/arm64``: one result per platform, exported as an
image index (oci, registry push) or one directory per platform (local)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest
from support.busybox import skopeo_inspect

from pybk.core.cli import main

PLATFORMS = "linux/amd64,linux/arm64"
DOCKERFILE = (
    "FROM --platform=$BUILDPLATFORM busybox AS build\n"
    "ARG TARGETPLATFORM\n"
    "ARG TARGETARCH\n"
    "RUN echo \"$TARGETPLATFORM\" > /platform.txt && echo \"$TARGETARCH\" > /arch.txt\n"
    "FROM scratch\n"
    "COPY --from=build /platform.txt /arch.txt /\n"
    "COPY hello.txt /\n"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    return str(tmp_path_factory.mktemp("mp-store"))


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "hello.txt").write_text("hello\n")
    return ctx


def build(capsys, root, context, busybox_layout, *args):
    code = main(["--root", root, "build", "--progress", "quiet", "--platform", PLATFORMS,
                 "--build-context", f"busybox=oci-layout://{busybox_layout}", *args,
                 str(context)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def test_local_export_splits_by_platform(root, context, busybox_layout, tmp_path, capsys):
    out = tmp_path / "out"
    build(capsys, root, context, busybox_layout, "--output", f"type=local,dest={out}")
    assert sorted(os.listdir(out)) == ["linux_amd64", "linux_arm64"]
    for arch in ("amd64", "arm64"):
        sub = out / f"linux_{arch}"
        assert (sub / "platform.txt").read_text() == f"linux/{arch}\n"
        assert (sub / "arch.txt").read_text() == f"{arch}\n"
        assert (sub / "hello.txt").read_text() == "hello\n"


def test_local_export_without_split(root, context, busybox_layout, tmp_path, capsys):
    out = tmp_path / "out"
    build(capsys, root, context, busybox_layout,
          "--output", f"type=local,dest={out},platform-split=false")
    assert sorted(os.listdir(out)) == ["arch.txt", "hello.txt", "platform.txt"]


def test_tar_export_splits_by_platform(root, context, busybox_layout, tmp_path, capsys):
    dest = tmp_path / "out.tar"
    build(capsys, root, context, busybox_layout, "--output", f"type=tar,dest={dest}")
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        assert {"linux_amd64/platform.txt", "linux_arm64/platform.txt"} <= names
        assert tar.extractfile("linux_arm64/platform.txt").read() == b"linux/arm64\n"


def _blob(layout, digest):
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def test_oci_export_is_an_index(root, context, busybox_layout, tmp_path, capsys):
    layout = tmp_path / "layout"
    build(capsys, root, context, busybox_layout,
          "--output", f"type=oci,tar=false,dest={layout},name=example.com/mp:1")
    top = json.loads((layout / "index.json").read_text())
    assert [m["mediaType"] for m in top["manifests"]] == ["application/vnd.oci.image.index.v1+json"]
    index = _blob(layout, top["manifests"][0]["digest"])
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    for entry, arch in zip(index["manifests"], ("amd64", "arm64"), strict=True):
        assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        manifest = _blob(layout, entry["digest"])
        config = _blob(layout, manifest["config"]["digest"])
        assert (config["architecture"], config["os"]) == (arch, "linux")
    if shutil.which("skopeo"):
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:1"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(raw)["manifests"] == index["manifests"]


def test_push_writes_a_manifest_list(root, context, busybox_layout, registry, tmp_path, capsys):
    name = f"{registry.host}/multiplatform/app:latest"
    build(capsys, root, context, busybox_layout, "--output",
          f"type=image,name={name},push=true,registry.insecure=true")
    index = skopeo_inspect(name, raw=True)
    assert index["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    arm = skopeo_inspect(f"{registry.host}/multiplatform/app@{index['manifests'][1]['digest']}")
    assert arm["Architecture"] == "arm64"


def test_single_platform_is_unchanged(root, context, busybox_layout, tmp_path, capsys):
    layout = tmp_path / "layout"
    code = main(["--root", root, "build", "--progress", "quiet", "--platform", "linux/amd64",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}",
                 "--output", f"type=oci,tar=false,dest={layout}", str(context)])
    assert code == 0, capsys.readouterr().err
    top = json.loads((layout / "index.json").read_text())
    assert top["manifests"][0]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_run_for_foreign_platform_needs_an_emulator(root, tmp_path, busybox_layout, capsys,
                                                    monkeypatch):
    from pybk.core import multiplatform

    monkeypatch.setattr(multiplatform, "BINFMT_DIR", str(tmp_path / "no-binfmt"))
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo never\n")
    code = main(["--root", root, "build", "--progress", "quiet",
                 "--platform", "linux/amd64,linux/arm64",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert ("no emulator for linux/arm64: install qemu-user-static and register binfmt_misc"
            in err)
    assert "Traceback" not in err
