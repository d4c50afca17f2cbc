"""Content checksums: what changes them, what does not, and that unchanged files are not re-read."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.fs import contenthash
from pybk.core.fs.contenthash import ChecksumCache

OLD = time.time_ns() - 3600 * 10**9  # older than the cache's racy-timestamp window


def _age(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(OLD, OLD), follow_symlinks=False)


@pytest.fixture
def tree(tmp_path: Path, trees) -> Path:
    root = trees.make(tmp_path / "ctx", {
        "app/main.py": b"print(1)\n",
        "app/lib/util.py": b"x = 1\n",
        "app/readme.txt": b"hello\n",
        "data.bin": b"\x00" * 1000,
        "link": ("->", "app/main.py"),
    })
    _age(root)
    return root


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every file whose content the checksum cache reads."""
    seen: list[str] = []
    real = contenthash._file_digest

    def counting(path: str) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(contenthash, "_file_digest", counting)
    return seen


def test_same_content_same_checksum_anywhere(tmp_path, tree, trees):
    other = trees.make(tmp_path / "elsewhere", {
        "main.py": b"print(1)\n",
        "lib/util.py": b"x = 1\n",
        "readme.txt": b"hello\n",
    })
    cache = ChecksumCache(tmp_path / "cache")
    assert cache.checksum(tree, "/app").startswith("sha256:")
    assert cache.checksum(tree, "/app") == cache.checksum(other, "/")
    assert cache.checksum(tree, "app/main.py") == cache.checksum(other, "main.py")
    assert cache.checksum(tree, "/app") != cache.checksum(tree, "/")


def test_what_changes_a_checksum(tmp_path, tree):
    cache = ChecksumCache(tmp_path / "cache")
    base = cache.checksum(tree, "/")
    (tree / "app/main.py").write_bytes(b"print(2)\n")  # content
    changed_content = cache.checksum(tree, "/")
    assert changed_content != base
    os.chmod(tree / "app/main.py", 0o755)  # mode
    changed_mode = cache.checksum(tree, "/")
    assert changed_mode != changed_content
    os.rename(tree / "app/readme.txt", tree / "app/README.txt")  # a name
    renamed = cache.checksum(tree, "/")
    assert renamed != changed_mode
    os.unlink(tree / "link")
    os.symlink("app/lib", tree / "link")  # a symlink target
    assert cache.checksum(tree, "/") != renamed


def test_owner_changes_the_checksum(tmp_path, tree, root_only):
    cache = ChecksumCache(tmp_path / "cache")
    before = cache.checksum(tree, "/data.bin")
    os.chown(tree / "data.bin", 1234, 1234)
    assert cache.checksum(tree, "/data.bin") != before


def test_mtime_only_touch_keeps_the_checksum_and_reads_once(tmp_path, tree, reads):
    cache = ChecksumCache(tmp_path / "cache")
    before = cache.checksum(tree, "/")
    assert len(reads) == 4
    reads.clear()
    os.utime(tree / "app/main.py", ns=(OLD + 10**9, OLD + 10**9))
    assert cache.checksum(tree, "/") == before
    assert [os.path.basename(p) for p in reads] == ["main.py"]


def test_unchanged_files_are_never_read_again_even_by_a_new_process(tmp_path, tree, reads):
    before = ChecksumCache(tmp_path / "cache").checksum(tree, "/")
    assert len(reads) == 4
    reads.clear()
    fresh = ChecksumCache(tmp_path / "cache")  # a new instance loads the persisted table
    assert fresh.checksum(tree, "/") == before
    assert fresh.checksum(tree, "/app") and reads == []
    (tree / "app/readme.txt").write_bytes(b"changed\n")
    assert fresh.checksum(tree, "/") != before
    assert [os.path.basename(p) for p in reads] == ["readme.txt"]
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_freshly_written_files_are_rehashed_until_their_mtime_is_safely_old(tmp_path, reads,
                                                                              trees):
    root = trees.make(tmp_path / "new", {"f": b"one"})
    cache = ChecksumCache(None)
    first = cache.checksum(root, "/f")
    (root / "f").write_bytes(b"two")  # same size, maybe the same mtime tick
    assert cache.checksum(root, "/f") != first
    assert len(reads) == 2


def test_follow_symlinks(tmp_path, tree):
    cache = ChecksumCache(tmp_path / "cache")
    assert cache.checksum(tree, "/link", follow_symlinks=True) == cache.checksum(tree,
                                                                              "/app/main.py")
    assert cache.checksum(tree, "/link") != cache.checksum(tree, "/app/main.py")


