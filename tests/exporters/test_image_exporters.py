"""Image, OCI and Docker exporters end to end: real runc builds, outputs checked by skopeo,
umoci, a Distribution registry and (when it starts) dockerd."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.dockerd import DockerdUnavailable, start_dockerd

from pybk.core import llb
from pybk.core.errors import BuildError, UsageError

EPOCH = 1_700_000_000
APP_SCRIPT = ("mkdir -p /app && echo hello > /app/hello && chmod 750 /app "
              "&& chown 1000:1000 /app/hello && ln -s hello /app/link && rm /etc/group")


def layout_manifest_digest(layout) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


def app_graph(busybox_layout):
    digest = layout_manifest_digest(busybox_layout)
    base = llb.oci_layout(f"busybox@{digest}", store_id="base")
    return base.run(APP_SCRIPT).root()


def solve(client, busybox_layout, outputs=(), graph=None, **kw):
    return client.solve(graph if graph is not None else app_graph(busybox_layout),
                        oci_layouts={"base": str(busybox_layout)}, progress=None,
                        outputs=outputs, **kw)


def skopeo(*args: str) -> str:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"skopeo {' '.join(args)}: {done.stderr}"
    return done.stdout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def decompress(data: bytes, media_type: str) -> bytes:
    if media_type.endswith(("gzip", "+gzip")):
        return gzip.decompress(data)
    if media_type.endswith("zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def verify_layout(layout: Path) -> list[dict]:
    """Walk every descriptor of an OCI layout: digests, sizes and diffIDs must all match.
    Returns the manifests."""
    index = json.loads((layout / "index.json").read_text())
    manifests = []

    def blob(desc: dict) -> bytes:
        algo, _, hexpart = desc["digest"].partition(":")
        data = (layout / "blobs" / algo / hexpart).read_bytes()
        assert len(data) == desc["size"], desc
        assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
        return data

    for desc in index["manifests"]:
        manifest = json.loads(blob(desc))
        assert manifest["mediaType"] == desc["mediaType"]
        config = json.loads(blob(manifest["config"]))
        diff_ids = []
        for layer in manifest["layers"]:
            raw = decompress(blob(layer), layer["mediaType"])
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
        non_empty = [h for h in config["history"] if not h.get("empty_layer")]
        assert len(non_empty) == len(diff_ids)
        manifests.append(manifest)
    return manifests


def tree(root: Path) -> dict[str, tuple]:
    """path → (type, mode, uid, gid, content or link target) of every entry below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                what = ("l", os.readlink(p))
            elif p.is_dir():
                what = ("d", None)
            else:
                what = ("f", hashlib.sha256(p.read_bytes()).hexdigest())
            out[rel] = (*what, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    return out


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("output", "message"), [
    ({"type": "image", "compression": "brotli"}, 'attribute "compression"'),
    ({"type": "image", "push": "true"}, "push=true needs a name"),
    ({"type": "registry"}, "push=true needs a name"),
    ({"type": "oci", "dest": "/nonexistent-dir/x.tar"}, "is not writable"),
    ({"type": "oci", "dest": "FILE", "tar": "false"}, "is a file"),
    ({"type": "docker", "dest": "DIR"}, "is a directory"),
    ({"type": "image", "compression": "gzip", "compression-level": "12"}, "takes 0-9"),
    ({"type": "image", "compression": "zstd", "oci-mediatypes": "false"}, "oci-mediatypes"),
    ({"type": "image", "name": "App:1"}, "lowercase"),
    ({"type": "oci", "dest": "DIR", "push": "true"}, 'unknown attribute "push"'),
])
def test_bad_attrs_fail_before_the_build(tmp_path, output, message):
    from pybk.core.engine.client import Client

    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    output = {k: str(tmp_path / v) if v in ("FILE", "DIR") else v for k, v in output.items()}
    root = tmp_path / "store"
    with Client(root=root) as client, pytest.raises(UsageError, match=message) as info:
        client.solve(llb.scratch().file(llb.mkfile("/a", 0o644, b"a")), outputs=[output],
                     progress=None)
    assert "--output" in str(info.value)
    assert not (root / "metadata.db").exists()  # nothing was built


