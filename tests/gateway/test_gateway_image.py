"""``# syntax=<image>``: a frontend image built and pushed by pybk (busybox + a shell script
speaking the gateway protocol) runs in runc and builds an image; every way a frontend can
misbehave fails the build with its own message, within the timeout."""

from __future__ import annotations

import json
import tarfile
import time

import pytest

from pybk.core.cli.commands import main

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def _context(tmp_path, ref, greeting="hello from a shell frontend"):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"# syntax={ref}\nGREETING {greeting}\n")
    (ctx / "message.txt").write_text("read from the context\n")
    return ctx


def _build(capsys, root, *args, config=None):
    extra = ["--config", str(config)] if config else []
    code = main(["--root", root, *extra, "build", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _oci_config(tar_path):
    with tarfile.open(tar_path) as tar:
        def blob(digest):
            return json.load(tar.extractfile("blobs/sha256/" + digest.split(":")[1]))

        index = json.load(tar.extractfile("index.json"))
        manifest = blob(index["manifests"][0]["digest"])
        return blob(manifest["config"]["digest"])


def test_frontend_image_builds_with_nested_solve_and_context_read(
        gateway_root, shell_frontend_ref, tmp_path, capsys):
    ctx = _context(tmp_path, shell_frontend_ref)
    out, tar = tmp_path / "out", tmp_path / "image.tar"
    code, _, err = _build(capsys, gateway_root, "--progress", "plain",
                          "-o", f"type=local,dest={out}", "-o", f"type=oci,dest={tar}", str(ctx))
    assert code == 0, err
    assert (out / "greeting.txt").read_text() == (
        "hello from a shell frontend\nnested-ok\nread from the context\n")
    assert [p.name for p in out.iterdir()] == ["greeting.txt"]
    config = _oci_config(tar)
    assert config["config"]["Cmd"] == ["cat", "/greeting.txt"]
    assert config["config"]["Labels"] == {"built.by": "shell-frontend"}
    # the frontend's stderr is in the progress log, its warning is reported
    assert f"[frontend] {shell_frontend_ref}" in err
    assert "frontend: mode build" in err and "frontend: nested solve gave r1" in err
    assert "frontend: running as root on host pybk" in err  # in the container
    assert "WARNING: shell frontend says hi" in err


def test_buildkit_syntax_build_arg_wins(gateway_root, shell_frontend_ref, tmp_path, capsys):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("# syntax=docker/dockerfile:1\nGREETING via build arg\n")
    (ctx / "message.txt").write_text("m\n")
    out = tmp_path / "out"
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet",
                          "--build-arg", f"BUILDKIT_SYNTAX={shell_frontend_ref}",
                          "-o", f"type=local,dest={out}", str(ctx))
    assert code == 0, err
    assert (out / "greeting.txt").read_text() == "via build arg\nnested-ok\nm\n"


FAILURES = [
    ("hang", "timed out: it sent nothing for 2 s"),
    ("crash", "exited with code 3 without returning a result"),
    ("garbage", "wrote a line that is not JSON (line 1 of its output): 'this is not json'"),
    ("double", "returned more than once"),
    ("noreturn", "exited without returning a result"),
    ("error", "failed: no greeting here"),
]


@pytest.mark.parametrize(("mode", "message"), FAILURES, ids=[m for m, _ in FAILURES])
def test_misbehaving_frontend_fails_the_build(gateway_root, shell_frontend_ref, tmp_path,
                                              capsys, monkeypatch, mode, message):
    monkeypatch.setenv("PYBK_GATEWAY_TIMEOUT", "2")
    ctx = _context(tmp_path, shell_frontend_ref)
    started = time.monotonic()
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet", "--build-arg",
                          f"MODE={mode}", "-o", f"type=local,dest={tmp_path / 'out'}", str(ctx))
    elapsed = time.monotonic() - started
    assert code == 1
    assert f"frontend {shell_frontend_ref} {message}" in err
    assert "Traceback" not in err
    assert elapsed < 15
    assert not (tmp_path / "out").exists()
    if mode == "crash":
        assert "frontend: about to crash" in err  # its stderr explains the crash


def test_gateway_timeout_option_overrides_env(gateway_root, shell_frontend_ref, tmp_path,
                                              capsys, monkeypatch):
    monkeypatch.setenv("PYBK_GATEWAY_TIMEOUT", "300")
    ctx = _context(tmp_path, shell_frontend_ref)
    started = time.monotonic()
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet", "--build-arg",
                          "MODE=hang", "--opt", "gateway-timeout=1", str(ctx))
    assert code == 1 and "timed out: it sent nothing for 1 s" in err
    assert time.monotonic() - started < 10


