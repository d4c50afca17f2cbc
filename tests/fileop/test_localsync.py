"""Incremental local-context sync: only changes are copied, excluded directories are not read."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.fs.localsync import SyncStats, sync_local

T1 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    """2,000 files in 40 directories (plus a few symlinks), with fixed mtimes."""
    root = tmp_path_factory.mktemp("ctx") / "src"
    for d in range(40):
        sub = root / f"pkg{d:02d}" / "mod"
        sub.mkdir(parents=True)
        for f in range(50):
            p = sub / f"file{f:02d}.txt"
            p.write_bytes(f"{d}-{f}\n".encode() * (f + 1))
            os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9 + f))
    os.chmod(root / "pkg00/mod/file00.txt", 0o755)
    os.symlink("pkg00/mod/file01.txt", root / "link")
    return root


def _mirror(tmp_path: Path, src: Path, **kw) -> tuple[Path, Callable[[], SyncStats]]:
    dest, state = tmp_path / "copy", tmp_path / "state.json"

    def sync() -> SyncStats:
        return sync_local(src, dest, state_file=state, **kw)

    return dest, sync


def _same(src: Path, dest: Path, trees) -> None:
    assert trees.describe(dest) == trees.describe(src)
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            s = os.lstat(os.path.join(dirpath, name))
            d = os.lstat(os.path.join(dest, os.path.relpath(dirpath, src), name))
            assert s.st_mtime_ns == d.st_mtime_ns, name
            if os.geteuid() == 0:
                assert (d.st_uid, d.st_gid) == (0, 0)


def test_sync_copies_only_changes(tmp_path, big_tree, trees):
    src = tmp_path / "src"
    shutil.copytree(big_tree, src, symlinks=True)
    dest, sync = _mirror(tmp_path, src)

    first = sync()
    assert (first.copied, first.removed, first.unchanged) == (2001, 0, 0)
    assert first.bytes_copied == sum(len(f"{d}-{f}\n") * (f + 1) for d in range(40)
                                     for f in range(50))
    _same(src, dest, trees)
    assert stat.S_IMODE(os.lstat(dest / "pkg00/mod/file00.txt").st_mode) == 0o755
    assert os.readlink(dest / "link") == "pkg00/mod/file01.txt"

    second = sync()
    assert (second.copied, second.removed, second.unchanged, second.bytes_copied) == (0, 0, 2001,
                                                                                    0)

    (src / "pkg07/mod/file03.txt").write_bytes(b"changed\n")
    third = sync()
    assert (third.copied, third.removed, third.unchanged) == (1, 0, 2000)
    assert (dest / "pkg07/mod/file03.txt").read_bytes() == b"changed\n"

    os.unlink(src / "pkg09/mod/file09.txt")
    fourth = sync()
    assert (fourth.copied, fourth.removed) == (0, 1)
    assert not (dest / "pkg09/mod/file09.txt").exists()
    _same(src, dest, trees)

    os.utime(src / "pkg01/mod/file01.txt", ns=(10**18, 10**18))  # an mtime-only touch is re-sent
    assert sync().copied == 1
    assert os.lstat(dest / "pkg01/mod/file01.txt").st_mtime_ns == 10**18


def test_warm_sync_of_2000_unchanged_files_is_fast(tmp_path, big_tree):
    dest, sync = _mirror(tmp_path, big_tree)
    sync()
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        stats = sync()
        timings.append(time.perf_counter() - start)
        assert stats.copied == 0 and stats.unchanged == 2001
    best = min(timings)
    print(f"warm sync of 2,001 unchanged entries: best {best * 1000:.1f} ms, "
          f"median {sorted(timings)[2] * 1000:.1f} ms")
    assert best < 0.1  # target 30 ms on an idle machine; the bound leaves room for shared CPUs


def test_structure_changes(tmp_path, trees):
    src = trees.make(tmp_path / "src", {"a/b/c.txt": b"c", "x": b"file", "gone/deep/f": b"f"})
    dest, sync = _mirror(tmp_path, src)
    sync()
    os.unlink(src / "x")
    (src / "x").mkdir()
    (src / "x" / "inner").write_bytes(b"now a dir")
    os.unlink(src / "a/b/c.txt")
    os.rmdir(src / "a/b")
    (src / "a/b").write_bytes(b"now a file")
    shutil.rmtree(src / "gone")
    stats = sync()
    assert stats.removed == 2  # a/b/c.txt and gone/deep/f
    _same(src, dest, trees)
    assert trees.describe(dest) == {"a": ("d", "0o755", None), "a/b": ("f", "0o644", b"now a file"),
                                    "x": ("d", "0o755", None),
                                    "x/inner": ("f", "0o644", b"now a dir")}


def test_excluded_directories_are_never_read(tmp_path, trees, monkeypatch):
    src = trees.make(tmp_path / "src", {
        "keep/a.txt": b"a", "node_modules/big/x.js": b"x", "build/out.o": b"o",
        "build/keep.me": b"k", "notes.log": b"l",
    })
    os.chmod(src / "node_modules", 0)
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path="."):
        listed.append(os.path.relpath(os.fspath(path), src))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    dest, sync = _mirror(tmp_path, src,
                         exclude_patterns=["node_modules", "*.log", "build", "!build/keep.me"])
    stats = sync()
    assert "node_modules" not in listed and "node_modules/big" not in listed
    assert "build" in listed  # a re-included file inside keeps it walkable
    assert sorted(trees.describe(dest)) == ["build", "build/keep.me", "keep", "keep/a.txt"]
    assert stats.copied == 2


def test_include_patterns_only_enter_directories_that_can_match(tmp_path, trees, monkeypatch):
    src = trees.make(tmp_path / "src", {
        "Dockerfile": b"FROM x", "src/app.py": b"p", "src/deep/mod.py": b"m", "src/x.txt": b"t",
        "docs/big/manual": b"m", "assets/img.png": b"i",
    })
    listed: list[str] = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (
        listed.append(os.path.relpath(os.fspath(p), src)), real_scandir(p))[1])
    dest, sync = _mirror(tmp_path, src, include_patterns=["src/**/*.py", "Dockerfile"])
    sync()
    assert sorted(trees.describe(dest)) == ["Dockerfile", "src", "src/app.py", "src/deep",
                                            "src/deep/mod.py"]
    assert not {"docs", "docs/big", "assets"} & set(listed)


def test_follow_paths(tmp_path, trees):
    src = trees.make(tmp_path / "src", {
        "build/Dockerfile.real": b"FROM scratch", "Dockerfile": ("->", "build/Dockerfile.real"),
        "other": b"not needed", "build/unrelated": b"no",
    })
    dest, sync = _mirror(tmp_path, src, follow_paths=["Dockerfile"])
    stats = sync()
    assert trees.describe(dest) == {
        "Dockerfile": ("l", None, "build/Dockerfile.real"),
        "build": ("d", "0o755", None),
        "build/Dockerfile.real": ("f", "0o644", b"FROM scratch"),
    }
    assert stats.copied == 2


def test_lost_state_starts_from_a_clean_copy(tmp_path, trees):
    src = trees.make(tmp_path / "src", {"a": b"a"})
    dest, sync = _mirror(tmp_path, src)
    sync()
    (dest / "stray").write_bytes(b"not from the source")
    os.unlink(tmp_path / "state.json")
    assert sync().copied == 1
    assert sorted(os.listdir(dest)) == ["a"]


def test_unchanged_files_keep_their_inode_changed_ones_are_replaced(tmp_path, trees):
    """Copies may hard-link synced files: a sync never writes into an existing file."""
    src = trees.make(tmp_path / "src", {"a": b"a", "b": b"b"})
    dest, sync = _mirror(tmp_path, src)
    sync()
    kept = os.open(dest / "b", os.O_RDONLY)
    try:
        before = {n: _inode(dest / n) for n in ("a", "b")}
        (src / "b").write_bytes(b"changed")
        sync()
        assert _inode(dest / "a") == before["a"] and _inode(dest / "b") != before["b"]
        assert os.pread(kept, 100, 0) == b"b"  # the old inode still has the old content
    finally:
        os.close(kept)


def _inode(path: Path) -> int:
    return os.lstat(path).st_ino


def test_hardlinks_are_kept_and_follow_later_changes(tmp_path, trees):
    src = trees.make(tmp_path / "src", {"a": (b"shared\n", 0o755), "sub/": None, "solo": b"s"})
    os.link(src / "a", src / "sub/b")
    os.link(src / "a", src / "c")
    dest, sync = _mirror(tmp_path, src)

    first = sync()
    assert (first.copied, first.bytes_copied) == (4, len(b"shared\n") + 1)
    _same(src, dest, trees)
    assert _inode(dest / "a") == _inode(dest / "sub/b") == _inode(dest / "c") != \
        _inode(dest / "solo")
    assert os.lstat(dest / "a").st_nlink == 3
    assert stat.S_IMODE(os.lstat(dest / "sub/b").st_mode) == 0o755
    assert sync().copied == 0

    # rewritten in place: every name of the inode changes, and they stay linked
    with open(src / "c", "r+b") as f:
        f.write(b"SHARED\n")
    sync()
    _same(src, dest, trees)
    assert (dest / "sub/b").read_bytes() == b"SHARED\n"
    assert _inode(dest / "a") == _inode(dest / "sub/b") == _inode(dest / "c")

    # a name replaced by a copy breaks its link; the others stay linked
    shutil.copy2(src / "a", src / "c.tmp")
    os.replace(src / "c.tmp", src / "c")
    (src / "a").write_bytes(b"changed through a\n")  # in place: a and sub/b only
    sync()
    _same(src, dest, trees)
    assert (dest / "c").read_bytes() == b"SHARED\n"
    assert _inode(dest / "a") == _inode(dest / "sub/b") != _inode(dest / "c")

    # a link made later to an unchanged file, and a link whose other name is deleted
    os.unlink(src / "solo")
    os.link(src / "c", src / "solo")
    os.unlink(src / "a")
    stats = sync()
    assert stats.removed == 1
    _same(src, dest, trees)
    assert _inode(dest / "solo") == _inode(dest / "c") != _inode(dest / "sub/b")
    assert os.lstat(dest / "sub/b").st_nlink == 1
    assert sync().copied == 0


def test_hardlinks_only_among_synced_entries(tmp_path, trees):
    src = trees.make(tmp_path / "src", {"keep/a": b"x", "skip/": None})
    os.link(src / "keep/a", src / "skip/b")
    os.link(src / "keep/a", src / "keep/c")
    dest, sync = _mirror(tmp_path, src, exclude_patterns=["skip"])
    sync()
    assert sorted(trees.describe(dest)) == ["keep", "keep/a", "keep/c"]
    assert os.lstat(dest / "keep/a").st_nlink == 2


def test_mtime_only_touch_of_the_context_keeps_its_checksum(tmp_path, trees):
    from pybk.core.fs.contenthash import ChecksumCache

    src = trees.make(tmp_path / "src", {"Dockerfile": b"FROM scratch\n", "app/main.py": b"1\n",
                                        "link": ("->", "app/main.py")})
    os.link(src / "app/main.py", src / "app/again.py")
    dest, sync = _mirror(tmp_path, src)
    cache = ChecksumCache(tmp_path / "sums")
    sync()
    before = cache.checksum(dest, "/")

    later = time.time_ns() + 5 * 10**9
    for path in (src / "app/main.py", src / "app", src / "Dockerfile", src):
        os.utime(path, ns=(later, later))
    assert sync().copied == 3  # Dockerfile, and main.py with its hardlink again.py
    assert os.lstat(dest / "app/main.py").st_mtime_ns == later
    assert cache.checksum(dest, "/") == before
    assert ChecksumCache(None).checksum(dest, "/") == before

    (src / "app/main.py").write_bytes(b"2\n")
    sync()
    assert cache.checksum(dest, "/") != before


def test_new_entries_are_made_in_place_and_leftovers_of_an_interrupted_sync_replaced(
        tmp_path, trees):
    """A name the last sync did not have is created directly (no temporary name); one already
    taken (by a sync that stopped before saving its state) is replaced like a changed entry."""
    src = trees.make(tmp_path / "src", {"a.txt": b"a\n", "tool": b"#!/bin/sh\n",
                                        "ln": ("->", "a.txt")})
    os.chmod(src / "tool", 0o750)
    os.link(src / "a.txt", src / "hard.txt")
    dest, sync = _mirror(tmp_path, src)
    made = []
    real_replace = os.replace
    import pybk.core.fs.localsync as localsync

    def replace(a, b):
        if os.path.basename(a).startswith(".pybk-sync-"):
            made.append(os.path.basename(b))
        return real_replace(a, b)

    localsync.os.replace, original = replace, localsync.os.replace
    try:
        assert sync().copied == 4
        assert made == []  # nothing through a temporary name
        _same(src, dest, trees)
        assert os.stat(dest / "tool").st_mode & 0o7777 == 0o750
        assert os.stat(dest / "a.txt").st_ino == os.stat(dest / "hard.txt").st_ino
        (src / "b.txt").write_text("new\n")
        (dest / "b.txt").write_text("left by a sync that was interrupted")
        assert sync().copied == 1
        assert made == ["b.txt"]
        _same(src, dest, trees)
        assert not [n for n in os.listdir(dest) if n.startswith(".pybk-sync-")]
    finally:
        localsync.os.replace = original


def test_a_directory_become_a_symlink_is_not_followed_by_the_sync(tmp_path, trees, outside):
    """``a/`` (with ``a/b``) becomes ``a -> <a directory outside>``: the stale ``a/b`` went
    with the old directory; nothing is removed from, or chmod-ed in, the symlink's target."""
    src = trees.make(tmp_path / "src", {"a/b": b"x", "a/passwd": b"y"})
    os.chmod(outside / "etc", 0o700)
    before = trees.describe(outside)
    dest, sync = _mirror(tmp_path, src)
    sync()
    shutil.rmtree(src / "a")
    os.symlink(outside / "etc", src / "a")
    stats = sync()
    assert (stats.copied, stats.removed) == (1, 2)
    assert trees.describe(outside) == before
    assert stat.S_IMODE(os.stat(outside / "etc").st_mode) == 0o700
    _same(src, dest, trees)