# ------------------------------------------------------------------------------ outputs


def test_oci_docker_and_layout_outputs_read_by_skopeo_and_umoci(client, busybox_layout,
                                                                   tmp_path, app_config):
    oci_tar, docker_tar = tmp_path / "img.oci.tar", tmp_path / "img.docker.tar"
    layout = tmp_path / "layout"
    name = "example.com/team/app:1.0"
    result = solve(client, busybox_layout, image_config=app_config, outputs=[
        {"type": "oci", "dest": str(oci_tar), "name": name},
        {"type": "docker", "dest": str(docker_tar), "name": name},
        {"type": "oci", "dest": str(layout), "tar": "false", "name": name},
        {"type": "local", "dest": str(tmp_path / "local")},
    ])
    assert result.ref.snapshot

    oci = json.loads(skopeo("inspect", f"oci-archive:{oci_tar}"))
    docker = json.loads(skopeo("inspect", f"docker-archive:{docker_tar}"))
    from_dir = json.loads(skopeo("inspect", f"oci:{layout}:1.0"))
    assert oci["Digest"] != docker["Digest"]  # OCI vs Docker media types
    assert oci["Layers"] == from_dir["Layers"]
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:1.0"))
    assert docker["Layers"] == config["rootfs"]["diff_ids"]  # docker-archive lists diffIDs
    assert len(oci["Layers"]) == 2
    assert oci["Env"] == ["PATH=/bin"]

    with tarfile.open(docker_tar) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
        index = json.loads(tar.extractfile("index.json").read())
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= set(names)
    assert manifest[0]["RepoTags"] == ["example.com/team/app:1.0"]
    assert index["manifests"][0]["annotations"] == {
        "io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1.0"}
    # Docker media types by default for docker (and image), OCI for oci, as BuildKit
    assert index["manifests"][0]["mediaType"] == \
        "application/vnd.docker.distribution.manifest.v2+json"
    with tarfile.open(oci_tar) as tar:
        oci_index = json.loads(tar.extractfile("index.json").read())
    assert oci_index["manifests"][0]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    verify_layout(layout)

    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:1.0", str(bundle)], check=True,
                   capture_output=True)
    unpacked, local = tree(bundle / "rootfs"), tree(tmp_path / "local")
    # the same files; the image keeps their owners, the local output gives them all to the
    # user running the build (as BuildKit's client writes it)
    assert {k: v[:3] for k, v in unpacked.items()} == {k: v[:3] for k, v in local.items()}
    assert {v[3:] for v in local.values()} == {(os.getuid(), os.getgid())}
    assert unpacked["app/hello"][0] == "f" and unpacked["app/hello"][3:] == (1000, 1000)
    assert unpacked["app"][2] == 0o750
    assert unpacked["app/link"][:2] == ("l", "hello")
    assert "etc/group" not in unpacked and "etc/passwd" in unpacked  # whiteout applied


@pytest.mark.parametrize("compression", ["gzip", "zstd", "uncompressed"])
def test_every_compression_validates(client, busybox_layout, tmp_path, compression):
    layout = tmp_path / "layout"
    solve(client, busybox_layout, outputs=[{
        "type": "oci", "dest": str(layout), "tar": "false", "compression": compression,
        "force-compression": "true", "compression-level": "1"}])
    manifest, = verify_layout(layout)
    suffix = {"gzip": "+gzip", "zstd": "+zstd", "uncompressed": ".tar"}[compression]
    # zstd needs OCI media types and switches them on
    assert all(layer["mediaType"].endswith(suffix) for layer in manifest["layers"])
    base_manifest = json.loads(skopeo("inspect", "--raw", f"oci:{busybox_layout}:latest"))
    base_config = json.loads(skopeo("inspect", "--config", f"oci:{busybox_layout}:latest"))
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}"))
    # recompression keeps the base layer's diffID
    assert config["rootfs"]["diff_ids"][0] == base_config["rootfs"]["diff_ids"][0]
    if compression != "gzip":
        assert manifest["layers"][0]["digest"] != base_manifest["layers"][0]["digest"]
    json.loads(skopeo("inspect", f"oci:{layout}"))


