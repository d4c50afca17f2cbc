"""``insecure-entitlements``: ``pybk build --allow X`` runs ``RUN --network=host`` /
``--security=insecure`` only when the configuration grants X, as BuildKit's daemon does; a
malformed entitlement (flag or config entry) is a usage error."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pybk.core.cli.commands import main

REFUSED = ("granting entitlement {} is not allowed by build daemon configuration "
           "(add it to insecure-entitlements in buildkitd.toml)")
HOST_NETWORK = "FROM busybox\nRUN --network=host ls /sys/class/net > /nets\n"
INSECURE = "FROM busybox\nRUN --security=insecure grep CapEff /proc/self/status > /caps\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    import shutil

    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    return str(tmp_path_factory.mktemp("entitlements-store"))


def _config(tmp_path: Path, *granted: str) -> Path:
    path = tmp_path / "buildkitd.toml"
    entries = ", ".join(f'"{g}"' for g in granted)
    path.write_text(f"insecure-entitlements = [{entries}]\n\n[worker.oci]\ngc = false\n")
    return path


def _build(capsys, root: str, tmp_path: Path, dockerfile: str, *flags: str,
           config: Path | None = None, busybox_layout: Path) -> tuple[int, str, Path]:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    out = tmp_path / "out"
    extra = ["--config", str(config)] if config else []
    code = main(["--root", root, *extra, "build", "--progress", "quiet", "--build-context",
                 f"busybox=oci-layout://{busybox_layout}", "-o", f"type=local,dest={out}",
                 *flags, str(ctx)])
    return code, capsys.readouterr().err, out


def _cap_eff(text: str) -> str:
    return re.search(r"CapEff:\s*([0-9a-f]+)", text).group(1)


def test_allow_without_a_granting_config_exits_2(root, tmp_path, capsys, busybox_layout):
    # $PYBK_CONFIG (tests/conftest.py) has no insecure-entitlements
    code, err, out = _build(capsys, root, tmp_path, HOST_NETWORK, "--allow", "network.host",
                            busybox_layout=busybox_layout)
    assert code == 2, err
    assert err == f"error: {REFUSED.format('network.host')}\n"
    assert not out.exists()


def test_granted_network_host_builds_on_the_host_network(root, tmp_path, capsys,
                                                         busybox_layout):
    config = _config(tmp_path, "network.host")
    code, err, out = _build(capsys, root, tmp_path, HOST_NETWORK, "--allow", "network.host",
                            config=config, busybox_layout=busybox_layout)
    assert code == 0, err
    assert set((out / "nets").read_text().split()) == set(os.listdir("/sys/class/net"))


def test_granted_security_insecure_builds_with_every_capability(root, tmp_path, capsys,
                                                               busybox_layout):
    code, err, _ = _build(capsys, root, tmp_path, INSECURE, "--allow", "security.insecure",
                          busybox_layout=busybox_layout)
    assert code == 2 and REFUSED.format("security.insecure") in err, err
    config = _config(tmp_path, "security.insecure")
    code, err, out = _build(capsys, root, tmp_path, INSECURE, "--allow", "security.insecure",
                            config=config, busybox_layout=busybox_layout)
    assert code == 0, err
    assert _cap_eff((out / "caps").read_text()) == _cap_eff(Path("/proc/self/status").read_text())


def test_granting_one_does_not_grant_the_other(root, tmp_path, capsys, busybox_layout):
    config = _config(tmp_path, "network.host")
    code, err, out = _build(capsys, root, tmp_path, INSECURE, "--allow", "network.host",
                            "--allow", "security.insecure", config=config,
                            busybox_layout=busybox_layout)
    assert code == 2, err
    assert REFUSED.format("security.insecure") in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["security.insecure=yes", "network.host=1", "network.everything"])
def test_malformed_allow_exits_2_naming_the_flag(root, tmp_path, capsys, busybox_layout, value):
    config = _config(tmp_path, "network.host", "security.insecure")
    code, err, _ = _build(capsys, root, tmp_path, HOST_NETWORK, "--allow", value,
                          config=config, busybox_layout=busybox_layout)
    assert code == 2, err
    assert err.startswith('error: --allow: ') and f'entitlement "{value}"' in err, err
    assert "Traceback" not in err


def test_malformed_config_entry_names_file_and_line(root, tmp_path, capsys, busybox_layout):
    config = tmp_path / "buildkitd.toml"
    config.write_text('root = "/unused"\ninsecure-entitlements = [\n  "network.host",\n'
                      '  "security.insecure=yes",\n]\n[worker.oci]\ngc = false\n')
    code, err, _ = _build(capsys, root, tmp_path, HOST_NETWORK, "--allow", "network.host",
                          config=config, busybox_layout=busybox_layout)
    assert code == 2, err
    assert (f'{config}:4: insecure-entitlements[1]: invalid entitlement '
            '"security.insecure=yes": security.insecure takes no value') in err
    assert "Traceback" not in err