def test_a_failed_sync_is_finished_by_the_next(tmp_path, trees, monkeypatch):
    """A sync that fails part way saves what it touched as dirty: the next one makes those
    entries again, even when their source is back to what the sync before saw."""
    import pybk.core.fs.localsync as localsync

    src = trees.make(tmp_path / "src", {f"d{i}/f{j}": f"{i}{j}".encode() for i in range(3)
                                        for j in range(3)})
    dest, sync = _mirror(tmp_path, src)
    sync()
    originals = {i: os.lstat(src / f"d{i}/f1") for i in range(3)}
    for i in range(3):  # in place, same size: only the mtime tells
        (src / f"d{i}/f1").write_bytes(b"XX")
        os.utime(src / f"d{i}/f1", ns=(T1, T1))
    os.unlink(src / "d2/f2")
    real_copy = localsync.copy_fd_data
    calls = []

    def failing_copy(in_fd, out_fd):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_copy(in_fd, out_fd)

    monkeypatch.setattr(localsync, "copy_fd_data", failing_copy)
    with pytest.raises(BuildError, match="Input/output error"):
        sync()
    monkeypatch.setattr(localsync, "copy_fd_data", real_copy)
    made = [i for i in range(3) if (dest / f"d{i}/f1").read_bytes() == b"XX"]
    assert len(made) == 1  # one copied, the next failed, the third not reached
    for i, st in originals.items():  # back to what the first sync saw
        (src / f"d{i}/f1").write_bytes(f"{i}1".encode())
        os.utime(src / f"d{i}/f1", ns=(st.st_atime_ns, st.st_mtime_ns))
    stats = sync()
    assert (stats.copied, stats.removed) == (2, 1)  # the two the failed sync touched
    _same(src, dest, trees)
    assert not list(dest.rglob(".pybk-sync-*"))
