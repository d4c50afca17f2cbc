"""Foreign platforms for real: a multi-architecture base image from an OCI layout, and linux/arm64
RUN steps on this amd64 machine through qemu-user-static's binfmt_misc entry
(``scripts/setup-arm64.sh`` installs it and fetches Debian's arm64 busybox)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support.busybox import build_busybox_layout, push_oci_layout

from pybk.core.cli.commands import main

ARM64_BUSYBOX = Path(os.environ.get("PYBK_ARM64_DIR", "/tmp/pybk-arm64")) / "busybox"
ELF_MACHINE = {62: "x86_64", 183: "aarch64"}  # e_machine of EM_X86_64, EM_AARCH64


def _elf_machine(path: Path) -> str:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return ELF_MACHINE.get(int.from_bytes(header[18:20], "little"), "?")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    return str(tmp_path_factory.mktemp("emu-store"))


def _build(root, context, layout, capsys, *args):
    code = main(["--root", root, "build", "--progress", "plain",
                 "--build-context", f"busybox=oci-layout://{layout}", *args, str(context)])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_each_platform_takes_its_own_manifest_of_a_layout_index(root, tmp_path, capsys):
    # no emulator needed: nothing runs, the base's files are copied out
    fake = tmp_path / "arm64-busybox"
    fake.write_bytes(b"not really an arm64 busybox\n")
    layout = build_busybox_layout(tmp_path / "layout", others={"arm64": str(fake)})
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        "FROM busybox AS base\nFROM scratch\nCOPY --from=base /bin/busybox /\n")
    out = tmp_path / "out"
    _build(root, tmp_path / "ctx", layout, capsys, "--platform", "linux/amd64,linux/arm64",
           "-o", f"type=local,dest={out}")
    assert (out / "linux_arm64" / "busybox").read_bytes() == fake.read_bytes()
    assert _elf_machine(out / "linux_amd64" / "busybox") == "x86_64"


@pytest.fixture(scope="module")
def multiarch_layout(tmp_path_factory):
    from pybk.core.platform import can_execute, host_platform

    if host_platform().architecture != "amd64":
        pytest.skip("the emulation tests run on amd64 hosts")
    if not ARM64_BUSYBOX.is_file():
        pytest.skip(f"{ARM64_BUSYBOX} is missing (scripts/setup-arm64.sh fetches it)")
    if not can_execute("linux/arm64"):
        pytest.skip("no qemu-aarch64 binfmt_misc handler (scripts/setup-arm64.sh registers it)")
    return build_busybox_layout(tmp_path_factory.mktemp("multiarch"),
                                others={"arm64": str(ARM64_BUSYBOX)})


def test_arm64_run_is_emulated(root, multiarch_layout, tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        "ARG TARGETARCH\n"
        # a pipeline: busybox re-executes itself for `wc`, which needs argv[0] kept by qemu
        "RUN uname -m > /machine && echo \"$TARGETARCH\" | wc -c > /count\n")
    out, layout = tmp_path / "out", tmp_path / "image"
    _build(root, tmp_path, multiarch_layout, capsys, "--platform", "linux/arm64",
           "-o", f"type=local,dest={out}", "-o", f"type=oci,tar=false,dest={layout}")
    assert (out / "machine").read_text() == "aarch64\n"
    assert (out / "count").read_text().strip() == "6"
    assert _elf_machine(out / "bin" / "busybox") == "aarch64"
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / top["digest"].split(":")[1]).read_text())
    config = json.loads((blob / manifest["config"]["digest"].split(":")[1]).read_text())
    assert (config["architecture"], config["os"]) == ("arm64", "linux")


def test_multi_platform_build_runs_natively_and_emulated(root, multiarch_layout, tmp_path,
                                                         capsys):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS build\nRUN uname -m > /machine\n"
        "FROM scratch\nCOPY --from=build /machine /bin/busybox /\n")
    out = tmp_path / "out"
    _build(root, tmp_path, multiarch_layout, capsys, "--platform", "linux/amd64,linux/arm64",
           "-o", f"type=local,dest={out}")
    for platform, machine in (("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")):
        assert (out / platform / "machine").read_text() == f"{machine}\n"
        assert _elf_machine(out / platform / "busybox") == machine


def _arm64_only_layout(tmp_path: Path, binary: Path) -> Path:
    """A layout whose tag names the arm64 manifest alone (no index): an arm64-only image."""
    layout = build_busybox_layout(tmp_path / "multi", others={"arm64": str(binary)})
    blobs = layout / "blobs" / "sha256"
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    index = json.loads((blobs / top["digest"].split(":")[1]).read_text())
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    arm = {**arm, "annotations": {"org.opencontainers.image.ref.name": "latest"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [arm]}))
    return layout


@pytest.fixture
def arm64_only_image(tmp_path, registry):
    fake = tmp_path / "arm64-busybox"
    fake.write_bytes(b"an arm64 busybox stand-in\n")
    name = f"{registry.host}/arm64only/busybox:latest"
    push_oci_layout(_arm64_only_layout(tmp_path, fake), name)
    return name


def _platform_build(root, tmp_path, image, capsys, *args):
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nCOPY Dockerfile /d\n")
    code = main(["--root", root, "build", "--progress", "plain", *args,
                 "--print-llb", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ops = [json.loads(line)["Op"] for line in captured.out.splitlines()]
    platforms = {json.dumps(op["platform"], sort_keys=True) for op in ops if op.get("platform")}
    return platforms, captured.err


def test_base_of_another_platform_warns_when_a_platform_was_asked(root, tmp_path,
                                                                  arm64_only_image, capsys):
    platforms, err = _platform_build(root, tmp_path, arm64_only_image, capsys,
                                     "--platform", "linux/amd64")
    assert ("InvalidBaseImagePlatform: Base image " + arm64_only_image + " was pulled with "
            'platform "linux/arm64", expected "linux/amd64" for current build (Dockerfile:1)'
            ) in err
    assert platforms == {json.dumps({"architecture": "amd64", "os": "linux"}, sort_keys=True)}
    # the file's check options govern it like any build check
    (tmp_path / "skip").mkdir()
    (tmp_path / "skip" / "Dockerfile").write_text(
        f"# check=skip=InvalidBaseImagePlatform\nFROM {arm64_only_image}\n")
    assert main(["--root", root, "build", "--platform", "linux/amd64", "--print-llb",
                 str(tmp_path / "skip")]) == 0
    assert "InvalidBaseImagePlatform" not in capsys.readouterr().err


def test_base_of_a_runnable_platform_is_detected_without_platform(root, tmp_path,
                                                                 arm64_only_image, capsys,
                                                                 monkeypatch):
    from pybk.core import platform as core_platform

    monkeypatch.setattr(core_platform, "can_execute", lambda platform: True)
    platforms, err = _platform_build(root, tmp_path, arm64_only_image, capsys)
    assert "InvalidBaseImagePlatform" not in err
    assert platforms == {json.dumps({"architecture": "arm64", "os": "linux"}, sort_keys=True)}
    # no emulator: the stage keeps the host's platform and the build says why it may fail
    monkeypatch.setattr(core_platform, "can_execute", lambda platform: False)
    platforms, err = _platform_build(root, tmp_path, arm64_only_image, capsys, "--no-cache")
    assert "InvalidBaseImagePlatform" in err