def test_base_layers_are_reused_and_layers_cached(client, busybox_layout, tmp_path,
                                                  monkeypatch):
    from pybk.core.images import layers as layers_mod

    base_manifest = json.loads(skopeo("inspect", "--raw", f"oci:{busybox_layout}:latest"))
    calls = []
    real = layers_mod.write_blob
    monkeypatch.setattr(layers_mod, "write_blob",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    first = tmp_path / "first"
    solve(client, busybox_layout, outputs=[{"type": "oci", "dest": str(first), "tar": "false",
                                            "oci-mediatypes": "true"}])
    manifest, = verify_layout(first)
    assert manifest["layers"][0] == base_manifest["layers"][0]  # same blob, not recompressed
    assert len(calls) == 1  # only the RUN layer was compressed
    second = tmp_path / "second"
    solve(client, busybox_layout, outputs=[{"type": "oci", "dest": str(second), "tar": "false",
                                            "oci-mediatypes": "true"}])
    assert len(calls) == 1  # the rebuild reused the compressed layer
    again, = verify_layout(second)
    assert again["layers"] == manifest["layers"]  # (the config's "created" differs)


def test_same_build_on_fresh_stores_is_bit_identical(make_client, busybox_layout, tmp_path,
                                                     app_config):
    from pybk.core.images import store as imagestore
    from pybk.exporters.image import ImageExporter, ImageOptions

    digests = []
    for store in ("one", "two"):
        client = make_client(store)
        result = solve(client, busybox_layout, image_config=app_config)
        # SOURCE_DATE_EPOCH from the build (info) on one store, from the attribute on the other
        by_attr = store == "two"
        instance = ImageExporter().resolve(ImageOptions(
            name=[f"repro/{store}:1"], rewrite_timestamp=True,
            source_date_epoch=EPOCH if by_attr else None))
        info = {} if by_attr else {"source_date_epoch": str(EPOCH)}
        response = instance.export(result, info).response
        digests.append(response["containerimage.digest"])
        details = imagestore.inspect(client.root, f"repro/{store}:1")["config"]
        assert details["created"] == "2023-11-14T22:13:20Z"
        assert {h["created"] for h in details["history"]} == {"2023-11-14T22:13:20Z"}
    assert digests[0] == digests[1]


def test_image_store_and_from_local_image(client, busybox_layout, tmp_path, app_config,
                                          capsys):
    from pybk.core.images import store as imagestore
    from pybk.core.images.metadata import write_iidfile, write_metadata_file
    from pybk.exporters import cli_support

    result = solve(client, busybox_layout, image_config=app_config,
                   outputs=[{"type": "image", "name": "app:1,app:latest", "unpack": "true",
                             "oci-mediatypes": "true"}])
    assert result.ref.snapshot
    root = client.root
    names = [i.name for i in imagestore.list_images(root)]
    assert names == ["docker.io/library/app:1", "docker.io/library/app:latest"]
    info = imagestore.inspect(root, "app:1")
    assert info["config"]["config"]["Cmd"] == ["/bin/sh"]
    # the store is an OCI layout any tool reads; its blobs are the content store's
    assert os.path.realpath(Path(root) / "images" / "blobs") == \
        os.path.realpath(Path(root) / "content" / "blobs")
    inspected = json.loads(skopeo("inspect", f"oci:{root}/images:docker.io/library/app:1"))
    assert inspected["Digest"] == info["descriptor"]["digest"]

    # FROM the stored image (default resolve mode finds it locally: no registry exists)
    st = llb.image("app:1").run("cat /app/hello > /copied").root()
    out = tmp_path / "out"
    built = client.solve(st, progress=None, outputs=[{"type": "local", "dest": str(out)}])
    assert (out / "copied").read_text() == "hello\n"
    assert not (out / "etc" / "group").exists()
    # unpack=true: the stored image's layers are the build's own snapshots, nothing extracted
    store = built.store
    chain = store.record_snapshotter(store.get_record(built.ref.snapshot)).layer_chain(
        built.ref.snapshot)
    assert result.ref.snapshot in chain
    # resolve mode local prefers the local image store and falls back to the registry (as
    # BuildKit's): nothing listens on port 9
    with pytest.raises(BuildError, match="127.0.0.1:9"):
        client.solve(llb.image("127.0.0.1:9/missing:1", resolve_mode="local"), progress=None)

    # images ls / tag / inspect / rm
    assert cli_support.images_command(["tag", "app:1", "other/app:2"], root) == 0
    assert cli_support.images_command(["ls"], root) == 0
    listing = capsys.readouterr().out
    assert "docker.io/other/app:2" in listing and "NAME" in listing
    assert cli_support.images_command(["inspect", "other/app:2"], root) == 0
    assert json.loads(capsys.readouterr().out)[0]["descriptor"]["digest"] == \
        info["descriptor"]["digest"]
    assert cli_support.images_command(["rm", "other/app:2", "nope:1"], root) == 1
    assert imagestore.get(root, "other/app:2") is None
    with pytest.raises(UsageError):
        cli_support.images_command(["frobnicate"], root)

    # --metadata-file / --iidfile
    response = {"containerimage.digest": info["descriptor"]["digest"],
                "containerimage.config.digest": info["manifest"]["config"]["digest"],
                "containerimage.descriptor": base64.b64encode(
                    json.dumps(info["descriptor"]).encode()).decode(),
                "image.name": "docker.io/library/app:1"}
    write_metadata_file(str(tmp_path / "meta.json"), [response])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["containerimage.descriptor"] == info["descriptor"]
    assert meta["image.name"] == "docker.io/library/app:1"
    write_iidfile(str(tmp_path / "iid"), response)
    assert (tmp_path / "iid").read_text() == info["manifest"]["config"]["digest"]


def test_push_with_basic_auth_pulls_back_identical(client, busybox_ref, busybox_layout,
                                                   auth_registry, docker_config, tmp_path):
    from pybk.exporters.image import ImageExporter, ImageOptions

    docker_config.write({auth_registry.host: (auth_registry.username, auth_registry.password)})
    name = f"{auth_registry.host}/team/app:1"
    graph = llb.image(busybox_ref).run("echo pushed > /pushed").root()
    result = client.solve(graph, progress=None)
    instance = ImageExporter().resolve(ImageOptions(name=[name], push=True, store=False))
    response = instance.export(result, {}).response

    creds = f"{auth_registry.username}:{auth_registry.password}"
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds,
                 f"docker://{name}")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == \
        response["containerimage.digest"]
    manifest = json.loads(raw)
    base = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{busybox_ref}"))
    assert manifest["layers"][0]["digest"] == base["layers"][0]["digest"]  # reused
    assert manifest["config"]["digest"] == response["containerimage.config.digest"]

    copied = tmp_path / "copied"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, "--preserve-digests",
           f"docker://{name}", f"oci:{copied}:pulled")
    pulled, = verify_layout(copied)
    assert [layer["digest"] for layer in pulled["layers"]] == \
        [layer["digest"] for layer in manifest["layers"]]
    assert pulled["config"]["digest"] == manifest["config"]["digest"]


