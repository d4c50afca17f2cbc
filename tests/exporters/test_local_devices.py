"""``-o type=local`` never drops the image's device nodes onto the host unless asked, and then
only with owner-only modes."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from pybk.core.cli.commands import main

DOCKERFILE = ("FROM busybox\n"
              "RUN mknod -m 666 /blk b 7 0 && mknod -m 666 /chr c 1 3 && echo ok > /ok\n")


@pytest.fixture
def store(tmp_path):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    return str(tmp_path / "store")


def _build(store, layout, tmp_path, output):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return main(["--root", store, "build", "--progress", "quiet", "--build-context",
                 f"busybox=oci-layout://{layout}", "-o", output, str(ctx)])


def test_device_nodes_are_skipped_by_default(store, busybox_layout, tmp_path, capsys):
    out = tmp_path / "out"
    assert _build(store, busybox_layout, tmp_path, f"type=local,dest={out}") == 0
    assert (out / "ok").read_text() == "ok\n"
    assert not os.path.lexists(out / "blk") and not os.path.lexists(out / "chr")
    err = capsys.readouterr().err
    assert "device node(s) not exported" in err and "/blk" in err and "/chr" in err


def test_devices_true_recreates_them_owner_only(store, busybox_layout, tmp_path):
    out = tmp_path / "out"
    assert _build(store, busybox_layout, tmp_path, f"type=local,dest={out},devices=true") == 0
    blk, chr_ = os.lstat(out / "blk"), os.lstat(out / "chr")
    assert stat.S_ISBLK(blk.st_mode) and stat.S_ISCHR(chr_.st_mode)
    assert os.major(blk.st_rdev) == 7 and os.minor(chr_.st_rdev) == 3
    assert stat.S_IMODE(blk.st_mode) & 0o077 == 0 and stat.S_IMODE(chr_.st_mode) & 0o077 == 0
    assert stat.S_IMODE(blk.st_mode) == 0o600


def test_devices_refuses_other_values(tmp_path, capsys):
    code = main(["--root", str(tmp_path / "store"), "build", "-o",
                 f"type=local,dest={tmp_path / 'out'},devices=maybe", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "devices" in err and "Traceback" not in err
