"""Two engines for the differential tests: BuildKit v0.8 inside dockerd 20.10 (pulling busybox
from the test registry) and pybk (busybox as the ``busybox`` named context), plus a snapshot of
what each built: the filesystem tree and the image config."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from pathlib import Path

import attrs
import pytest
from support.busybox import layout_manifest
from support.dockerd import DockerdUnavailable, start_dockerd
from support.engine import require_runc


@attrs.frozen
class Snapshot:
    """What one engine built: ``tree`` maps each path to its metadata, ``links`` holds the
    hardlink groups, ``config`` is the image config JSON."""

    tree: dict
    links: frozenset
    config: dict


def snapshot_tree(root: Path) -> tuple[dict, frozenset]:
    """``{"/path": (type, mode, uid, gid, symlink target | sha256 | rdev)}`` and the hardlink
    groups (sets of paths sharing an inode) of an exported filesystem. mtimes are left out."""
    tree: dict = {}
    inodes: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = "/" + str(path.relative_to(root))
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entry = ("symlink", mode, st.st_uid, st.st_gid, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entry = ("dir", mode, st.st_uid, st.st_gid, None)
            elif stat.S_ISREG(st.st_mode):
                entry = ("file", mode, st.st_uid, st.st_gid,
                         hashlib.sha256(path.read_bytes()).hexdigest())
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISFIFO(st.st_mode):
                entry = ("fifo", mode, st.st_uid, st.st_gid, None)
            else:
                entry = ("device", mode, st.st_uid, st.st_gid, st.st_rdev)
            tree[rel] = entry
    links = frozenset(frozenset(group) for group in inodes.values() if len(group) > 1)
    return tree, links


def snapshot_tar(path: Path) -> tuple[dict, frozenset]:
    """``snapshot_tree`` of a filesystem exported as a tarball (hardlinks are tar link
    entries). BuildKit's tar output keeps owners; its local output, written by the 20.10
    client, does not (every entry becomes 0:0), so BuildKit's trees are read from tarballs."""
    tree: dict = {}
    groups: dict = {}
    with tarfile.open(path) as tar:
        for info in tar:
            rel = "/" + info.name.strip("/")
            if rel == "/":
                continue
            owner = (stat.S_IMODE(info.mode), info.uid, info.gid)
            if info.issym():
                tree[rel] = ("symlink", *owner, info.linkname)
            elif info.isdir():
                tree[rel] = ("dir", *owner, None)
            elif info.islnk():
                first = "/" + info.linkname.strip("/")
                tree[rel] = tree[first]
                groups.setdefault(first, {first}).add(rel)
            elif info.isfile():
                data = tar.extractfile(info).read()
                tree[rel] = ("file", *owner, hashlib.sha256(data).hexdigest())
            elif info.isfifo():
                tree[rel] = ("fifo", *owner, None)
            else:
                tree[rel] = ("device", *owner, os.makedev(info.devmajor, info.devminor))
    return tree, frozenset(frozenset(group) for group in groups.values())


@pytest.fixture(scope="session")
def buildkit(registry, busybox_ref, tmp_path_factory):
    """A dockerd (BuildKit v0.8) that trusts the test registry over plain HTTP."""
    require_runc()
    try:
        daemon = start_dockerd(tmp_path_factory.mktemp("dockerd"),
                               insecure_registries=(registry.host,))
    except DockerdUnavailable as e:
        pytest.skip(f"BuildKit v0.8 (dockerd 20.10) is not available: {e}")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def buildkit_build(buildkit, busybox_ref, tmp_path_factory):
    """``buildkit_build(context, name, build_args, target, secrets) -> Snapshot``."""
    base = busybox_ref.rsplit(":", 1)[0]
    workdir = tmp_path_factory.mktemp("buildkit-out")

    def build(context: Path, name: str, build_args: dict, target: str | None,
              secrets: dict) -> Snapshot:
        args = ["build", "--network=none", "--progress=plain", "--build-arg", f"BASE={base}"]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        if target:
            args += ["--target", target]
        for key, data in secrets.items():
            src = workdir / f"{name}-secret-{key}"
            src.write_bytes(data)
            args += ["--secret", f"id={key},src={src}"]
        tag = f"pybk-diff/{name}:latest"
        buildkit.docker(*args, "-t", tag, str(context))
        exported = workdir / f"{name}.fs.tar"
        buildkit.docker(*args, "--output", f"type=tar,dest={exported}", str(context))
        saved = workdir / f"{name}.tar"
        buildkit.docker("save", "-o", str(saved), tag)
        with tarfile.open(saved) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            config = json.load(tar.extractfile(manifest[0]["Config"]))
        tree, links = snapshot_tar(exported)
        return Snapshot(tree, links, config)

    return build


@pytest.fixture(scope="session")
def pybk_build(busybox_layout, tmp_path_factory):
    """``pybk_build(context, name, build_args, target, secrets) -> Snapshot``: the
    dockerfile.v0 frontend through ``LocalBridge`` (what ``pybk build`` uses), with busybox
    as the named context ``busybox``."""
    require_runc()
    from pybk.core.engine.build import LocalBridge
    from pybk.core.engine.client import Client
    from pybk.core.interfaces import FrontendRequest
    from pybk.frontends.dockerfile.frontend import DockerfileFrontend

    digest = layout_manifest(busybox_layout)[0]["digest"]
    workdir = tmp_path_factory.mktemp("pybk-out")
    layouts = {"base": str(busybox_layout)}
    with Client(root=str(workdir / "store")) as client:

        def build(context: Path, name: str, build_args: dict, target: str | None,
                  secrets: dict) -> Snapshot:
            local_dirs = {"context": str(context), "dockerfile": str(context)}
            opts = {"filename": "Dockerfile", "context:busybox": f"oci-layout://base@{digest}",
                    "build-arg:BASE": "busybox",
                    **{f"build-arg:{k}": v for k, v in build_args.items()}}
            if target:
                opts["target"] = target
            bridge = LocalBridge(local_dirs=local_dirs, oci_layouts=layouts, config=None,
                                 client=client)
            answer = DockerfileFrontend().solve(FrontendRequest(opts=opts), bridge)
            result = client.solve(answer.definition, local_dirs=local_dirs, oci_layouts=layouts,
                                  secrets=secrets, image_config=answer.image_config,
                                  progress=None)
            out = workdir / name
            client.export_local(result, out)
            tree, links = snapshot_tree(out)
            return Snapshot(tree, links, dict(result.image_config))

        yield build
