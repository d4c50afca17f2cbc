"""Behaviour of config keys no other test file covers: ``root`` (pybkd's store), ``[worker.oci]``
``platforms``, ``snapshotter`` and ``binary``, a gcpolicy's ``minFreeSpace``, ``[registry."host"]
http`` and ``[frontend."gateway.v0"] enabled``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.pybkd import CLIENT, client_env

from pybk.core.cli.commands import main
from pybk.core.config.loader import load_config_text


def test_root_is_the_daemons_store(tmp_path):
    """pybkd without ``--root`` keeps its store where ``root`` says."""
    store, sock = tmp_path / "from-config", tmp_path / "run" / "pybkd.sock"
    config = tmp_path / "pybkd.toml"
    config.write_text(f'root = "{store}"\n[worker.oci]\ngc = false\nnetworkMode = "none"\n')
    err = tmp_path / "pybkd.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "pybk.core.cli.daemon", "--config",
                                 str(config), "--addr", f"unix://{sock}"],
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                stdin=subprocess.DEVNULL, env=client_env())
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        done = subprocess.run([*CLIENT, "--addr", f"unix://{sock}", "debug", "workers"],
                              capture_output=True, text=True, env=client_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        worker_id = done.stdout.splitlines()[1].split("\t")[0]
        assert (store / "workers" / "oci" / "workerid").read_text() == worker_id
        assert (store / "metadata.db").is_file()
        assert f"(store {store}," in err.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_platforms_choose_the_worker_of_a_platform(tmp_path):
    """A worker lists its ``platforms``; a build for one of them is given to it (BuildKit
    does not refuse other platforms either: they build on the first worker)."""
    from pybk.core.engine.workers import select_worker
    from pybk.workers.plugin import OCIWorker

    def worker(text: str, name: str) -> OCIWorker:
        config, warnings = load_config_text(text)
        assert warnings == []
        return OCIWorker.from_config(config, root=str(tmp_path / name))

    amd = worker('[worker.oci]\nplatforms = ["linux/amd64"]\n', "amd")
    arm = worker('[worker.oci]\nplatforms = ["linux/arm64", "linux/arm/v7"]\n', "arm")
    assert arm.platforms() == ["linux/arm64", "linux/arm/v7"]
    assert select_worker([amd, arm], "linux/arm64") is arm
    assert select_worker([amd, arm], "linux/arm/v7") is arm
    assert select_worker([amd, arm], "linux/x86_64") is amd  # compared normalised
    assert select_worker([arm, amd], "linux/amd64") is amd
    assert select_worker([arm, amd], "linux/s390x") is arm  # listed nowhere: the first


def test_snapshotter_is_the_stores(tmp_path):
    from pybk.core.engine.client import Client

    for name in ("native", "overlayfs"):
        config, _ = load_config_text(f'[worker.oci]\nsnapshotter = "{name}"\n')
        client = Client(root=str(tmp_path / name), config=config)
        try:
            assert client.worker().store.snapshotter.name == name
        finally:
            client.close()


def test_binary_is_the_runtime_steps_run_in(tmp_path, busybox_layout, capsys):
    """``binary`` is the OCI runtime every RUN step is started with."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\ngc = false\nnetworkMode = "none"\n'
                      'binary = "/nonexistent/oci-runtime"\n')
    code = main(["--root", str(tmp_path / "store"), "--config", str(config), "build",
                 "--progress", "quiet", "--build-context",
                 f"busybox=oci-layout://{busybox_layout}", str(ctx)])
    err = capsys.readouterr().err
    assert code == 1
    assert "OCI runtime '/nonexistent/oci-runtime' not found" in err


def test_gcpolicy_min_free_space_is_a_prune_rule():
    from pybk.core.config.gc import PruneRule, gc_prune_rules

    config, _ = load_config_text('[[worker.oci.gcpolicy]]\nminFreeSpace = "2GB"\n'
                                 '[[worker.oci.gcpolicy]]\nall = true\nminFreeSpace = "10%"\n')
    assert gc_prune_rules(config.worker.oci, 100 * 10**9) == [
        PruneRule(min_free_space=2 * 2**30), PruneRule(all=True, min_free_space=10 * 10**9)]


