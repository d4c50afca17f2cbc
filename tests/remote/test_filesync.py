"""The remote context sync, client side wired to daemon side in-process (the real code of both).

Proves: the daemon's copy is what ``sync_local`` makes of the same directory (names, kinds,
modes, sizes, contents, symlink targets, mtimes, hardlinks, owners) with the same counts; only
changed files are asked for, in one request, and only their bytes cross; excluded directories
are never read; malicious file lists and streams are refused with nothing written outside the
destination; the file server sends nothing it did not list.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from pybk.core.errors import BuildError, InputError
from pybk.core.fs.localsync import SyncStats, sync_local
from pybk.core.remote.filesync import CHUNK_SIZE, FileServer, apply_tree, stat_tree

T0 = 1_600_000_000 * 10**9


def make_tree(root: Path, spec: dict[str, object]) -> Path:
    """``"a/b": b"data"`` (file), ``"d/": None`` (dir), ``"l": ("->", "target")`` (symlink),
    ``"f": (b"data", 0o755)`` (file with a mode); files get fixed, distinct mtimes."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (rel, value) in enumerate(spec.items()):
        path = root / rel.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
        elif isinstance(value, tuple) and value[0] == "->":
            os.symlink(value[1], path)
        else:
            data, mode = value if isinstance(value, tuple) else (value, 0o644)
            path.write_bytes(data)
            path.chmod(mode)
            os.utime(path, ns=(T0, T0 + i))
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """``rel -> (kind, mode, size, mtime_ns, content or target, other names of the inode,
    uid, gid)`` of every entry under ``root`` (the root itself as ``"."``)."""
    by_inode: dict[int, list[str]] = {}
    out: dict[str, tuple] = {}
    st = os.lstat(root)
    out["."] = ("d", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, None, (), st.st_uid, st.st_gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                kind, data = "l", os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, data = "d", None
            elif not stat.S_ISREG(st.st_mode):
                continue  # fifos, sockets: not transferred
            else:
                kind, data = "f", Path(path).read_bytes()
                if st.st_nlink > 1:
                    by_inode.setdefault(st.st_ino, []).append(rel)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_size if kind != "d" else 0,
                        st.st_mtime_ns, data, (st.st_ino,), st.st_uid, st.st_gid)
    for rel, entry in out.items():  # inode numbers differ between copies: the names sharing one
        names = by_inode.get(entry[5][0], []) if entry[5] else []
        out[rel] = (*entry[:5], tuple(sorted(n for n in names if n != rel)), *entry[6:])
    return out


def without_owners(snap: dict[str, tuple]) -> dict[str, tuple]:
    return {rel: entry[:6] for rel, entry in snap.items()}


class Remote:
    """A client directory and a daemon's copy of it, synced through a fake transport that
    records what the daemon asked for and what crossed (entries go through JSON)."""

    def __init__(self, src: Path, work: Path, **patterns):
        self.src = src
        self.dest = work / "remote-copy"
        self.state = work / "remote-state.json"
        self.patterns = patterns
        self.requests: list[list[str]] = []
        self.sent = 0

    def sync(self, on_copied=None) -> SyncStats:
        entries = json.loads(json.dumps(stat_tree(self.src, **self.patterns)))
        server = FileServer(self.src, entries)

        def fetch(rels: list[str]) -> Iterator[tuple[str, bytes]]:
            self.requests.append(list(rels))
            for rel, chunk in server.read(json.loads(json.dumps(rels))):
                self.sent += len(chunk)
                yield rel, chunk

        return apply_tree(self.dest, entries, fetch, state_file=self.state, on_copied=on_copied)


class Both:
    """``sync_local`` and the remote sync of one source, for comparing."""

    def __init__(self, src: Path, work: Path, include=(), exclude=(), follow=()):
        self.src = src
        self.local_dest = work / "local-copy"
        self.local_state = work / "local-state.json"
        self.patterns = dict(include_patterns=include, exclude_patterns=exclude,
                             follow_paths=follow)
        self.remote = Remote(src, work, include=include, exclude=exclude, follow=follow)

    def sync(self) -> SyncStats:
        local = sync_local(self.src, self.local_dest, state_file=self.local_state,
                           **self.patterns)
        remote = self.remote.sync()
        assert remote == local
        assert snapshot(self.remote.dest) == snapshot(self.local_dest)
        return remote


