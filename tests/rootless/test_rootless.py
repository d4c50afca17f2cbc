"""Rootless pybk: builds by an ordinary user (tests/rootless/conftest.py makes one), in a user
namespace of their own (docs/rootless.md)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from support.pybkd import stop_process

pytestmark = pytest.mark.runc

SECRET = "rootless-secret-value-5f1e0c"

OWNERS_DOCKERFILE = """\
FROM busybox
COPY --chown=1234:5678 f /copied
RUN cp /copied /f && chown 42:43 /f && chmod u+s /f
RUN mkdir -p /d/sub && echo x > /d/sub/a
RUN rm -rf /d && mkdir -p /d && echo y > /d/b
RUN --mount=type=cache,target=/cache echo hi >> /cache/n && wc -l < /cache/n > /cachecount
RUN --mount=type=secret,id=s wc -c < /run/secrets/s > /secretlen
USER nobody
RUN id -u > /tmp/who
"""


def layers(oci_tar: Path) -> list[tuple[str, dict[str, tarfile.TarInfo], dict[str, bytes]]]:
    """``(digest, entries by name, file contents by name)`` of each layer of the image in an
    OCI layout tar."""
    out = []
    with tarfile.open(oci_tar) as t:
        def blob(digest: str) -> bytes:
            member = t.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None
            return member.read()

        index = json.loads(blob_of(t, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as lt:
                entries = {m.name: m for m in lt.getmembers()}
                data = {m.name: lt.extractfile(m).read() for m in entries.values()  # type: ignore[union-attr]
                        if m.isfile()}
            out.append((layer["digest"], entries, data))
    return out


def blob_of(t: tarfile.TarFile, name: str) -> bytes:
    member = t.extractfile(name)
    assert member is not None
    return member.read()


def last_entry(image: list, name: str) -> tuple[tarfile.TarInfo, bytes]:
    """The topmost layer's entry ``name`` and its contents."""
    for _, entries, data in reversed(image):
        if name in entries:
            return entries[name], data.get(name, b"")
    raise AssertionError(f"{name} in no layer")


def owners_context(user, user_busybox) -> tuple[Path, Path]:
    work = user.workdir()
    ctx = work / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("hello\n")
    (ctx / "Dockerfile").write_text(OWNERS_DOCKERFILE)
    (work / "secret").write_text(SECRET)
    user.give(work)
    return work, ctx


def build_args(user_busybox: Path, work: Path, *more: str) -> list[str]:
    return ["build", "--progress", "plain",
            "--build-context", f"busybox=oci-layout://{user_busybox}",
            "--secret", f"id=s,src={work / 'secret'}", *more, str(work / "ctx")]


def test_readme_example_as_user(rootless_user, user_busybox):
    """scripts/example.sh's build, as the user: outputs, the image, a private store, the
    snapshotter said once."""
    work = rootless_user.workdir()
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples", work / "examples")
    rootless_user.give(work)
    args = ["build", "--progress", "plain",
            "--build-context", f"busybox=oci-layout://{user_busybox}",
            "-o", f"type=local,dest={work / 'out'}", "-o", "type=image,name=pybk-example:latest",
            str(work / "examples")]
    done = rootless_user.pybk(*args)
    assert done.returncode == 0, done.stderr
    assert "snapshotter overlayfs" in done.stderr
    app = work / "out" / "app"
    assert (app / "greeting.txt").read_text().strip()
    assert (app / "lint.txt").read_text().startswith("ok ")
    assert os.stat(app / "greet").st_uid == rootless_user.uid  # the user's own files
    assert os.stat(app / "greet").st_mode & 0o111
    store = rootless_user.home / ".local" / "share" / "pybk"
    st = os.stat(store)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (rootless_user.uid, 0o700)
    images = rootless_user.pybk("images", "ls")
    assert "pybk-example:latest" in images.stdout, images.stderr
    again = rootless_user.pybk(*args)
    assert again.returncode == 0, again.stderr
    assert "snapshotter" not in again.stderr  # said once per store
    assert "CACHED" in again.stderr