def test_registry_http_is_plain_http(registry, busybox_ref, tmp_path, monkeypatch):
    """``http = true`` reaches a registry in plain HTTP; ``http = false`` insists on HTTPS even
    on a loopback address (which is plain HTTP by default)."""
    from pybk.core.errors import RegistryError
    from pybk.core.registry import client as client_module
    from pybk.core.store.content import ContentStore as Blobs

    async def pull(text: str, store: Path):
        config, _ = load_config_text(text)
        async with client_module.RegistryClient(dict(config.registry),
                                                Blobs(store), retries=0) as client:
            return await client.pull(busybox_ref)

    host = registry.host
    with pytest.raises(RegistryError, match=f"https://{host}"):
        asyncio.run(pull(f'[registry."{host}"]\nhttp = false\n', tmp_path / "s0"))
    monkeypatch.setattr(client_module, "_is_loopback", lambda host: False)  # as if remote
    with pytest.raises(RegistryError, match=f"https://{host}"):
        asyncio.run(pull("", tmp_path / "s1"))
    image = asyncio.run(pull(f'[registry."{host}"]\nhttp = true\n', tmp_path / "s2"))
    assert image.layers and Blobs(tmp_path / "s2").has(image.layers[0].digest)


def test_disabled_gateway_frontend_refuses_images(tmp_path, capsys):
    """``# syntax=`` naming a frontend image is refused before anything is pulled."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("# syntax=registry.invalid/frontends/mine:1\nFROM scratch\n")
    config = tmp_path / "buildkitd.toml"
    config.write_text('[frontend."gateway.v0"]\nenabled = false\n')
    code = main(["--root", str(tmp_path / "store"), "--config", str(config), "build",
                 "--print-llb", str(ctx)])
    err = capsys.readouterr().err
    assert code == 1  # refused by the daemon, as allowedRepositories refuses (a build error)
    assert ("frontend image registry.invalid/frontends/mine:1: the gateway.v0 frontend is "
            'disabled ([frontend."gateway.v0"] enabled = false)') in err
    assert not os.path.exists(tmp_path / "store" / "content" / "blobs")


def test_an_embedded_build_names_a_root_it_does_not_use(tmp_path, capsys):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /\n")
    config = tmp_path / "buildkitd.toml"
    config.write_text(f'root = "{tmp_path / "daemon-store"}"\n')
    store = tmp_path / "store"
    code = main(["--root", str(store), "--config", str(config), "build", "--print-llb",
                 str(ctx)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err == (f"WARNING: root: {tmp_path / 'daemon-store'} is pybkd's store (when started "
                   f"without --root); this build uses the store {store}\n")
    config.write_text(f'root = "{store}"\n')  # the same store: nothing to say
    assert main(["--root", str(store), "--config", str(config), "build", "--print-llb",
                 str(ctx)]) == 0
    assert capsys.readouterr().err == ""


def _oci_config_of(tar: Path) -> dict:
    import json
    import tarfile

    with tarfile.open(tar) as t:
        def blob(digest: str) -> dict:
            return json.loads(t.extractfile(f"blobs/sha256/{digest.split(':')[1]}").read())

        index = json.loads(t.extractfile("index.json").read())
        return blob(blob(index["manifests"][0]["digest"])["config"]["digest"])


def test_platforms_set_the_build_and_default_target_platform(tmp_path, capsys):
    """As BuildKit's Dockerfile frontend: the worker's first platform is ``BUILDPLATFORM`` and
    the target platform when ``--platform`` is not given."""
    from pybk.core.platform import host_platform

    other = "linux/arm64" if str(host_platform()) != "linux/arm64" else "linux/amd64"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nARG BUILDPLATFORM\nARG TARGETPLATFORM\n"
                                    "LABEL build=$BUILDPLATFORM target=$TARGETPLATFORM\n"
                                    "COPY Dockerfile /\n")
    config = tmp_path / "buildkitd.toml"

    def build(platforms: str, *flags: str) -> dict:
        config.write_text(f"[worker.oci]\nplatforms = {platforms}\n")
        tar = tmp_path / "image.tar"
        code = main(["--root", str(tmp_path / "store"), "--config", str(config), "build",
                     "--progress", "quiet", "-o", f"type=oci,dest={tar}", *flags, str(ctx)])
        assert code == 0, capsys.readouterr().err
        return _oci_config_of(tar)

    listed = build(f'["{other}", "{host_platform()}"]')
    assert f"{listed['os']}/{listed['architecture']}" == other
    assert listed["config"]["Labels"] == {"build": other, "target": other}
    asked = build(f'["{other}"]', "--platform", str(host_platform()))
    assert asked["config"]["Labels"] == {"build": other, "target": str(host_platform())}
    native = build(f'["{host_platform()}", "{other}"]')
    assert native["config"]["Labels"] == {"build": str(host_platform()),
                                          "target": str(host_platform())}