def rich_tree(root: Path) -> Path:
    make_tree(root, {
        "Dockerfile": b"FROM scratch\nCOPY . /\n",
        "bin/tool": (b"#!/bin/sh\necho hi\n", 0o755),
        "secret/key": (b"private\n", 0o600),
        "src/app/main.py": b"print('hi')\n" * 100,
        "src/app/lib/util.py": b"x = 1\n",
        "src/empty/": None,
        "big.bin": os.urandom(CHUNK_SIZE * 2 + 123),
        "empty.txt": b"",
        "link-rel": ("->", "src/app/main.py"),
        "src/app/link-up": ("->", "../../Dockerfile"),
        "link-abs": ("->", "/etc/passwd"),
        "dangling": ("->", "nowhere/at/all"),
        "logs/a.log": b"log\n",
        "node_modules/pkg/index.js": b"module.exports = 1\n",
    })
    os.link(root / "bin/tool", root / "src/tool-again")
    os.link(root / "bin/tool", root / "tool3")
    os.chmod(root / "secret", 0o750)
    os.mkfifo(root / "fifo")  # not transferred
    with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):  # path too long
        s.bind(str(root / "sock"))
    for path in (root / "src/app", root / "src"):
        os.utime(path, ns=(T0, T0 + 7))
    return root


# -- the same copy as sync_local ------------------------------------------------------------


@pytest.mark.parametrize("patterns", [
    {},
    {"exclude": ["node_modules", "*.log", "logs", "!logs/keep.log"]},
    {"include": ["src/**/*.py", "Dockerfile", "bin"]},
    {"follow": ["link-rel", "secret/key"]},
], ids=["all", "exclude", "include", "follow"])
def test_the_copy_is_the_one_sync_local_makes_through_changes(tmp_path, patterns):
    src = rich_tree(tmp_path / "src")
    both = Both(src, tmp_path, **patterns)

    first = both.sync()
    assert first.copied > 0 and first.unchanged == 0
    listed = {e[0] for e in stat_tree(src, **patterns)}
    assert set(snapshot(both.remote.dest)) == listed
    if not patterns:
        assert first.bytes_copied == sum(os.lstat(p).st_size for p in (
            src / "Dockerfile", src / "bin/tool", src / "secret/key", src / "src/app/main.py",
            src / "src/app/lib/util.py", src / "big.bin", src / "logs/a.log",
            src / "node_modules/pkg/index.js"))  # hardlinks once, symlinks not counted
        assert both.remote.sent == first.bytes_copied
        assert len(both.remote.requests) == 1
        assert without_owners(snapshot(both.remote.dest)) == without_owners(snapshot(src))

    requests = len(both.remote.requests)
    second = both.sync()
    assert (second.copied, second.removed, second.bytes_copied) == (0, 0, 0)
    assert second.unchanged == first.copied
    assert len(both.remote.requests) == requests  # nothing asked for

    # changes of every sort
    (src / "src/app/main.py").write_bytes(b"print('changed')\n")
    os.unlink(src / "empty.txt")
    os.unlink(src / "Dockerfile")
    (src / "Dockerfile").mkdir()  # a file becomes a directory
    (src / "Dockerfile/inner").write_bytes(b"now a dir")
    shutil.rmtree(src / "src/app/lib")
    (src / "src/app/lib").write_bytes(b"now a file")  # and a directory a file
    os.unlink(src / "link-rel")
    os.symlink("big.bin", src / "link-rel")  # retargeted
    os.chmod(src / "secret/key", 0o640)
    os.link(src / "big.bin", src / "big-again.bin")  # a new link to an unchanged file
    with open(src / "tool3", "r+b") as f:  # in place: all three names change
        f.write(b"#!/bin/bash")
    third = both.sync()
    assert third.copied > 0 and third.removed > 0
    if not patterns:
        assert without_owners(snapshot(both.remote.dest)) == without_owners(snapshot(src))
    assert both.sync().copied == 0


