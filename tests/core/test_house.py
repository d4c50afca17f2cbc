"""The shape of the code base: modules a reader can hold in their head."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("core", "frontends", "workers", "exporters", "cachebackends")
MAX_LINES = 800


def _modules():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_small_enough(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"


def test_every_package_is_packaged():
    """Each source folder with modules is listed in pyproject.toml's packages."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    folders = {path.parent for path in _modules()}
    for folder in folders:
        name = ".".join(("pybk", *folder.relative_to(ROOT).parts))
        assert name in listed, f"{name} is missing from pyproject.toml's packages"
