"""A multi-platform build over a builder of two nodes — an amd64 node and an arm64 node (its RUN
steps emulated by qemu here) — merged into one image index: pushed to a registry, and written
as an OCI tarball; each platform built on its node (seen in each node's build history)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.busybox import build_busybox_layout, push_oci_layout
from support.tlsdaemon import CLIENT, PKI, RemoteDaemon, client_env, tls_config

from pybk.core.platform import can_execute, host_platform

ARM64_BUSYBOX = Path(os.environ.get("PYBK_ARM64_DIR", "/tmp/pybk-arm64")) / "busybox"


def _need_arm64() -> None:
    reason = None
    if host_platform().architecture != "amd64":
        reason = "the emulation tests run on amd64 hosts"
    elif not ARM64_BUSYBOX.is_file():
        reason = f"{ARM64_BUSYBOX} is missing (scripts/setup-arm64.sh fetches it)"
    elif not can_execute("linux/arm64"):
        reason = "no qemu-aarch64 binfmt_misc handler (scripts/setup-arm64.sh registers it)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: required)")
        pytest.skip(reason)


class Fleet:
    def __init__(self, base: Path):
        (base / "pki").mkdir()
        self.pki = PKI(base / "pki")
        self.daemons = {}
        for name, extra in (("amd", ""), ("arm", 'platforms = ["linux/arm64"]\n')):
            (base / name).mkdir()
            self.daemons[name] = RemoteDaemon(base / name, tls_config(self.pki, extra))
        self.env = client_env(XDG_CONFIG_HOME=str(base / "xdg"))

    def pybk(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CLIENT, *args], capture_output=True, text=True, cwd=cwd,
                              env=self.env, timeout=300, stdin=subprocess.DEVNULL)

    def history(self, name: str) -> list[dict]:
        folder = self.daemons[name].root / "history"
        if not folder.is_dir():
            return []
        records = [json.loads(p.read_text().splitlines()[0]) for p in folder.glob("*.json")]
        return sorted(records, key=lambda r: r.get("created_at") or r.get("started_at") or 0)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    _need_arm64()
    f = Fleet(tmp_path_factory.mktemp("multinode"))
    for name, platform in (("amd", "linux/amd64"), ("arm", "linux/arm64")):
        done = f.pybk("builder", "create", "duo", "--node", f.daemons[name].addr,
                      "--node-name", name, "--platform", platform, "--tlsdir",
                      str(f.pki.good), *(["--append"] if name == "arm" else []))
        assert done.returncode == 0, done.stderr
    yield f
    for daemon in f.daemons.values():
        daemon.stop()


@pytest.fixture(scope="module")
def base_image(fleet, registry, tmp_path_factory):
    layout = build_busybox_layout(tmp_path_factory.mktemp("layout") / "l",
                                  others={"arm64": str(ARM64_BUSYBOX)})
    name = f"{registry.host}/base/busybox:latest"
    push_oci_layout(layout, name)
    return name


def _context(tmp_path: Path, image: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {image}\nRUN uname -m > /machine\n")
    return ctx


def _platforms_built(fleet: Fleet, name: str, since: int) -> list[tuple[str, ...]]:
    return [tuple(r.get("platforms", ())) for r in fleet.history(name)[since:]]


def _layer_file(blob: bytes, path: str) -> bytes | None:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar:
            if member.name.lstrip("./") == path:
                return tar.extractfile(member).read()
    return None


def test_an_oci_tarball_of_both_platforms_each_built_on_its_node(fleet, base_image, tmp_path):
    ctx = _context(tmp_path, base_image)
    before = {n: len(fleet.history(n)) for n in fleet.daemons}
    out, meta = tmp_path / "image.tar", tmp_path / "meta.json"
    done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/amd64,linux/arm64",
                      "-t", "example.test/app:1", "-o", f"type=oci,dest={out}",
                      "--metadata-file", str(meta), str(ctx))
    assert done.returncode == 0, done.stderr
    assert "linux/amd64 on node amd; linux/arm64 on node arm" in done.stderr
    assert "[arm linux/arm64] " in done.stderr and "[amd linux/amd64] " in done.stderr
    # each node built only its platform
    assert _platforms_built(fleet, "amd", before["amd"]) == [("linux/amd64",)]
    assert _platforms_built(fleet, "arm", before["arm"]) == [("linux/arm64",)]
    with tarfile.open(out) as tar:
        def blob(digest: str) -> bytes:
            return tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}").read()

        top = json.loads(tar.extractfile("index.json").read())["manifests"]
        assert [e["annotations"]["io.containerd.image.name"] for e in top] == \
            ["example.test/app:1"]
        index = json.loads(blob(top[0]["digest"]))
        images = [m for m in index["manifests"]
                  if "vnd.docker.reference.type" not in m.get("annotations", {})]
        assert [(m["platform"]["os"], m["platform"]["architecture"]) for m in images] == \
            [("linux", "amd64"), ("linux", "arm64")]
        for desc, machine in zip(images, ("x86_64", "aarch64"), strict=True):
            manifest = json.loads(blob(desc["digest"]))
            config = json.loads(blob(manifest["config"]["digest"]))
            assert config["architecture"] == desc["platform"]["architecture"]
            top_layer = blob(manifest["layers"][-1]["digest"])
            import gzip

            if manifest["layers"][-1]["mediaType"].endswith("gzip"):
                top_layer = gzip.decompress(top_layer)
            assert _layer_file(top_layer, "machine") == f"{machine}\n".encode()
        # every blob the index names is in the tarball
        for desc in index["manifests"]:
            manifest = json.loads(blob(desc["digest"]))
            for layer in [manifest["config"], *manifest["layers"]]:
                assert len(blob(layer["digest"])) == layer["size"]
    data = json.loads(meta.read_text())
    assert data["containerimage.digest"] == top[0]["digest"]


def test_pushed_index_names_both_nodes_manifests(fleet, base_image, registry, tmp_path):
    ctx = _context(tmp_path, base_image)
    before = {n: len(fleet.history(n)) for n in fleet.daemons}
    name = f"{registry.host}/apps/duo:v1"
    iid = tmp_path / "iid"
    done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/arm64,linux/amd64",
                      "-t", name, "--push", "--iidfile", str(iid), str(ctx))
    assert done.returncode == 0, done.stderr
    assert _platforms_built(fleet, "amd", before["amd"]) == [("linux/amd64",)]
    assert _platforms_built(fleet, "arm", before["arm"]) == [("linux/arm64",)]
    import urllib.request

    def get(path: str, accept: str) -> tuple[bytes, str]:
        request = urllib.request.Request(f"http://{registry.host}/v2/apps/duo/{path}",
                                         headers={"Accept": accept})
        with urllib.request.urlopen(request) as response:  # 127.0.0.1
            return response.read(), response.headers.get("Docker-Content-Digest")

    raw, digest = get("manifests/v1", "application/vnd.oci.image.index.v1+json")
    assert iid.read_text() == digest
    index = json.loads(raw)
    images = [m for m in index["manifests"]
              if "vnd.docker.reference.type" not in m.get("annotations", {})]
    # the order asked: arm64 first
    assert [m["platform"]["architecture"] for m in images] == ["arm64", "amd64"]
    for desc in index["manifests"]:
        body, got = get(f"manifests/{desc['digest']}", desc["mediaType"])
        assert got == desc["digest"] and len(body) == desc["size"]


def test_what_cannot_be_merged_is_refused(fleet, base_image, tmp_path):
    ctx = _context(tmp_path, base_image)
    for flags, words in ((["--load"], "--load"),
                         (["-t", "x/y:1"], "cannot stay in the nodes' stores"),
                         (["-o", f"type=docker,dest={tmp_path}/d.tar"], "holds one platform"),
                         (["-o", f"type=oci,tar=false,dest={tmp_path}/l"], "not merged")):
        done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/amd64,linux/arm64",
                          *flags, str(ctx))
        assert done.returncode == 2, (flags, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr


def test_local_output_is_split_by_platform_and_one_platform_uses_one_node(fleet, base_image,
                                                                          tmp_path):
    ctx = _context(tmp_path, base_image)
    out = tmp_path / "out"
    done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/amd64,linux/arm64",
                      "-o", f"type=local,dest={out}", str(ctx))
    assert done.returncode == 0, done.stderr
    assert (out / "linux_amd64" / "machine").read_text() == "x86_64\n"
    assert (out / "linux_arm64" / "machine").read_text() == "aarch64\n"
    archive = tmp_path / "out.tar"
    done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/amd64,linux/arm64",
                      "-o", f"type=tar,dest={archive}", str(ctx))
    assert done.returncode == 0, done.stderr
    with tarfile.open(archive) as tar:
        assert tar.extractfile("linux_amd64/machine").read() == b"x86_64\n"
        assert tar.extractfile("linux_arm64/machine").read() == b"aarch64\n"
        busybox = tar.getmember("linux_arm64/bin/busybox")
        assert busybox.isfile() and busybox.mode & 0o111
    before = len(fleet.history("arm"))
    single = tmp_path / "single"
    done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/arm64",
                      "-o", f"type=local,dest={single}", str(ctx))
    assert done.returncode == 0, done.stderr
    # one platform is an ordinary routed build: on the node that runs it
    assert _platforms_built(fleet, "arm", before) == [("linux/arm64",)]
    assert (single / "machine").read_text() == "aarch64\n"


def test_a_node_that_fails_fails_the_build_and_names_itself(fleet, base_image, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image}\nRUN test \"$(uname -m)\" = x86_64\n")
    out = tmp_path / "never.tar"
    done = fleet.pybk("build", "--builder", "duo", "--platform", "linux/amd64,linux/arm64",
                      "-o", f"type=oci,dest={out}", str(ctx))
    assert done.returncode == 1, done.stderr
    assert "node arm (tcp://" in done.stderr and "failed building linux/arm64" in done.stderr
    assert not out.exists() and "Traceback" not in done.stderr


def test_a_builders_cache_is_named_per_platform_across_nodes(fleet, base_image, tmp_path,
                                                             moto_s3):
    """Both nodes export the builder's cache at once: each under the project's name and its
    platform, so neither replaces the other's records."""
    from pybk.core.cli.builders import project_cache_name, routing_key
    from pybk.core.cli.multinode import Group, platform_caches

    csv = ",".join(f"{k}={v}" for k, v in moto_s3.attrs(prefix="duo/").items() if k != "name")
    for name, platform in (("amd", "linux/amd64"), ("arm", "linux/arm64")):
        done = fleet.pybk("builder", "create", "duo-s3", "--node", fleet.daemons[name].addr,
                          "--node-name", name, "--platform", platform, "--tlsdir",
                          str(fleet.pki.good), "--cache-from", f"type=s3,{csv}",
                          "--cache-to", f"type=s3,{csv},mode=max",
                          *(["--append"] if name == "arm" else []))
        assert done.returncode == 0, done.stderr
    ctx = _context(tmp_path, base_image)
    done = fleet.pybk("build", "--builder", "duo-s3", "--platform", "linux/amd64,linux/arm64",
                      str(ctx))
    assert done.returncode == 0, done.stderr
    project = project_cache_name(routing_key(str(ctx), None, None))
    names = {p.rsplit("/", 1)[1]
             for p in moto_s3.filesystem().find(f"{moto_s3.bucket}/duo/manifests/")}
    assert names == {f"{project}-linux-amd64", f"{project}-linux-arm64"}
    # a name given on the command line is the user's: kept as it is
    group = Group(None, ["linux/arm64"])
    args = ["--cache-to", "type=s3,name=mine", "--cache-from=type=gha,scope=" + project, "."]
    assert platform_caches(args, project, group) == [
        "--cache-to", "type=s3,name=mine", f"--cache-from=type=gha,scope={project}-linux-arm64",
        "."]
