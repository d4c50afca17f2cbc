"""``pybk build --annotation [TYPE[,TYPE…]:]KEY=VALUE`` (buildx's flag) and the exporters'
``annotation*`` attributes: where each kind lands in an OCI tarball, for one platform and for
several; bad values exit with 2 naming the flag."""

from __future__ import annotations

import contextlib
import json
import tarfile
from pathlib import Path

import pytest

from pybk.core.cli.commands import main

DOCKERFILE = "FROM scratch\nCOPY hello /hello\n"


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "hello").write_text("hello\n")
    return ctx


def _build(tmp_path: Path, capsys, *flags: str, output: str | None = None) -> tuple[int, str]:
    out = output or f"type=oci,dest={tmp_path / 'image.tar'}"
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "-o", out, *flags, str(_context(tmp_path))])
    return code, capsys.readouterr().err


def _blobs(path: Path) -> tuple[dict, dict]:
    """(index.json, {digest: parsed JSON blob}) of an OCI tarball."""
    blobs = {}
    with tarfile.open(path) as tar:
        index = json.loads(tar.extractfile("index.json").read())
        for member in tar.getmembers():
            if member.name.startswith("blobs/sha256/") and member.isfile():
                data = tar.extractfile(member).read()
                with contextlib.suppress(ValueError):  # a layer is not JSON
                    blobs["sha256:" + member.name.rsplit("/", 1)[1]] = json.loads(data)
    return index, blobs


def test_single_platform_annotations_land_on_the_manifest_and_its_descriptor(tmp_path, capsys):
    code, err = _build(tmp_path, capsys, "--platform", "linux/amd64", "-t", "example.test/app:1",
                       "--annotation", "org.example.plain=1",
                       "--annotation", "manifest:org.example.manifest=2",
                       "--annotation", "manifest-descriptor:org.example.descriptor=3",
                       "--annotation", "index:org.example.index=4",
                       "--annotation", "manifest[linux/amd64]:org.example.amd64=5",
                       "--annotation", "manifest[linux/arm64]:org.example.arm64=6",
                       "--annotation", "manifest,manifest-descriptor:org.example.both=7")
    assert code == 0, err
    index, blobs = _blobs(tmp_path / "image.tar")
    [entry] = index["manifests"]
    manifest = blobs[entry["digest"]]
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["annotations"] == {"org.example.plain": "1", "org.example.manifest": "2",
                                       "org.example.amd64": "5", "org.example.both": "7"}
    assert entry["annotations"] == {"org.example.descriptor": "3", "org.example.both": "7",
                                    "io.containerd.image.name": "example.test/app:1",
                                    "org.opencontainers.image.ref.name": "1"}
    assert index["annotations"] == {"org.example.index": "4"}


def test_multi_platform_annotations_land_on_the_index_its_entries_and_each_manifest(
        tmp_path, capsys):
    code, err = _build(tmp_path, capsys, "--platform", "linux/amd64,linux/arm64",
                       "--annotation", "org.example.plain=1",
                       "--annotation", "manifest[linux/arm64]:org.example.arm=yes",
                       "--annotation", "manifest-descriptor[linux/amd64]:org.example.d=amd",
                       "--annotation", "index:org.example.i=4",
                       "--annotation", "index-descriptor:org.example.id=5")
    assert code == 0, err
    layout, blobs = _blobs(tmp_path / "image.tar")
    [top] = layout["manifests"]
    assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert top["annotations"] == {"org.example.id": "5"}
    image_index = blobs[top["digest"]]
    assert image_index["annotations"] == {"org.example.i": "4"}
    by_arch = {m["platform"]["architecture"]: m for m in image_index["manifests"]}
    assert set(by_arch) == {"amd64", "arm64"}
    assert by_arch["amd64"]["annotations"] == {"org.example.d": "amd"}
    assert "annotations" not in by_arch["arm64"]
    assert blobs[by_arch["amd64"]["digest"]]["annotations"] == {"org.example.plain": "1"}
    assert blobs[by_arch["arm64"]["digest"]]["annotations"] == {"org.example.plain": "1",
                                                                "org.example.arm": "yes"}


def test_output_attributes_and_the_flag_agree(tmp_path, capsys):
    """The attrs the flag makes are the exporter's own: an ``-o`` attribute does the same, and
    the flag wins for the same key (as buildx)."""
    out = (f"type=oci,dest={tmp_path / 'image.tar'},annotation.org.example.k=attr,"
           "annotation-manifest[linux/amd64].org.example.p=attr")
    code, err = _build(tmp_path, capsys, "--platform", "linux/amd64", "--annotation",
                       "org.example.k=flag", output=out)
    assert code == 0, err
    index, blobs = _blobs(tmp_path / "image.tar")
    assert blobs[index["manifests"][0]["digest"]]["annotations"] == {
        "org.example.k": "flag", "org.example.p": "attr"}


@pytest.mark.parametrize(("value", "message"), [
    ("org.example.k", 'invalid annotation "org.example.k": expected [TYPE:]KEY=VALUE'),
    ("manifest:=v", 'invalid annotation "manifest:=v": the key is empty'),
    ("manifests:k=v", 'invalid annotation "manifests:k=v": unknown type "manifests" (did you '
                      'mean "manifest"?) (one of manifest, manifest-descriptor, index, '
                      "index-descriptor)"),
    ("index[linux/amd64]:k=v", 'invalid annotation "index[linux/amd64]:k=v": a platform applies '
                               "to manifest and manifest-descriptor annotations only"),
    ("manifest[linux amd64]:k=v", 'invalid annotation "manifest[linux amd64]:k=v": type '
                                  '"manifest[linux amd64]" is not TYPE or TYPE[PLATFORM]'),
    ("manifest[a/b/c/d]:k=v", 'invalid annotation "manifest[a/b/c/d]:k=v": invalid platform '
                              '"a/b/c/d"'),
])
def test_bad_annotation_flags_exit_2_naming_the_flag(tmp_path, capsys, value, message):
    code, err = _build(tmp_path, capsys, "--annotation", value)
    assert code == 2
    assert err == f"error: --annotation: {message}\n"
    assert not (tmp_path / "image.tar").exists()


def test_bad_annotation_attribute_exits_2(tmp_path, capsys):
    code, err = _build(tmp_path, capsys, output=f"type=oci,dest={tmp_path / 'i.tar'},"
                                                "annotation-indx.k=v")
    assert code == 2
    assert 'unknown attribute "annotation-indx.k"' in err and "Traceback" not in err


def test_annotation_without_an_image_output_warns(tmp_path, capsys):
    code, err = _build(tmp_path, capsys, "--annotation", "k=v",
                       output=f"type=local,dest={tmp_path / 'out'}")
    assert code == 0, err
    assert "WARNING: --annotation: no image, oci or docker output to annotate" in err
    assert (tmp_path / "out" / "hello").read_text() == "hello\n"
