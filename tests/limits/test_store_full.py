"""The store's database on a full disk: a transaction that cannot be written fails with a
clear :class:`~pybk.core.store.db.StoreFullError`, runs none of the work waiting for its commit,
and the database works again once there is space."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from pybk.core.store.db import StoreDB, StoreFullError


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 MiB tmpfs, unmounted after."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root (mount) (CI=true: required)")
        pytest.skip("needs root (mount)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path):
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_full_disk_is_a_clear_error_and_nothing_half_done(tiny_disk):
    db = StoreDB(tiny_disk / "store")
    ran = []
    _fill(tiny_disk / "filler")
    with pytest.raises(StoreFullError) as caught, db.transaction() as conn:
        db.after_commit(lambda: ran.append("work"))
        for i in range(64):
            conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)",
                         (f"k{i}", "x" * (1 << 16)))
    assert str(caught.value) == (
        f"no space left on device: the store at {db.root} is full, its database cannot be "
        "written; free some space (pybk prune) and build again")
    assert caught.value.exit_code == 1
    assert ran == []
    os.unlink(tiny_disk / "filler")
    with db.transaction() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('after', 'ok')")
    assert db.query("SELECT value FROM meta WHERE key='after'") == [("ok",)]
    assert db.query("SELECT count(*) FROM meta WHERE key LIKE 'k%'") == [(0,)]
    assert ran == []  # the failed transaction's work never runs