def test_push_by_digest_mounts_base_layers(client, busybox_ref, registry, monkeypatch):
    from pybk.core.registry.client import RegistryClient

    sent: dict[str, bool] = {}
    real = RegistryClient.push_blob

    async def spy(self, ref, descriptor, source=None, **kw):
        sent[descriptor.digest] = await real(self, ref, descriptor, source, **kw)
        return sent[descriptor.digest]

    monkeypatch.setattr(RegistryClient, "push_blob", spy)
    name = f"{registry.host}/bydigest/app"
    graph = llb.image(busybox_ref).run("echo digest > /d").root()
    result = client.solve(graph, progress=None, outputs=[{
        "type": "image", "name": name, "push": "true", "push-by-digest": "true",
        "store": "false", "oci-mediatypes": "true", "annotation.org.example.k": "v"}])
    assert result.ref.snapshot
    base = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{busybox_ref}"))
    base_layer = base["layers"][0]["digest"]
    assert sent[base_layer] is False  # mounted from the busybox repository, not uploaded
    assert sorted(sent.values()) == [False, True, True]  # the new layer and config were sent
    untagged = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                               f"docker://{name}:latest"], capture_output=True, text=True)
    assert untagged.returncode != 0 and "manifest unknown" in untagged.stderr
    # the manifest is there by digest
    from pybk.core.store.content import ContentStore

    store = ContentStore(client.root)
    digests = [d for d, _ in store.walk()
               if b'"org.example.k":"v"' in store.path(d).read_bytes()[:4096]]
    assert len(digests) == 1
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                            f"docker://{name}@{digests[0]}"))
    assert raw["annotations"] == {"org.example.k": "v"}


