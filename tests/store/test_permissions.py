"""The store is its owner's alone: the root and every directory in it 0700, its files 0600,
whatever the umask; an existing store is tightened when opened; the root is only made
searchable (0711) while a daemon's socket in it is handed to other users."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pybk.core.store.db import LAYOUT
from pybk.core.store.store import Store

#: lists the store as another user would: every path given on stdin it can reach (stat)
PROBE = r"""
import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
for line in sys.stdin.read().splitlines():
    try:
        os.lstat(line)
        print(line)
    except OSError:
        pass
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    """Modes must not depend on the umask: run with the most permissive one."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def public_dir():
    """A directory every user may enter (tmp_path's parents are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="pybk-perm-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _top_level(root: Path) -> dict[str, int]:
    return {entry.name: _mode(entry) for entry in root.iterdir()}


def test_a_new_store_is_private_whatever_the_umask(open_umask, tmp_path):
    root = tmp_path / "new" / "store"
    with Store.open(root, snapshotter="native") as store:
        record = store.new_record()
        store.commit(record)
    assert _mode(root) == 0o700
    modes = _top_level(root)
    for sub in LAYOUT:
        assert modes.pop(sub) == 0o700, sub
    assert modes.pop("metadata.db") == 0o600
    assert set(modes.values()) <= {0o600}, modes  # -wal, -shm: the database's mode


def test_an_existing_store_is_tightened_when_opened(tmp_path):
    root = tmp_path / "store"
    Store.open(root, snapshotter="native").close()
    (root / "executor").mkdir()
    (root / "gc.stamp").write_text("0")
    for entry in [root, *root.iterdir()]:
        os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
    Store.open(root, snapshotter="native").close()
    assert _mode(root) == 0o700
    modes = _top_level(root)
    assert {name: mode for name, mode in modes.items() if (root / name).is_dir()} == {
        name: 0o700 for name in (*LAYOUT, "executor")}
    assert modes["metadata.db"] == modes["gc.stamp"] == 0o600


def test_no_path_of_a_store_is_reachable_by_another_user(open_umask, public_dir):
    """Even with every name known, another user reaches nothing below the root."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a probe running as another user")
    root = public_dir / "store"
    with Store.open(root, snapshotter="native") as store:
        record = store.new_record()
        layer = store.own_layer(record) or store.mounts(record)[0].source
        target = Path(layer) / "setuid-tool"
        target.write_bytes(b"#!/bin/sh\n")
        os.chmod(target, 0o4755)
        store.commit(record)
    paths = [str(p) for p in root.rglob("*")]
    assert any(p.endswith("setuid-tool") for p in paths)
    done = subprocess.run([sys.executable, "-c", PROBE], input="\n".join(paths), text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_the_root_is_searchable_only_while_a_daemon_socket_for_others_is_in_it(tmp_path):
    root = tmp_path / "store"
    Store.open(root, snapshotter="native").close()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "pybkd.sock"))
    try:
        Store.open(root, snapshotter="native").close()
        assert _mode(root) == 0o700  # the daemon's own user only: nobody else needs in
        os.chown(root / "pybkd.sock", -1, 4242)  # [grpc] gid = 4242
        Store.open(root, snapshotter="native").close()
        assert _mode(root) == 0o711
        assert {mode for name, mode in _top_level(root).items()
                if (root / name).is_dir()} == {0o700}
    finally:
        listener.close()
    (root / "pybkd.sock").unlink()
    Store.open(root, snapshotter="native").close()
    assert _mode(root) == 0o700
