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


#: modules the interpreter has loaded before any of pybk runs (or that cost nothing): importing
#: them inside a function saves no start-up time, so they are imported at the top
ALWAYS_LOADED = {"os", "os.path", "posixpath", "sys", "re", "errno", "stat", "time", "abc", "io",
                 "codecs", "functools", "itertools", "collections", "collections.abc",
                 "contextlib", "typing", "enum", "operator", "types", "warnings"}


def _function_imports(path):
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    yield from ((node.lineno, alias.name) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    yield node.lineno, node.module


def test_function_level_imports_are_for_start_up_cost():
    """An import inside a function defers a module that costs start-up time; one of a module
    that is always loaded has no reason to be there. (Circles hidden this way are caught by the
    import-linter contracts, which count function-level imports.)"""
    found = [f"{path.relative_to(ROOT)}:{line}: import {name}" for path in _modules()
             for line, name in _function_imports(path) if name in ALWAYS_LOADED]
    assert not found, "\n".join(found)
