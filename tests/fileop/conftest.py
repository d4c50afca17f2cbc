"""Helpers for the file-operation tests: build trees from dicts and describe trees as dicts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def make_tree(root: Path, spec: dict[str, object]) -> Path:
    """Create ``spec`` under ``root``: ``"a/b": b"data"`` (file), ``"d/": None`` (dir),
    ``"l": ("->", "target")`` (symlink), ``"f": (b"data", 0o755)`` (file with mode)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        path = root / rel.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
        elif isinstance(value, tuple) and value[0] == "->":
            os.symlink(value[1], path)
        elif isinstance(value, tuple):
            path.write_bytes(value[0])
            path.chmod(value[1])
        else:
            path.write_bytes(value if isinstance(value, bytes) else str(value).encode())
    return root


def describe(root: Path, *, owners: bool = False) -> dict[str, tuple]:
    """``rel -> (kind, mode, content-or-target[, uid, gid])`` for every entry under ``root``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                entry: tuple = ("l", None, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entry = ("d", oct(stat.S_IMODE(st.st_mode)), None)
            else:
                with open(path, "rb") as f:
                    entry = ("f", oct(stat.S_IMODE(st.st_mode)), f.read())
            if owners:
                entry = (*entry, st.st_uid, st.st_gid)
            out[rel] = entry
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the roots; tests assert that nothing in it ever changes."""
    d = make_tree(tmp_path / "outside", {"secret.txt": b"do not touch", "etc/passwd": b"host\n"})
    return d


class Trees:
    """``make_tree``/``describe`` as a fixture (test modules cannot import a conftest)."""

    make = staticmethod(make_tree)
    describe = staticmethod(describe)


@pytest.fixture
def trees() -> type[Trees]:
    return Trees


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing owners needs root")