# ------------------------------------------------------------------------------ docker load


@pytest.mark.slow
def test_docker_tarball_loads_into_dockerd(client, busybox_layout, tmp_path, app_config,
                                           monkeypatch):
    try:
        daemon = start_dockerd(Path("/tmp") / f"pybk-dockerd-{os.getpid()}",
                               storage_driver="vfs")
    except DockerdUnavailable as e:
        pytest.skip(str(e))
    try:
        tarball = tmp_path / "img.tar"
        solve(client, busybox_layout, image_config=app_config,
              outputs=[{"type": "docker", "dest": str(tarball), "name": "pybk-test/app:1"}])
        loaded = daemon.docker("load", "-i", str(tarball), check=False)
        assert loaded.returncode == 0, loaded.stderr
        assert "pybk-test/app:1" in loaded.stdout
        ran = daemon.docker("run", "--rm", "--network=none", "pybk-test/app:1",
                            "cat", "/app/hello", check=False)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "hello\n"

        # pybk build --load hands the docker tarball to the running engine
        from pybk.core.cli.commands import main

        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo loaded > /loaded\n")
        monkeypatch.setenv("DOCKER_HOST", daemon.env["DOCKER_HOST"])
        assert main(["--root", str(tmp_path / "cli-store"), "build", "--progress", "quiet",
                     "--load", "-t", "pybk-test/cli:1",
                     "--build-context", f"busybox=oci-layout://{busybox_layout}",
                     str(ctx)]) == 0
        ran = daemon.docker("run", "--rm", "--network=none", "pybk-test/cli:1", "cat", "/loaded")
        assert ran.stdout == "loaded\n"
    finally:
        daemon.stop()


def test_load_without_a_docker_engine_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from pybk.core.cli.commands import main

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    assert main(["--root", str(tmp_path / "store"), "build", "--load", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--load" in err and "running docker engine" in err


def test_local_directory_result_is_one_layer(client, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "sub" / "f").write_text("data")
    layout = tmp_path / "layout"
    client.solve(llb.local("ctx"), local_dirs={"ctx": str(ctx)}, progress=None, outputs=[
        {"type": "oci", "dest": str(layout), "tar": "false", "compression": "uncompressed",
         "name": "local/only:1"}])
    manifest, = verify_layout(layout)
    assert len(manifest["layers"]) == 1
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:1"))
    assert config["os"] == "linux" and config["architecture"]
    blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    with tarfile.open(blob) as tar:
        assert tar.extractfile("sub/f").read() == b"data"
