"""``pybk build --platform linux/amd64,linux/arm64``: one result per platform, exported as an
image index (oci, registry push) or one directory per platform (local)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest
from support.busybox import skopeo_inspect

from pybk.core.cli.commands import main

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


def test_inline_cache_in_every_platform_config(root, context, busybox_layout, tmp_path, capsys):
    import base64

    layout = tmp_path / "layout"
    build(capsys, root, context, busybox_layout, "--cache-to", "type=inline",
          "--output", f"type=oci,tar=false,dest={layout}")
    top = json.loads((layout / "index.json").read_text())
    index = _blob(layout, top["manifests"][0]["digest"])
    records = []
    for entry in index["manifests"]:
        manifest = _blob(layout, entry["digest"])
        config = _blob(layout, manifest["config"]["digest"])
        cache = json.loads(base64.b64decode(config["moby.buildkit.cache.v0"]))
        assert len(cache["layers"]) == len(manifest["layers"])
        records.append(cache["records"][-1]["digest"])
    assert len(set(records)) == 2  # each platform's own result


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
    from pybk.core import platform as core_platform

    monkeypatch.setattr(core_platform, "BINFMT_DIR", str(tmp_path / "no-binfmt"))
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo never\n")
    code = main(["--root", root, "build", "--progress", "quiet",
                 "--platform", "linux/amd64,linux/arm64",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert ("no emulator for linux/arm64: install qemu-user-static and register binfmt_misc"
            in err)
    assert "Traceback" not in err


PARALLEL_DOCKERFILE = (
    "FROM --platform=$BUILDPLATFORM busybox AS build\n"
    "ARG TARGETARCH\n"
    "RUN sleep 1 && echo \"$TARGETARCH\" > /arch.txt\n"
    "FROM scratch\n"
    "COPY --from=build /arch.txt /\n"
)


def _rawjson_vertexes(err: str) -> dict[str, dict]:
    vertexes: dict[str, dict] = {}
    for line in err.splitlines():
        if line.startswith("{"):
            for v in json.loads(line).get("vertexes") or []:
                vertexes.setdefault(v["digest"], {}).update(v)
    return vertexes


def _seconds(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp with up to nanoseconds."""
    from datetime import datetime

    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


def _runs(err: str) -> list[dict]:
    return [v for v in _rawjson_vertexes(err).values() if "RUN sleep" in v["name"]]


def test_platforms_solve_concurrently_and_cache_export_holds_every_platform(
        tmp_path, busybox_layout, capsys):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(PARALLEL_DOCKERFILE)
    cache = tmp_path / "cache"

    def run(root, *args):
        code = main(["--root", str(tmp_path / root), "build", "--progress", "rawjson",
                     "--platform", PLATFORMS,
                     "--build-context", f"busybox=oci-layout://{busybox_layout}", *args,
                     str(tmp_path / "ctx")])
        err = capsys.readouterr().err
        assert code == 0, err
        return _runs(err)

    runs = run("A", "--cache-to", f"type=local,dest={cache},mode=max",
               "-o", f"type=local,dest={tmp_path / 'out-a'}")
    assert len(runs) == 2 and not any(v.get("cached") for v in runs)
    # both platforms' RUNs were running at once
    assert max(_seconds(v["started"]) for v in runs) < min(_seconds(v["completed"])
                                                         for v in runs)
    for platform, arch in (("linux_amd64", "amd64"), ("linux_arm64", "arm64")):
        assert (tmp_path / "out-a" / platform / "arch.txt").read_text() == f"{arch}\n"

    # a fresh store importing the cache runs neither platform's RUN
    runs = run("B", "--cache-from", f"type=local,src={cache}",
               "-o", f"type=local,dest={tmp_path / 'out-b'}")
    assert len(runs) == 2 and all(v.get("cached") for v in runs)
    assert (tmp_path / "out-b" / "linux_arm64" / "arch.txt").read_text() == "arm64\n"


def test_one_platform_failing_stops_the_others(root, tmp_path, busybox_layout, capsys):
    marker = "60.321"  # never reached: the failing platform cancels this sleep
    (tmp_path / "Dockerfile").write_text(
        "FROM --platform=$BUILDPLATFORM busybox\n"
        "ARG TARGETARCH\n"
        f"RUN if [ \"$TARGETARCH\" = arm64 ]; then sleep 0.5; exit 3; fi; exec sleep {marker}\n")
    started = time.monotonic()
    code = main(["--root", root, "build", "--progress", "plain", "--platform", PLATFORMS,
                 "--build-context", f"busybox=oci-layout://{busybox_layout}", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert time.monotonic() - started < 30
    assert "exit code: 3" in err and "Traceback" not in err
    still_running = [pid for pid in filter(str.isdigit, os.listdir("/proc"))
                     if _cmdline_has(pid, marker)]
    assert still_running == []


def _cmdline_has(pid: str, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


@pytest.mark.parametrize(("entry", "expected"), [
    ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n",
     True),
    ("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: F\n", True),
    # without F the emulator is looked up inside the container's rootfs, where it is not
    ("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: \n", False),
    ("disabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: F\n", False),
    (None, False),
])
def test_foreign_platform_needs_an_enabled_fixed_binary_emulator(tmp_path, monkeypatch,
                                                                 entry, expected):
    from pybk.core import platform as core_platform

    monkeypatch.setattr(core_platform, "BINFMT_DIR", str(tmp_path))
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    assert core_platform.can_execute("linux/arm64") is expected
    assert core_platform.can_execute("linux/amd64") is True  # this machine's own


def test_provenance_attests_every_platform(root, context, busybox_layout, tmp_path, capsys):
    layout = tmp_path / "layout"
    build(capsys, root, context, busybox_layout, "--provenance=true",
          "--output", f"type=oci,tar=false,dest={layout}")
    top = json.loads((layout / "index.json").read_text())
    index = _blob(layout, top["manifests"][0]["digest"])
    images = index["manifests"][:2]
    attestations = index["manifests"][2:]
    assert [m["platform"]["architecture"] for m in images] == ["amd64", "arm64"]
    assert [a["annotations"]["vnd.docker.reference.digest"] for a in attestations] == [
        m["digest"] for m in images]
    for image, attestation in zip(images, attestations, strict=True):
        layer = _blob(layout, attestation["digest"])["layers"][0]
        statement = _blob(layout, layer["digest"])
        assert statement["subject"][0]["digest"]["sha256"] == image["digest"].split(":")[1]
        # one invocation for the whole build, each platform its own statement
    invocations = {_blob(layout, _blob(layout, a["digest"])["layers"][0]["digest"])
                   ["predicate"]["metadata"]["buildInvocationID"] for a in attestations}
    assert len(invocations) == 1