def test_owners_modes_cache_and_secret_in_the_oci_image(rootless_user, user_busybox):
    work, _ = owners_context(rootless_user, user_busybox)
    store = work / "store"
    done = rootless_user.pybk("--root", str(store), *build_args(
        user_busybox, work, "-o", f"type=oci,dest={work / 'image.tar'}"))
    assert done.returncode == 0, done.stderr
    image = layers(work / "image.tar")
    copied, data = last_entry(image, "copied")
    assert (copied.uid, copied.gid, data) == (1234, 5678, b"hello\n")
    f, _ = last_entry(image, "f")
    assert (f.uid, f.gid, stat.S_IMODE(f.mode)) == (42, 43, 0o4644)
    assert last_entry(image, "tmp/who")[1] == b"65534\n"
    who, _ = last_entry(image, "tmp/who")
    assert (who.uid, who.gid) == (65534, 65534)
    assert last_entry(image, "cachecount")[1] == b"1\n"
    assert last_entry(image, "secretlen")[1] == f"{len(SECRET)}\n".encode()
    # the directory replaced by RUN rm -rf: an opaque directory in the layer
    assert "d/.wh..wh..opq" in image[-4][1] and "d/b" in image[-4][1]
    assert not any(n.startswith("d/sub") for n in image[-4][1])
    # the secret is in no layer and nowhere in the store
    assert all(SECRET.encode() not in blob for _, _, d in image for blob in d.values())
    found = subprocess.run(["grep", "-rl", SECRET, str(store)], capture_output=True)
    assert found.returncode == 1, found.stdout
    # the cache mount persists between builds
    again = rootless_user.pybk("--root", str(store), *build_args(
        user_busybox, work, "--no-cache", "-o", f"type=local,dest={work / 'out'}"))
    assert again.returncode == 0, again.stderr
    assert (work / "out" / "cachecount").read_text() == "2\n"


def test_same_layer_digests_as_root(rootless_user, user_busybox):
    """SOURCE_DATE_EPOCH: the build as root and as the user make the same layers."""
    work, _ = owners_context(rootless_user, user_busybox)
    args = build_args(user_busybox, work, "--no-cache")
    done = rootless_user.pybk("--root", str(work / "store"), *args, "-o",
                              f"type=oci,dest={work / 'user.tar'},rewrite-timestamp=true",
                              SOURCE_DATE_EPOCH="0")
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "PYBK_CONFIG": str(rootless_user.config)}
    as_root = subprocess.run(
        [sys.executable, "-m", "pybk.core.cli.entry", "--root", str(work / "root-store"),
         *args, "-o", f"type=oci,dest={work / 'root.tar'},rewrite-timestamp=true"],
        capture_output=True, text=True, env=env, timeout=120)
    assert as_root.returncode == 0, as_root.stderr
    user_digests = [d for d, _, _ in layers(work / "user.tar")]
    root_digests = [d for d, _, _ in layers(work / "root.tar")]
    assert user_digests == root_digests


def base_layout(path: Path, user_busybox: Path, entries: list[tarfile.TarInfo]) -> Path:
    """busybox plus a layer of ``entries`` (empty files, directories, devices)."""
    import hashlib

    from support.busybox import layout_manifest

    shutil.copytree(user_busybox, path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info in entries:
            t.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    layer = buf.getvalue()
    blobs = path / "blobs" / "sha256"

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    entry, manifest_bytes = layout_manifest(path)
    manifest = json.loads(manifest_bytes)
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    layer_digest = put(layer)
    config["rootfs"]["diff_ids"].append(layer_digest)
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put(config_bytes),
                          "size": len(config_bytes)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": layer_digest, "size": len(layer)})
    manifest_bytes = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "manifests": [{**entry, "digest": put(manifest_bytes),
                                                "size": len(manifest_bytes)}]}
    (path / "index.json").write_text(json.dumps(index))
    return path


