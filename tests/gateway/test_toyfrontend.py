"""A pip-installed frontend plugin (tests/plugins/pybk-toyfrontend, in a throwaway venv) chosen by
``# syntax=toy`` and by ``--frontend toy``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

TOY = Path(__file__).resolve().parents[1] / "plugins" / "pybk-toyfrontend"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_venv(tmp_path_factory):
    """A venv seeing pybk (system site-packages) with pybk-toyfrontend pip-installed from a
    copy of its source (so no build files land in the repository)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (snapshot mounts)")
    base = tmp_path_factory.mktemp("toy")
    source = shutil.copytree(TOY, base / "src", ignore=shutil.ignore_patterns("build",
                                                                             "*.egg-info"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(source)], check=True)
    return py


def _pybk(py, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBK_")}
    return subprocess.run([str(py), "-m", "pybk.core.cli.commands", *args], capture_output=True,
                          text=True, env=env)


def _context(tmp_path, text, name="Dockerfile"):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / name).write_text(text)
    (ctx / "message.txt").write_text("copied by toy\n")
    return ctx


def _labels(tar_path):
    with tarfile.open(tar_path) as tar:
        def blob(digest):
            return json.load(tar.extractfile("blobs/sha256/" + digest.split(":")[1]))

        manifest = blob(json.load(tar.extractfile("index.json"))["manifests"][0]["digest"])
        return blob(manifest["config"]["digest"])["config"]["Labels"]


def test_toy_listed_as_a_frontend(toy_venv):
    out = _pybk(toy_venv, "plugins")
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("toy "))
    assert row[:4] == ["toy", "frontend", "pybk-toyfrontend", "1.0.0"]
    assert "gateway.v0" in out.stdout.split()


def test_syntax_directive_selects_the_plugin(toy_venv, tmp_path):
    ctx = _context(tmp_path, "# syntax=toy\nWRITE /hello.txt hi there\nCOPY message.txt\n")
    out, tar = tmp_path / "out", tmp_path / "image.tar"
    done = _pybk(toy_venv, "--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "-o", f"type=local,dest={out}", "-o", f"type=oci,dest={tar}", str(ctx))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["hello.txt", "message.txt"]
    assert (out / "hello.txt").read_text() == "hi there\n"
    assert (out / "message.txt").read_text() == "copied by toy\n"
    assert _labels(tar) == {"toy.lines": "2"}


def test_frontend_flag_selects_the_plugin(toy_venv, tmp_path):
    ctx = _context(tmp_path, "WRITE /a.txt from the flag\n", name="build.toy")
    out = tmp_path / "out"
    done = _pybk(toy_venv, "--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "--frontend", "toy", "-f", str(ctx / "build.toy"),
                 "-o", f"type=local,dest={out}", str(ctx))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    assert (out / "a.txt").read_text() == "from the flag\n"


def test_plugin_errors_are_located_and_named(toy_venv, tmp_path):
    ctx = _context(tmp_path, "# syntax=toy\nWRITE /ok.txt fine\nJUMP around\n")
    done = _pybk(toy_venv, "--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 str(ctx))
    assert done.returncode == 2
    assert "toy: cannot read 'JUMP around'" in done.stderr and "Dockerfile:3" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_syntax_without_plugin_is_a_gateway_image(toy_venv, tmp_path):
    """With the plugin blocked, ``# syntax=toy`` is an image reference (and it is not there)."""
    ctx = _context(tmp_path, "# syntax=toy\nWRITE /x y\n")
    config = tmp_path / "pybkd.toml"
    config.write_text('[frontend."gateway.v0"]\nallowedRepositories = ["example.com/fe"]\n')
    env_block = {"PYBK_DISABLED_PLUGINS": "toyfrontend"}
    done = subprocess.run(
        [str(toy_venv), "-m", "pybk.core.cli.commands", "--root", str(tmp_path / "store"),
         "--config", str(config), "build", "--progress", "quiet", str(ctx)],
        capture_output=True, text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYBK_")}, **env_block})
    assert done.returncode == 1
    assert "frontend image toy is not allowed" in done.stderr