def test_disallowed_repository_fails_before_pulling(gateway_root, registry, tmp_path, capsys):
    config = tmp_path / "pybkd.toml"
    config.write_text('[frontend."gateway.v0"]\n'
                      f'allowedRepositories = ["{registry.host}/frontends/trusted"]\n')
    ref = f"{registry.host}/frontends/untrusted:1"  # never pushed: no pull is attempted
    ctx = _context(tmp_path, ref)
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet", str(ctx), config=config)
    assert code == 1
    assert f"frontend image {ref} is not allowed" in err
    assert f"{registry.host}/frontends/trusted" in err


def test_allowed_repository_compares_names_without_tags(gateway_root, shell_frontend_ref,
                                                        tmp_path, capsys):
    repo = shell_frontend_ref.rsplit(":", 1)[0]
    config = tmp_path / "pybkd.toml"
    config.write_text(f'[frontend."gateway.v0"]\nallowedRepositories = ["{repo}:other-tag"]\n')
    out = tmp_path / "out"
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet", "-o",
                          f"type=local,dest={out}", str(_context(tmp_path, shell_frontend_ref)),
                          config=config)
    assert code == 0, err
    assert (out / "greeting.txt").read_text().startswith("hello from a shell frontend\n")


def test_network_label_needs_the_entitlement(gateway_root, registry, busybox_ref, tmp_path,
                                             capsys):
    from pybk.core import llb
    from pybk.core.engine.client import Client

    ref = f"{registry.host}/frontends/wants-network:1"
    config = {"config": {"Entrypoint": ["/bin/true"],
                         "Labels": {"moby.buildkit.frontend.network.none": "false"}}}
    with Client(root=gateway_root) as client:
        client.solve(llb.image(busybox_ref), progress=None, image_config=config,
                     outputs=[{"type": "image", "name": ref, "push": "true"}])
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet",
                          str(_context(tmp_path, ref)))
    assert code == 1
    assert "asks for the network" in err and "--allow network.host" in err


def _network_frontend(gateway_root, registry, busybox_ref):
    """The shell frontend, its image labelled as needing the network."""
    from support.gatewayimages import push_shell_frontend

    return push_shell_frontend(gateway_root, registry, busybox_ref, "shell-network", "false")


def test_network_frontend_needs_the_daemon_to_grant_it(gateway_root, registry, busybox_ref,
                                                       tmp_path, capsys):
    """``--allow network.host`` runs a frontend image on the host network only when the
    configuration's ``insecure-entitlements`` grants it."""
    ref = _network_frontend(gateway_root, registry, busybox_ref)
    ctx = _context(tmp_path, ref)
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet", "--allow",
                          "network.host", str(ctx))
    assert code == 2, err
    assert ("granting entitlement network.host is not allowed by build daemon configuration "
            "(add it to insecure-entitlements in buildkitd.toml)") in err
    assert "Traceback" not in err
    config = tmp_path / "pybkd.toml"
    config.write_text('insecure-entitlements = ["network.host"]\n[worker.oci]\ngc = false\n')
    out = tmp_path / "out"
    code, _, err = _build(capsys, gateway_root, "--progress", "quiet", "--allow",
                          "network.host", "-o", f"type=local,dest={out}", str(ctx),
                          config=config)
    assert code == 0, err
    assert (out / "greeting.txt").read_text().startswith("hello from a shell frontend\n")


def test_bridge_entitlements_are_checked_against_the_engine(gateway_root, registry,
                                                            busybox_ref, tmp_path):
    """A bridge cannot carry ``network.host`` unless the client's configuration grants it."""
    from pybk.core.config.schema import Config
    from pybk.core.engine.build import LocalBridge
    from pybk.core.engine.client import Client
    from pybk.core.errors import UsageError
    from pybk.core.interfaces import FrontendRequest
    from pybk.frontends.gateway.frontend import GatewayFrontend

    ref = _network_frontend(gateway_root, registry, busybox_ref)
    ctx = _context(tmp_path, ref)
    locals_ = {"context": str(ctx), "dockerfile": str(ctx)}
    request = FrontendRequest(opts={"source": ref, "filename": "Dockerfile"})
    with Client(root=gateway_root) as client, pytest.raises(
            UsageError, match="granting entitlement network.host is not allowed by build "
                              "daemon configuration"):
        LocalBridge(local_dirs=locals_, oci_layouts={}, config=Config(
            root=gateway_root, insecure_entitlements=["network.host"]), client=client,
            entitlements={"network.host"})
    config = Config(root=gateway_root, insecure_entitlements=["network.host"])
    with Client(root=gateway_root, config=config) as client:
        bridge = LocalBridge(local_dirs=locals_, oci_layouts={}, config=config, client=client,
                             entitlements={"network.host"})
        result = GatewayFrontend().solve(request, bridge)
    assert result.image_config["config"]["Labels"] == {"built.by": "shell-frontend"}