def _info(name: str, *, uid: int = 0, gid: int = 0, mode: int = 0o644,
          kind: bytes = tarfile.REGTYPE, size: int = 1, major: int = 0,
          minor: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.uid, info.gid, info.mode, info.type = uid, gid, mode, kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.devmajor, info.devminor = major, minor
    return info


def test_base_image_owners_and_devices(rootless_user, user_busybox):
    """Files of a base image owned by other ids and setuid keep both; its device nodes are
    skipped with a warning; an id outside the mapped range (a base file's, a COPY --chown)
    is an error naming the file."""
    work = rootless_user.workdir()
    base_layout(work / "base", user_busybox, [
        _info("opt", kind=tarfile.DIRTYPE, mode=0o755),
        _info("opt/tester", uid=1000, gid=1000, mode=0o600),
        _info("opt/suid", uid=0, gid=0, mode=0o4755),
        _info("opt/null", kind=tarfile.CHRTYPE, mode=0o666, major=1, minor=3),
    ])
    base_layout(work / "far", user_busybox, [_info("far", uid=100000, gid=5)])
    ctx = work / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\nRUN ls -n /opt > /opt/listing\n")
    rootless_user.give(work)
    done = rootless_user.pybk(
        "build", "--progress", "plain", "--build-context", f"base=oci-layout://{work / 'base'}",
        "-o", f"type=oci,dest={work / 'image.tar'}", str(ctx))
    assert done.returncode == 0, done.stderr
    assert "1 device node(s) skipped (opt/null)" in done.stderr
    image = layers(work / "image.tar")
    tester, _ = last_entry(image, "opt/tester")
    assert (tester.uid, tester.gid, stat.S_IMODE(tester.mode)) == (1000, 1000, 0o600)
    suid, _ = last_entry(image, "opt/suid")
    assert stat.S_IMODE(suid.mode) == 0o4755
    listing = last_entry(image, "opt/listing")[1].decode()
    assert "null" not in listing and " 1000 " in listing
    assert not any(info.ischr() and info.name == "opt/null" for _, e, _ in image[-1:]
                   for info in e.values())
    with tarfile.open(ctx / "add.tar", "w") as t:  # ADD of a local archive: the same
        for info in (_info("added", uid=1000, gid=1001, mode=0o4750),
                     _info("zero", kind=tarfile.CHRTYPE, major=1, minor=5)):
            t.addfile(info, io.BytesIO(b"x") if info.isfile() else None)
    rootless_user.give(ctx)
    (ctx / "Dockerfile").write_text("FROM base\nADD add.tar /x/\n")
    added = rootless_user.pybk(
        "build", "--progress", "plain", "--build-context", f"base=oci-layout://{work / 'base'}",
        "-o", f"type=oci,dest={work / 'added.tar'}", str(ctx))
    assert added.returncode == 0, added.stderr
    entries = layers(work / "added.tar")[-1][1]
    assert (entries["x/added"].uid, entries["x/added"].gid,
            stat.S_IMODE(entries["x/added"].mode)) == (1000, 1001, 0o4750)
    assert "x/zero" not in entries
    (ctx / "Dockerfile").write_text("FROM far\nRUN true\n")
    far = rootless_user.pybk(
        "build", "--progress", "plain", "--build-context", f"far=oci-layout://{work / 'far'}",
        str(ctx))
    assert far.returncode != 0
    assert "layer entry 'far': owner 100000:5 is outside the ids this rootless pybk maps " \
           "(0-65536)" in far.stderr, far.stderr
    (ctx / "Dockerfile").write_text("FROM base\nCOPY --chown=100000:100000 Dockerfile /x\n")
    chown = rootless_user.pybk(
        "build", "--progress", "plain", "--build-context", f"base=oci-layout://{work / 'base'}",
        str(ctx))
    assert chown.returncode == 1
    assert "failed to chown /x to 100000:100000: outside the ids this rootless pybk maps " \
           "(0-65536)" in chown.stderr, chown.stderr


def _user_daemon(user, cwd: Path, sock: Path, env: dict[str, str],
                 *args: str) -> subprocess.Popen:
    """``pybkd ARGS`` started as the user; returned once ``sock`` (the user's) is there."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pybk.core.cli.daemon", *args], cwd=cwd, env=env,
        user=user.uid, group=user.gid, extra_groups=[],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            stop_process(daemon)
            pytest.fail(f"pybkd did not start: {daemon.stderr.read().decode()}")  # type: ignore[union-attr]
        time.sleep(0.05)
    assert os.stat(sock).st_uid == user.uid
    return daemon


def test_rootless_pybkd_runs_the_build(rootless_user, user_busybox):
    work, _ = owners_context(rootless_user, user_busybox)
    run = work / "run"
    run.mkdir()
    rootless_user.give(run)
    sock = run / "pybkd.sock"
    daemon = _user_daemon(rootless_user, work, sock, rootless_user.env(),
                          "--root", str(work / "dstore"), "--addr", f"unix://{sock}")
    try:
        done = rootless_user.pybk("--addr", f"unix://{sock}", *build_args(
            user_busybox, work, "-o", f"type=oci,dest={work / 'image.tar'}"))
        assert done.returncode == 0, done.stderr
        f, _ = last_entry(layers(work / "image.tar"), "f")
        assert (f.uid, f.gid, stat.S_IMODE(f.mode)) == (42, 43, 0o4644)
        st = os.stat(work / "dstore")
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (rootless_user.uid, 0o700)
    finally:
        assert stop_process(daemon) == 0


@pytest.mark.slow
def test_every_exporter_and_a_local_cache(rootless_user, user_busybox, registry):
    work, _ = owners_context(rootless_user, user_busybox)
    out = work / "out"
    out.mkdir()
    rootless_user.give(out)
    name = f"{registry.host}/rootless/app:1"
    done = rootless_user.pybk("--root", str(work / "store"), *build_args(
        user_busybox, work, "-o", f"type=local,dest={out / 'local'}",
        "-o", f"type=tar,dest={out / 'fs.tar'}", "-o", f"type=oci,dest={out / 'oci.tar'}",
        "-o", f"type=docker,dest={out / 'docker.tar'},name=rootless/app:1",
        "-o", f"type=image,name={name},push=true,registry.insecure=true",
        "--cache-to", f"type=local,dest={work / 'cache'},mode=max"))
    assert done.returncode == 0, done.stderr
    st = os.stat(out / "local" / "f")
    assert stat.S_IMODE(st.st_mode) == 0o4644
    with tarfile.open(out / "fs.tar") as t:
        f = t.getmember("f")
        assert (f.uid, f.gid, stat.S_IMODE(f.mode)) == (42, 43, 0o4644)
    with tarfile.open(out / "docker.tar") as t:
        manifest = json.loads(blob_of(t, "manifest.json"))
        assert manifest[0]["RepoTags"] == ["rootless/app:1"]
    from support.busybox import skopeo_inspect

    pushed = skopeo_inspect(name)
    assert pushed["Layers"] == [d for d, _, _ in layers(out / "oci.tar")]
    fresh = rootless_user.pybk("--root", str(work / "fresh"), *build_args(
        user_busybox, work, "--cache-from", f"type=local,src={work / 'cache'}",
        "-o", f"type=oci,dest={out / 'again.tar'}"))
    assert fresh.returncode == 0, fresh.stderr
    runs = [line for line in fresh.stderr.splitlines() if "] RUN " in line]
    assert runs and fresh.stderr.count("CACHED") >= 6, fresh.stderr
    assert [d for d, _, _ in layers(out / "again.tar")] == pushed["Layers"]


@pytest.mark.parametrize("mode", ["bridge", "auto"])
def test_rootless_steps_get_slirp4netns(rootless_user, user_busybox, mode):
    """``bridge`` (and ``auto``, slirp4netns being usable) as the user: each RUN step in a
    namespace of its own behind slirp4netns — reaching a server in the test's namespace, not
    the host's loopback, resolving through 10.0.2.3 — and ``--network=none`` with lo only."""
    from support.slirpnet import check_build_network

    work = rootless_user.workdir()
    config = work / "buildkitd.toml"
    config.write_text(f'[worker.oci]\ngc = false\nnetworkMode = "{mode}"\n')
    os.chown(config, rootless_user.uid, rootless_user.gid)
    store = work / "store"

    def run_build(context, out):
        done = rootless_user.pybk("--root", str(store), "build", "--progress", "plain",
                                  "--build-context", f"busybox=oci-layout://{user_busybox}",
                                  "-o", f"type=local,dest={out}", str(context),
                                  PYBK_CONFIG=str(config))
        assert "Traceback" not in done.stderr, done.stderr
        assert "WARNING: networkMode auto" not in done.stderr, done.stderr
        if done.returncode != 0:
            print(done.stderr)
        return done.returncode

    check_build_network(work, run_build, resolv=True)


@pytest.mark.parametrize("backend", ["registry", "s3", "azblob", "gha"])
def test_remote_caches_as_the_user(rootless_user, user_busybox, registry, request, backend):
    """A remote cache written by a rootless build fills a fresh rootless store: every step
    cached, the same layers (owners inside the sub-range kept through the cache)."""
    import uuid

    work, _ = owners_context(rootless_user, user_busybox)
    if backend == "registry":
        ref = f"{registry.host}/rootless/cache:1"
        attrs = f"type=registry,ref={ref},registry.insecure=true"
    elif backend == "s3":
        s3 = request.getfixturevalue("moto_s3")
        attrs = "type=s3," + ",".join(f"{k}={v}" for k, v in s3.attrs(name="rootless").items())
    elif backend == "azblob":
        from support.azurite import ACCOUNT_KEY, ACCOUNT_NAME

        az = request.getfixturevalue("cache_azurite")
        attrs = (f"type=azblob,account_url={az.blob_endpoint},account_name={ACCOUNT_NAME},"
                 f"secret_access_key={ACCOUNT_KEY},container=c{uuid.uuid4().hex[:12]}")
    else:
        gha = request.getfixturevalue("cache_gha")
        attrs = f"type=gha,url={gha.url},token={gha.mint_token()},scope=s{uuid.uuid4().hex[:8]}"
    to, source = f"{attrs},mode=max", attrs
    first = rootless_user.pybk("--root", str(work / "one"), *build_args(
        user_busybox, work, "--cache-to", to, "-o", f"type=oci,dest={work / 'one.tar'}"))
    assert first.returncode == 0, first.stderr
    fresh = rootless_user.pybk("--root", str(work / "two"), *build_args(
        user_busybox, work, "--cache-from", source, "-o", f"type=oci,dest={work / 'two.tar'}"))
    assert fresh.returncode == 0, fresh.stderr
    steps = [line for line in fresh.stderr.splitlines() if re.search(r"#\d+ \[.*\] (RUN|COPY)",
                                                                     line)]
    cached = {line.split()[0] for line in fresh.stderr.splitlines() if line.endswith("CACHED")}
    assert steps and {line.split()[0] for line in steps} <= cached, fresh.stderr
    assert [d for d, _, _ in layers(work / "two.tar")] == \
        [d for d, _, _ in layers(work / "one.tar")]
    f, _ = last_entry(layers(work / "two.tar"), "f")
    assert (f.uid, f.gid, stat.S_IMODE(f.mode)) == (42, 43, 0o4644)


def test_rootless_pybkd_defaults_to_the_users_xdg_places(rootless_user, user_busybox):
    """A pybkd the user starts with no flags: its store in $XDG_DATA_HOME/pybk, its socket in
    $XDG_RUNTIME_DIR/pybk/pybkd.sock, the config of $XDG_CONFIG_HOME/pybk/buildkitd.toml; a
    build through that socket."""
    work, _ = owners_context(rootless_user, user_busybox)
    runtime, data, config = work / "xdg-run", work / "xdg-data", work / "xdg-config"
    for path in (runtime, data, config / "pybk"):
        path.mkdir(parents=True)
    (config / "pybk" / "buildkitd.toml").write_text('[worker.oci]\ngc = false\n'
                                                    'networkMode = "none"\n')
    os.chmod(runtime, 0o700)
    rootless_user.give(work)
    env = {"XDG_RUNTIME_DIR": str(runtime), "XDG_DATA_HOME": str(data),
           "XDG_CONFIG_HOME": str(config)}
    base = rootless_user.env(**env)
    base.pop("PYBK_CONFIG")
    sock = runtime / "pybk" / "pybkd.sock"
    daemon = _user_daemon(rootless_user, work, sock, base)
    try:
        done = rootless_user.command(
            [sys.executable, "-m", "pybk.core.cli.entry", "--addr", f"unix://{sock}",
             *build_args(user_busybox, work, "-o", f"type=oci,dest={work / 'image.tar'}")],
            **env, PYBK_CONFIG="")
        assert done.returncode == 0, done.stderr
        store = data / "pybk"
        st = os.stat(store)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (rootless_user.uid, 0o700)
        assert any((store / "history").iterdir())  # the daemon's store ran the build
    finally:
        assert stop_process(daemon) == 0