def test_wildcards(tmp_path, tree):
    cache = ChecksumCache(tmp_path / "cache")
    both = cache.checksum(tree, "/app/*.*", wildcard=True)
    assert cache.checksum(tree, "/app/main.py", wildcard=True) == cache.checksum(tree,
                                                                              "/app/main.py")
    (tree / "app/new.cfg").write_bytes(b"")
    assert cache.checksum(tree, "/app/*.*", wildcard=True) != both
    assert cache.checksum(tree, "/none*", wildcard=True) == cache.checksum(tree, "/nada*",
                                                                           wildcard=True)


def test_missing_path(tmp_path, tree):
    with pytest.raises(BuildError, match=r'^"/app/nope.py": not found$'):
        ChecksumCache(tmp_path / "cache").checksum(tree, "app/nope.py")


def test_paths_stay_inside_the_root(tmp_path, tree, outside):
    os.symlink(str(outside / "secret.txt"), tree / "escape")
    cache = ChecksumCache(None)
    with pytest.raises(BuildError, match="not found"):
        cache.checksum(tree, "/escape", follow_symlinks=True)
    assert cache.checksum(tree, "/../../app") == cache.checksum(tree, "/app")


def test_include_and_exclude_patterns(tmp_path, tree, reads):
    cache = ChecksumCache(tmp_path / "cache")
    only_py = cache.checksum(tree, "/", include_patterns=["app/**/*.py"],
                             exclude_patterns=["app/lib"])
    (tree / "app/readme.txt").write_bytes(b"not selected\n")
    (tree / "app/lib/util.py").write_bytes(b"excluded\n")
    reads.clear()
    assert cache.checksum(tree, "/", include_patterns=["app/**/*.py"],
                          exclude_patterns=["app/lib"]) == only_py
    assert reads == []
    (tree / "app/main.py").write_bytes(b"selected\n")
    assert cache.checksum(tree, "/", include_patterns=["app/**/*.py"],
                          exclude_patterns=["app/lib"]) != only_py


def test_a_whole_tree_memo_answers_selectors_exactly_as_the_tree(tmp_path, tree, outside):
    """What a COPY's selector sums to, answered from the records of the whole-tree walk (no
    file touched), is what summing the path gives; anything the memo cannot tell is None."""
    os.symlink("app", tree / "dirlink")
    os.symlink("/app/lib", tree / "app" / "abs")
    os.symlink("../../..", tree / "app" / "up")
    cache = ChecksumCache(tmp_path / "cache")
    memo: dict = {}
    whole = cache.checksum(tree, "/", memo=memo)
    assert ChecksumCache.known(memo, "/") == whole
    paths = ["/", "app", "/app/", "app/main.py", "./app/../app/lib/util.py", "data.bin", "link",
             "dirlink", "dirlink/main.py", "app/abs/util.py", "app/up/data.bin", "missing",
             "app/missing", "app/main.py/x", "app/*.py", "app/[m]ain.py", "app\\*"]
    answered = 0
    for path in paths:
        for wildcard in (False, True):
            for follow in (False, True):
                for patterns in ({}, {"include_patterns": ["*.py"]}):
                    got = ChecksumCache.known(memo, path, wildcard=wildcard,
                                              follow_symlinks=follow, **patterns)
                    if got is None:
                        continue
                    answered += 1
                    assert got == ChecksumCache(None).checksum(
                        tree, path, wildcard=wildcard, follow_symlinks=follow, **patterns), path
    assert answered == 28  # 6 plain paths x 4, and both symlinks when not followed
    assert ChecksumCache.known(memo, "app/main.py") is not None
    assert ChecksumCache.known(memo, "link", follow_symlinks=True) is None
    assert ChecksumCache.known(memo, "dirlink/main.py") is None
    assert ChecksumCache.known(memo, "app/*.py", wildcard=True) is None
    assert ChecksumCache.known(memo, "missing") is None


def test_files_primed_while_a_sync_writes_them_are_not_read_again(tmp_path, tree, reads):
    """A sync hands each file it writes to prime() (from another thread): the tree's checksum
    afterwards reads no file, and is the one summing from scratch gives."""
    from concurrent.futures import ThreadPoolExecutor

    from pybk.core.fs.localsync import sync_local

    cache = ChecksumCache(tmp_path / "cache")
    dest = tmp_path / "copy"
    with ThreadPoolExecutor(1) as priming:
        stats = sync_local(tree, dest, state_file=tmp_path / "state",
                           on_copied=lambda rel: priming.submit(cache.prime, dest, rel))
    assert stats.copied == 5
    primed = sorted(reads)
    assert primed == sorted(str(dest / p) for p in ("app/main.py", "app/lib/util.py",
                                                    "app/readme.txt", "data.bin"))
    expected = ChecksumCache(None).checksum(tree, "/")
    reads.clear()
    assert cache.checksum(dest, "/") == expected
    assert reads == []
