"""Fixtures for the store tests: a fresh store root per test, cleaned even after a failure;
``tree``/``write`` helpers (fixtures, since test modules here cannot import each other)."""

import os
import shutil
import stat

import pytest

from pybk.core.store.store import Store


@pytest.fixture
def store_root(tmp_path):
    root = tmp_path / "store"
    yield root
    from pybk.core.store.mounts import cleanup_stale_mounts

    cleanup_stale_mounts(str(root))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store(store_root):
    s = Store.open(store_root)
    yield s
    s.close()


def tree(root):
    """{relative path: (kind, mode, uid, gid, content or link target)} of a directory."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISDIR(st.st_mode):
                kind, data = "dir", None
            elif stat.S_ISLNK(st.st_mode):
                kind, data = "link", os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    kind, data = "file", f.read()
            elif stat.S_ISCHR(st.st_mode):
                kind, data = "chr", (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                kind, data = "other", None
            out[rel] = (kind, stat.S_IMODE(st.st_mode) if kind != "link" else None,
                        st.st_uid, st.st_gid, data)
    return out


def write(root, rel, data=b"", mode=0o644, uid=0, gid=0):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


@pytest.fixture(name="tree")
def tree_fixture():
    return tree


@pytest.fixture(name="write")
def write_fixture():
    return write
