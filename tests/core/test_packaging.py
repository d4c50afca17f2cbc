"""The distribution: the repo root installs as ``pybk``; no top-level ``core`` ever exists."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("rich", "lark", "fsspec", "httpx", "s3fs", "adlfs")


@pytest.mark.slow
def test_editable_install_in_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-e", str(REPO)], check=True, cwd=tmp_path)
    ok = subprocess.run([py, "-c", "import pybk.core, sys; print(pybk.core.__file__)"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()) == REPO / "core" / "__init__.py"
    for name in ("core", "workers", "exporters", "frontends", "cachebackends"):
        bad = subprocess.run([py, "-c", f"import {name}"], capture_output=True, text=True,
                             cwd=tmp_path)
        assert bad.returncode != 0 and "ModuleNotFoundError" in bad.stderr, name
    plugins = subprocess.run([str(venv / "bin" / "pybk"), "plugins"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert plugins.returncode == 0 and "dockerfile.v0" in plugins.stdout


@pytest.mark.slow
def test_wheel_layout(tmp_path):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "tests", "build", "*.egg-info", "__pycache__", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(source)], check=True,
                   cwd=tmp_path)
    wheel = next(tmp_path.glob("pybk-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pybk/plugins.toml" in names
    assert "pybk/core/__init__.py" in names and "pybk/core/llb/state.py" in names
    assert "pybk/frontends/dockerfile/grammar/dockerfile.lark" in names
    top = {n.split("/")[0] for n in names}
    assert top <= {"pybk", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert not any(n.startswith("pybk/tests/") for n in names)


def test_every_package_folder_is_listed():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {"pybk"}
    for init in REPO.rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts and rel.parts[0] not in ("tests", "build", "bench", "examples", "docs"):
            found.add(".".join(("pybk", *rel.parts)))
    assert found == listed


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["build", "--help"]])
def test_startup_imports_stay_light(args):
    code = ("import sys\nfrom pybk.core.cli.commands import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