def test_owners_are_root_and_set_id_bits_kept(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("owners and set-id bits need root")
    src = make_tree(tmp_path / "src", {"suid": (b"x", 0o4755), "sgid-dir/f": b"f",
                                       "l": ("->", "suid")})
    os.chmod(src / "sgid-dir", 0o2775)
    os.chown(src / "suid", 1000, 1000)
    os.chmod(src / "suid", 0o4755)  # after the chown, which clears it
    os.lchown(src / "l", 1000, 1000)
    both = Both(src, tmp_path)
    both.sync()
    snap = snapshot(both.remote.dest)
    assert {(e[6], e[7]) for e in snap.values()} == {(0, 0)}
    assert snap["suid"][1] == 0o4755 and snap["sgid-dir"][1] == 0o2775


def test_on_copied_names_each_file_made(tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a", "d/b": b"b", "l": ("->", "a")})
    os.link(src / "a", src / "d/c")
    remote = Remote(src, tmp_path)
    copied: list[str] = []
    remote.sync(on_copied=copied.append)
    assert sorted(copied) == ["a", "d/b", "d/c"]


class _SortedScandir:
    """``os.scandir`` giving its entries sorted by name (or reversed), to choose which name of
    a hardlinked file the walk meets first."""

    def __init__(self, real, path, reverse: bool):
        with real(path) as it:
            self._entries = iter(sorted(it, key=lambda e: e.name, reverse=reverse))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)


@pytest.mark.parametrize("reverse", [False, True], ids=["new-name-first", "old-name-first"])
def test_a_link_made_later_is_mirrored_whichever_name_comes_first(tmp_path, monkeypatch,
                                                                  reverse):
    src = make_tree(tmp_path / "src", {"b-old": b"shared\n", "c-solo": b"solo\n"})
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": _SortedScandir(real, path, reverse))
    both = Both(src, tmp_path)
    both.sync()
    os.link(src / "b-old", src / "a-new")
    both.sync()
    assert snapshot(both.remote.dest)["a-new"][5] == ("b-old",)
    # the first name goes: the other keeps its content (nothing is fetched)
    os.unlink(src / ("a-new" if not reverse else "b-old"))
    requests = len(both.remote.requests)
    stats = both.sync()
    assert (stats.copied, stats.removed, stats.bytes_copied) == (0, 1, 0)
    assert len(both.remote.requests) == requests


# -- only what changed crosses --------------------------------------------------------------


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    """2,000 files in 40 directories."""
    root = tmp_path_factory.mktemp("ctx") / "src"
    for d in range(40):
        sub = root / f"pkg{d:02d}" / "mod"
        sub.mkdir(parents=True)
        for f in range(50):
            p = sub / f"file{f:02d}.txt"
            p.write_bytes(f"{d}-{f}\n".encode() * (f + 1))
            os.utime(p, ns=(T0, T0 + f))
    return root


def test_one_changed_line_in_2000_files_fetches_that_file_only(tmp_path, big_tree):
    src = tmp_path / "src"
    shutil.copytree(big_tree, src, symlinks=True)
    remote = Remote(src, tmp_path)
    first = remote.sync()
    assert (first.copied, first.removed, first.unchanged) == (2000, 0, 0)
    assert len(remote.requests) == 1 and len(remote.requests[0]) == 2000

    sent = remote.sent
    second = remote.sync()
    assert (second.copied, second.unchanged, second.bytes_copied) == (0, 2000, 0)
    assert len(remote.requests) == 1 and remote.sent == sent  # fetch not even called

    changed = src / "pkg07/mod/file03.txt"
    changed.write_bytes(changed.read_bytes().replace(b"7-3\n", b"7-3 changed\n", 1))
    third = remote.sync()
    assert (third.copied, third.unchanged) == (1, 1999)
    assert remote.requests[-1] == ["pkg07/mod/file03.txt"]
    assert third.bytes_copied == remote.sent - sent == changed.stat().st_size
    assert (remote.dest / "pkg07/mod/file03.txt").read_bytes() == changed.read_bytes()
    assert without_owners(snapshot(remote.dest)) == without_owners(snapshot(src))


def test_deletions_and_type_changes_are_mirrored(tmp_path):
    src = make_tree(tmp_path / "src", {"a/b/c.txt": b"c", "x": b"file", "gone/deep/f": b"f",
                                       "s": ("->", "x"), "keep": b"k"})
    both = Both(src, tmp_path)
    both.sync()
    os.unlink(src / "x")
    (src / "x").mkdir()
    (src / "x/inner").write_bytes(b"now a dir")
    shutil.rmtree(src / "a/b")
    (src / "a/b").write_bytes(b"now a file")
    shutil.rmtree(src / "gone")
    os.unlink(src / "s")
    (src / "s").mkdir()  # a symlink becomes a directory
    stats = both.sync()
    assert stats.removed == 2  # a/b/c.txt and gone/deep/f (x and s are replaced)
    assert sorted(snapshot(both.remote.dest)) == [".", "a", "a/b", "keep", "s", "x", "x/inner"]


# -- what is read on the client -------------------------------------------------------------


def test_excluded_files_are_never_read(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", {
        "keep/a.txt": b"a", "node_modules/big/x.js": b"x", "build/out.o": b"o",
        "build/keep.me": b"k", "notes.log": b"l",
    })
    os.chmod(src / "node_modules", 0)  # unreadable (when not root)
    listed: list[str] = []
    opened: list[str] = []
    real_scandir, real_open = os.scandir, os.open

    def scandir(path="."):
        listed.append(os.path.relpath(os.fspath(path), src))
        return real_scandir(path)

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        opened.append(os.fspath(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", open_)
    remote = Remote(src, tmp_path, exclude=["node_modules", "*.log", "build", "!build/keep.me"])
    stats = remote.sync()
    assert not {"node_modules", "node_modules/big"} & set(listed)
    assert "build" in listed  # a re-included file inside keeps it walkable
    assert sorted(snapshot(remote.dest)) == [".", "build", "build/keep.me", "keep",
                                              "keep/a.txt"]
    assert stats.copied == 2
    assert remote.requests == [["build/keep.me", "keep/a.txt"]]
    assert not {"x.js", "out.o", "notes.log", "node_modules", "big"} & set(opened)
    os.chmod(src / "node_modules", 0o755)


def test_follow_paths_list_the_symlink_hops_only(tmp_path):
    src = make_tree(tmp_path / "src", {
        "build/Dockerfile.real": b"FROM scratch", "Dockerfile": ("->", "build/Dockerfile.real"),
        "other": b"not needed", "build/unrelated": b"no",
    })
    entries = stat_tree(src, follow=["Dockerfile"])
    assert sorted(e[0] for e in entries) == [".", "Dockerfile", "build", "build/Dockerfile.real"]
    Both(src, tmp_path, follow=["Dockerfile"]).sync()


def test_the_file_server_sends_only_what_it_listed(tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a", "d/b": b"b", "l": ("->", "a"), "e/": None,
                                       "unlisted.txt": b"u"})
    make_tree(tmp_path / "outside", {"secret.txt": b"do not send"})
    entries = [e for e in stat_tree(src) if e[0] != "unlisted.txt"]
    server = FileServer(src, entries)
    assert list(server.read(["a", "d/b"])) == [("a", b"a"), ("d/b", b"b")]
    for bad in ("unlisted.txt", "../outside/secret.txt", str(tmp_path / "outside/secret.txt"),
                "l", "d", "e", ".", "", "d/../a", None):
        with pytest.raises(BuildError, match="refusing"):
            list(server.read([bad]))

    # a listed file whose directory became a symlink since the listing
    shutil.rmtree(src / "d")
    os.mkdir(tmp_path / "outside/d")
    (tmp_path / "outside/d/b").write_bytes(b"b")
    os.symlink(tmp_path / "outside/d", src / "d")
    with pytest.raises(BuildError, match="refusing.*symlink"):
        list(server.read(["d/b"]))
    # a listed file replaced by a symlink
    os.unlink(src / "a")
    os.symlink(tmp_path / "outside/secret.txt", src / "a")
    with pytest.raises(BuildError, match="refusing.*symlink"):
        list(server.read(["a"]))


def test_the_file_server_chunks_and_notices_changed_sizes(tmp_path):
    src = make_tree(tmp_path / "src", {"big": b"x" * (CHUNK_SIZE * 2 + 5), "empty": b"",
                                       "grows": b"12"})
    server = FileServer(src, stat_tree(src))
    chunks = list(server.read(["big", "empty"]))
    assert [(r, len(c)) for r, c in chunks] == [("big", CHUNK_SIZE), ("big", CHUNK_SIZE),
                                                ("big", 5), ("empty", 0)]
    (src / "grows").write_bytes(b"123")
    with pytest.raises(BuildError, match="changed while"):
        list(server.read(["grows"]))
    (src / "grows").write_bytes(b"1")
    with pytest.raises(BuildError, match="changed while"):
        list(server.read(["grows"]))


# -- untrusted file lists and streams -------------------------------------------------------


def _root(mtime: int = T0) -> list:
    return [".", "d", 0o755, 0, mtime, "", ""]


def _file(rel: str, size: int = 1, group: str = "") -> list:
    return [rel, "f", 0o644, size, T0, "", group]


def _dir(rel: str) -> list:
    return [rel, "d", 0o755, 0, T0, "", ""]


def _serve(files: dict[str, bytes]):
    def fetch(rels: list[str]) -> Iterator[tuple[str, bytes]]:
        for rel in rels:
            yield rel, files.get(rel, b"x")
    return fetch


def _outside(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "outside", {"secret.txt": b"do not touch", "etc/passwd": b"host\n",
                                            "etc/group": b"host\n"})


BAD_LISTS = {
    "absolute": [_root(), _file("/etc/passwd")],
    "dotdot": [_root(), _file("../outside/secret.txt")],
    "inner dotdot": [_root(), _dir("a"), _file("a/../../outside/secret.txt")],
    "dot": [_root(), _file("./a")],
    "empty name": [_root(), _file("")],
    "empty component": [_root(), _dir("a"), _file("a//b")],
    "trailing slash": [_root(), _dir("a/")],
    "nul": [_root(), _file("a\0b")],
    "duplicate": [_root(), _file("a"), _file("a")],
    "dir and file": [_root(), _dir("a"), _file("a")],
    "no parent": [_root(), _file("a/b")],
    "parent after": [_root(), _file("a/b"), _dir("a")],
    "parent is a file": [_root(), _file("a"), _file("a/b")],
    "parent is a symlink": [_root(), ["a", "l", 0o777, 4, T0, "/etc", ""], _file("a/passwd")],
    "unknown kind": [_root(), ["dev", "c", 0o644, 0, T0, "", ""]],
    "mode too big": [_root(), ["a", "f", 0o100644, 1, T0, "", ""]],
    "negative size": [_root(), _file("a", -1)],
    "bool size": [_root(), ["a", "f", 0o644, True, T0, "", ""]],
    "float mtime": [_root(), ["a", "f", 0o644, 1, 1.5, "", ""]],
    "string mode": [_root(), ["a", "f", "0644", 1, T0, "", ""]],
    "symlink without target": [_root(), ["a", "l", 0o777, 0, T0, "", ""]],
    "file with target": [_root(), ["a", "f", 0o644, 1, T0, "/etc/passwd", ""]],
    "group outside": [_root(), _file("a", group="../outside/secret.txt")],
    "group not listed": [_root(), _file("a", group="b")],
    "group listed later": [_root(), _file("a", group="b"), _file("b", group="b")],
    "group is a follower": [_root(), _file("b", group="b"), _file("c", group="b"),
                            _file("a", group="c")],
    "group is a dir": [_root(), _dir("d"), _file("a", group="d")],
    "group on a symlink": [_root(), ["a", "l", 0o777, 1, T0, "x", "a"]],
    "short entry": [_root(), ["a", "f", 0o644, 1, T0]],
    "no root": [_file("a")],
    "root not first": [_file("a"), _root()],
    "second root": [_root(), _root()],
    "empty": [],
    "not a list": {"a": 1},
}


@pytest.mark.parametrize("name", list(BAD_LISTS))
def test_malicious_file_lists_are_refused_before_anything_is_written(tmp_path, name):
    outside = _outside(tmp_path)
    before = snapshot(outside)
    dest = tmp_path / "dest"
    asked: list = []

    def fetch(rels):
        asked.append(rels)
        return iter(())

    with pytest.raises(InputError):
        apply_tree(dest, BAD_LISTS[name], fetch, state_file=tmp_path / "state")
    assert not dest.exists() and not asked
    assert snapshot(outside) == before


def test_a_symlink_made_by_one_sync_is_never_written_through_by_the_next(tmp_path):
    outside = _outside(tmp_path)
    before = snapshot(outside)
    dest, state = tmp_path / "dest", tmp_path / "state"
    links = [_root(T0), ["etc", "l", 0o777, 1, T0, str(outside / "etc"), ""],
             ["x", "l", 0o777, 1, T0, str(outside / "secret.txt"), ""]]
    apply_tree(dest, links, _serve({}), state_file=state)
    assert os.readlink(dest / "etc") == str(outside / "etc")

    # the symlinks become a directory with a passwd file, and a file
    files = [_root(T0 + 1), _dir("etc"), _file("etc/passwd", 7), _file("x", 5)]
    stats = apply_tree(dest, files, _serve({"etc/passwd": b"inside\n", "x": b"mine\n"}),
                       state_file=state)
    assert stats.copied == 2
    assert snapshot(outside) == before
    assert (dest / "etc/passwd").read_bytes() == b"inside\n" and not (dest / "etc").is_symlink()
    assert (dest / "x").read_bytes() == b"mine\n" and not (dest / "x").is_symlink()


def test_a_destination_changed_behind_the_syncs_back_is_not_written_through(tmp_path):
    """The state says ``etc`` is a directory; something replaced it by a symlink: a sync
    writing into it, removing from it or setting its mtime refuses and forgets its state, and
    the next one copies everything again."""
    outside = _outside(tmp_path)
    before = snapshot(outside)
    dest, state = tmp_path / "dest", tmp_path / "state"
    files = {"etc/passwd": b"one", "etc/group": b"grp"}
    entries = [_root(), _dir("etc"), _file("etc/passwd", 3), _file("etc/group", 3)]
    changed_file = [*entries[:2], [*entries[2][:4], T0 + 1, "", ""], entries[3]]
    removed_file = entries[:3]
    changed_dir = [entries[0], [*entries[1][:4], T0 + 1, "", ""], *entries[2:]]
    for attempt in (changed_file, removed_file, changed_dir):
        apply_tree(dest, entries, _serve(files), state_file=state)
        shutil.rmtree(dest / "etc")
        os.symlink(outside / "etc", dest / "etc")
        with pytest.raises(BuildError, match="not a directory in the copy"):
            apply_tree(dest, attempt, _serve(files), state_file=state)
        assert snapshot(outside) == before
        assert not state.exists()
        stats = apply_tree(dest, attempt, _serve(files), state_file=state)
        assert stats.copied == len(attempt) - 2  # everything again
        assert not (dest / "etc").is_symlink()
        assert sorted(snapshot(dest)) == sorted(e[0] for e in attempt)
    assert snapshot(outside) == before


BAD_STREAMS = {
    "short": lambda rels: iter([("a", b"ab")]),
    "long": lambda rels: iter([("a", b"abcd")]),
    "long in chunks": lambda rels: iter([("a", b"ab"), ("a", b"cd")]),
    "not asked for": lambda rels: iter([("a", b"abc"), ("../outside/secret.txt", b"x")]),
    "twice": lambda rels: iter([("a", b"abc"), ("b", b""), ("a", b"abc")]),
    "missing": lambda rels: iter([("a", b"abc")]),
    "not bytes": lambda rels: iter([("a", "abc")]),
    "not a pair": lambda rels: iter([("a", b"abc", 1)]),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_a_stream_not_matching_the_list_is_an_error(tmp_path, name):
    outside = _outside(tmp_path)
    before = snapshot(outside)
    dest, state = tmp_path / "dest", tmp_path / "state"
    entries = [_root(), _file("a", 3), _file("b", 0)]
    with pytest.raises(InputError):
        apply_tree(dest, entries, BAD_STREAMS[name], state_file=state)
    assert snapshot(outside) == before
    assert not [n for n in os.listdir(dest) if n.startswith(".pybk-sync-")]
    # the next sync (with a well-behaved client) makes a complete copy
    stats = apply_tree(dest, entries, _serve({"a": b"abc", "b": b""}), state_file=state)
    assert (dest / "a").read_bytes() == b"abc" and (dest / "b").read_bytes() == b""
    assert stats.unchanged + stats.copied == 2


def test_files_a_failed_sync_wrote_are_fetched_again_even_when_listed_as_before(tmp_path):
    """The client lists ``a`` as the sync before saw it, but a failed sync since wrote a newer
    ``a`` (and the client then went back): the state marks it dirty, so it is fetched."""
    dest, state = tmp_path / "dest", tmp_path / "state"
    before = [_root(), _file("a", 3), _file("b", 3), _file("c", 3)]
    apply_tree(dest, before, _serve({"a": b"one", "b": b"bbb", "c": b"ccc"}), state_file=state)
    newer = [_root(), [*before[1][:4], T0 + 5, "", ""], [*before[2][:4], T0 + 5, "", ""],
             [*before[3][:4], T0 + 5, "", ""]]

    def cut(rels):
        assert rels == ["a", "b", "c"]
        yield "a", b"two"
        yield "b", b"B"
        raise ConnectionResetError("the client went away")

    with pytest.raises(BuildError, match="went away"):
        apply_tree(dest, newer, cut, state_file=state)
    assert (dest / "a").read_bytes() == b"two" and (dest / "b").read_bytes() == b"bbb"
    asked: list[list[str]] = []

    def fetch(rels):
        asked.append(rels)
        return _serve({"a": b"one", "b": b"bbb", "c": b"ccc"})(rels)

    stats = apply_tree(dest, before, fetch, state_file=state)
    assert asked == [["a", "b"]]  # c was not reached: its copy is still the one listed
    assert (stats.copied, stats.unchanged) == (2, 1)
    assert [(dest / n).read_bytes() for n in "abc"] == [b"one", b"bbb", b"ccc"]


def test_a_transfer_cut_half_way_is_finished_by_the_next_sync(tmp_path, big_tree):
    src = tmp_path / "src"
    shutil.copytree(big_tree, src)
    both = Both(src, tmp_path)
    both.sync()
    for d in range(0, 40, 4):
        (src / f"pkg{d:02d}/mod/file10.txt").write_bytes(b"new content\n")
    shutil.rmtree(src / "pkg39")

    entries = stat_tree(src)
    server = FileServer(src, entries)

    def cut(rels: list[str]) -> Iterable[tuple[str, bytes]]:
        for i, item in enumerate(server.read(rels)):
            if i == 4:
                raise ConnectionResetError("the client went away")
            yield item

    with pytest.raises(BuildError, match="went away"):
        apply_tree(both.remote.dest, entries, cut, state_file=both.remote.state)
    stats = both.sync()  # identical to sync_local's copy again
    assert (stats.copied, stats.removed) == (10, 50)
    assert sorted(both.remote.requests[-1]) == [f"pkg{d:02d}/mod/file10.txt"
                                                for d in range(0, 40, 4)]
