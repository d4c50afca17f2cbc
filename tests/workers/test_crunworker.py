"""A third-party worker: tests/plugins/pybk-crunworker pip-installed in a throwaway venv runs
a real ``pybk build``'s RUN steps in crun, and ``pybk debug workers`` lists it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.rootfs import busybox_available

REPO = Path(__file__).resolve().parents[2]
CRUNWORKER = REPO / "tests" / "plugins" / "pybk-crunworker"
CRUN = "/usr/bin/crun"
LABEL = "io.github.pybk-crunworker.runtime"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runtimes, mounts)"),
    pytest.mark.skipif(not os.path.exists(CRUN), reason="crun is not installed"),
    pytest.mark.skipif(not shutil.which("runc"), reason="runc is not installed"),
]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv seeing pybk (system site-packages, PYTHONPATH) with pybk-crunworker installed;
    the venv goes with the test's temporary directory."""
    venv = tmp_path_factory.mktemp("crun-venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(CRUNWORKER)], check=True)
    yield py
    subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "pybk-crunworker"],
                   check=False)


@pytest.fixture
def runtimes(tmp_path):
    """``crun`` and ``runc`` on $PATH that record each call (one line of arguments in
    ``crun.log`` / ``runc.log``) and run the real runtime."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, real in (("crun", CRUN), ("runc", shutil.which("runc"))):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / (name + ".log")}\n'
                           f'exec {real} "$@"\n')
        wrapper.chmod(0o755)
    return tmp_path


def _run(py: Path, runtimes: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYBK_HOST", "PYBK_ROOT", "PYBK_DISABLE_PLUGIN_AUTOLOAD",
                        "PYBK_PLUGINS", "PYBK_DISABLED_PLUGINS")}
    env["PATH"] = f"{runtimes / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run([str(py), "-m", "pybk.core.cli.commands", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _log(runtimes: Path, name: str) -> list[str]:
    path = runtimes / f"{name}.log"
    return path.read_text().splitlines() if path.exists() else []


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "buildkitd.toml"
    path.write_text(f'[worker.oci]\ngc = false\nnetworkMode = "none"\n{extra}')
    return path


def _build(py, runtimes, tmp_path, config, busybox_layout, word):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(
        f"FROM busybox\nRUN echo {word} > /out.txt && cat /proc/self/cgroup > /dev/null\n")
    out = tmp_path / "out"
    done = _run(py, runtimes, "--root", str(tmp_path / "store"), "--config", str(config),
                "build", "--progress", "plain", "--build-context",
                f"busybox=oci-layout://{busybox_layout}", "-o", f"type=local,dest={out}",
                str(ctx))
    assert done.returncode == 0, done.stderr
    return out


def test_listed_and_selected(venv, runtimes, tmp_path):
    plugins = _run(venv, runtimes, "plugins")
    assert plugins.returncode == 0, plugins.stderr
    assert ["crun", "worker", "pybk-crunworker", "1.0.0"] in [
        line.split() for line in plugins.stdout.splitlines()]
    root = tmp_path / "store"
    both = _run(venv, runtimes, "--root", str(root), "--config", str(_config(tmp_path)),
                "debug", "workers")
    assert both.returncode == 0, both.stderr
    ids = [(root / "workers" / name / "workerid").read_text() for name in ("oci", "crun")]
    assert [line.split("\t")[0] for line in both.stdout.splitlines()[1:]] == ids
    only = _run(venv, runtimes, "--root", str(root), "--config",
                str(_config(tmp_path, "enabled = false\n")), "debug", "workers", "-v")
    assert only.returncode == 0, only.stderr
    assert only.stdout.startswith(f"ID:\t\t{ids[1]}\n")
    assert f"\t{LABEL}:\t" in only.stdout and only.stdout.count("ID:") == 1


def test_oci_disabled_build_runs_in_crun(venv, runtimes, tmp_path, busybox_layout):
    if not busybox_available():
        pytest.skip("busybox-static is not installed")
    config = _config(tmp_path, "enabled = false\n")
    out = _build(venv, runtimes, tmp_path, config, busybox_layout, "hello-from-crun")
    assert (out / "out.txt").read_text() == "hello-from-crun\n"
    runs = [line for line in _log(runtimes, "crun") if " run --bundle " in f" {line}"]
    assert len(runs) == 1
    assert f"--root {tmp_path / 'store' / 'executor-crun' / 'runc'} run" in runs[0]
    assert _log(runtimes, "runc") == []
    # crun's state directory is the worker's own; nothing is left running in it
    assert os.listdir(tmp_path / "store" / "executor-crun" / "runc") == []


def test_hook_selects_crun_next_to_oci(venv, runtimes, tmp_path, busybox_layout):
    if not busybox_available():
        pytest.skip("busybox-static is not installed")
    out = _build(venv, runtimes, tmp_path, _config(tmp_path), busybox_layout, "chosen")
    assert (out / "out.txt").read_text() == "chosen\n"
    assert any(" run --bundle " in f" {line}" for line in _log(runtimes, "crun"))
    assert _log(runtimes, "runc") == []
