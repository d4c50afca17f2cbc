"""Content checksums of paths in directory trees: what COPY/ADD cache keys are computed from.

A file's record is sha256 over its metadata (type, permission bits, uid, gid, symlink target,
device numbers) and its content; mtimes are left out, so a touch never changes a checksum. A
directory's record combines its own metadata with its children's names and records, sorted.
Content digests are kept per file in a persistent cache keyed by
``(dev, inode, size, mtime_ns, mode)``: a file whose stat did not change is never read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Sequence

from pybk.core.errors import BuildError
from pybk.core.fs.files import private_dir
from pybk.core.fs.pathfilter import PathFilter
from pybk.core.fs.rootpath import (
    clean_path,
    has_wildcards,
    norm_path,
    resolve_in_root,
    resolve_wildcards,
)

__all__ = ["CHECKSUM_FORMAT", "ChecksumCache", "Memo"]

#: entry path (relative, ``""`` for the root) → (is a symlink, hex record), see ``memo``
Memo = dict[str, tuple[bool, str]]

_EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()
_CACHE_VERSION = 1
#: the format of checksums (records and how they combine); a change must bump it, so that
#: checksums stored with it (the solver keeps those of immutable snapshots) are not reused
CHECKSUM_FORMAT = 1
#: a digest is trusted only for files whose mtime is this much older than when it was taken, so
#: a same-size rewrite within one timestamp tick of the hashing is never missed
_RACY_NS = 2_000_000_000


def _file_digest(host_path: str) -> str:
    """Hex sha256 of a regular file's content (read without following a final symlink)."""
    h = hashlib.sha256()
    fd = os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


class _RootCache:
    """The persistent per-root table ``relpath -> (dev, ino, size, mtime_ns, mode, sha256, at)``.

    ``at`` is when the digest was taken (see ``_RACY_NS``).
    """

    def __init__(self, path: str | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.seen: set[str] = set()
        self.dirty = False
        if path is None:
            return
        import orjson

        try:
            with open(path, "rb") as f:
                data = orjson.loads(f.read())
            if data.get("v") == _CACHE_VERSION:
                self.entries = data["files"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            self.entries = {}

    def content(self, rel: str, host: str, st: os.stat_result) -> str:
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode]
        self.seen.add(rel)
        cached = self.entries.get(rel)
        if cached is not None and cached[:5] == key and st.st_mtime_ns + _RACY_NS < cached[6]:
            return cached[5]
        taken_at = time.time_ns()
        digest = _file_digest(host)
        self.entries[rel] = [*key, digest, taken_at]
        self.dirty = True
        return digest

    def save(self, *, prune: bool = False) -> None:
        """Write the table if it changed; ``prune`` drops files not met since loading."""
        if prune and len(self.seen) < len(self.entries):
            self.entries = {k: v for k, v in self.entries.items() if k in self.seen}
            self.dirty = True
        if self.path is None or not self.dirty:
            return
        import orjson

        tmp = f"{self.path}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"v": _CACHE_VERSION, "files": self.entries}))
        os.replace(tmp, self.path)
        self.dirty = False


class ChecksumCache:
    """Content checksums (``sha256:<hex>``) of selectors in directory trees.

    ``cache_dir`` holds one small file per tree root (written atomically); ``None`` keeps the
    per-file cache in memory only.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None):
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            private_dir(self.cache_dir)  # the store's: nobody else's business
        self._roots: dict[str, _RootCache] = {}
        #: ``root`` as given → its real path (store directories do not move while in use;
        #: resolving them again for every selector of a build cost more than the checksums)
        self._real: dict[str, str] = {}

    def _realpath(self, root: str | os.PathLike[str]) -> str:
        given = os.fspath(root)
        real = self._real.get(given)
        if real is None:
            real = os.path.realpath(given)
            if os.path.isabs(given):
                if len(self._real) >= 4096:  # mount points come and go: stay small
                    self._real.clear()
                self._real[given] = real
        return real

    def _cache_file(self, root: str) -> str | None:
        if self.cache_dir is None:
            return None
        name = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return os.path.join(self.cache_dir, name + ".json")

    def _root_cache(self, root: str) -> _RootCache:
        cache = self._roots.get(root)
        if cache is None:
            cache = self._roots[root] = _RootCache(self._cache_file(root))
        return cache

    def forget(self, root: str | os.PathLike[str]) -> None:
        """Drop the cache of ``root`` (for a tree that is being deleted)."""
        self._real.pop(os.fspath(root), None)
        root = os.path.realpath(os.fspath(root))
        self._roots.pop(root, None)
        path = self._cache_file(root)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def prime(self, root: str | os.PathLike[str], rel: str) -> None:
        """Hash the content of the regular file ``rel`` of ``root`` now, as a checksum of the
        tree would (keyed by its stat, trusted under the same rule): a sync calls it for each
        file it writes, from another thread, so summing the tree afterwards reads nothing. Call
        it for one root from one thread at a time, and not while that root is summed."""
        root = self._realpath(root)
        host = os.path.join(root, rel)
        try:
            st = os.lstat(host)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self._root_cache(root).content(rel, host, st)

    def checksum(self, root: str | os.PathLike[str], path: str = "/", *, wildcard: bool = False,
                 follow_symlinks: bool = False, include_patterns: Sequence[str] = (),
                 exclude_patterns: Sequence[str] = (), memo: Memo | None = None) -> str:
        """The checksum of ``path`` inside ``root`` (resolved as if ``root`` were ``/``).

        ``wildcard``: ``path`` may hold Go ``filepath.Match`` wildcards; all matches are combined
        with their paths (no match gives the checksum of nothing). ``follow_symlinks``: a symlink
        named by ``path`` stands for its target. Include/exclude patterns are relative to
        ``path``, as for a copy. A missing path is a :class:`BuildError` ``"/p": not found``.
        ``memo``: filled with the record of every entry summed (without patterns), for
        :meth:`known` to answer selectors of the same, unchanged tree.
        """
        root = self._realpath(root)
        cache = self._root_cache(root)
        path_filter = PathFilter.create(include_patterns, exclude_patterns)
        try:
            if wildcard:
                matches = resolve_wildcards(root, clean_path(path))
                if len(matches) == 1 and matches[0] == norm_path(path):
                    result = self._selector(cache, root, matches[0], follow_symlinks, path_filter)
                elif not matches:
                    result = _EMPTY
                else:
                    h = hashlib.sha256()
                    for match in matches:
                        record = self._selector(cache, root, match, follow_symlinks, path_filter,
                                                missing_ok=True)
                        h.update(f"{match}\0{record}\n".encode("utf-8", "surrogateescape"))
                    result = "sha256:" + h.hexdigest()
            else:
                result = self._selector(cache, root, path, follow_symlinks, path_filter,
                                        memo=memo if path_filter is None else None)
        finally:
            whole_tree = not wildcard and path_filter is None and norm_path(path) == "/"
            cache.save(prune=whole_tree)
        return result

    @staticmethod
    def known(memo: Memo, path: str, *, wildcard: bool = False, follow_symlinks: bool = False,
              include_patterns: Sequence[str] = (),
              exclude_patterns: Sequence[str] = ()) -> str | None:
        """What :meth:`checksum` would answer for ``path`` in the tree a ``memo`` was filled
        from (a whole-tree checksum of a tree unchanged since), without touching the tree; None
        when the memo cannot tell (patterns, wildcards, a symlink on the way, a missing path):
        then ask :meth:`checksum`."""
        if include_patterns or exclude_patterns:
            return None
        comps = [c for c in norm_path(path).split("/") if c]
        if wildcard and any(has_wildcards(c) for c in comps):
            return None
        rel = ""
        for i, comp in enumerate(comps):
            rel = f"{rel}/{comp}" if rel else comp
            entry = memo.get(rel)
            if entry is None or (entry[0] and (follow_symlinks or i < len(comps) - 1)):
                return None
        entry = memo.get(rel)
        return None if entry is None else "sha256:" + entry[1]

    def _selector(self, cache: _RootCache, root: str, path: str, follow: bool,
                  path_filter: PathFilter | None, missing_ok: bool = False,
                  memo: Memo | None = None) -> str:
        clean = norm_path(path)
        host = resolve_in_root(root, clean, follow_final=follow)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            if missing_ok:
                return _EMPTY
            raise BuildError(f'"{clean}": not found') from None
        rel = os.path.relpath(host, root)
        record = self._record(cache, host, "" if rel == "." else rel, "", st, path_filter, memo)
        return "sha256:" + (record or hashlib.sha256(b"").hexdigest())

    def _record(self, cache: _RootCache, host: str, rel: str, filter_rel: str,
                st: os.stat_result, path_filter: PathFilter | None,
                memo: Memo | None = None) -> str | None:
        """Hex record of an entry; ``None`` when filters leave nothing of it. Without a filter,
        ``memo`` gets ``rel`` → (is a symlink, record) of the entry and everything below it."""
        record = self._entry_record(cache, host, rel, filter_rel, st, path_filter, memo)
        if memo is not None and record is not None:
            memo[rel] = (stat.S_ISLNK(st.st_mode), record)
        return record

    def _entry_record(self, cache: _RootCache, host: str, rel: str, filter_rel: str,
                      st: os.stat_result, path_filter: PathFilter | None,
                      memo: Memo | None) -> str | None:
        mode = st.st_mode
        header = f"{stat.S_IFMT(mode):o} {stat.S_IMODE(mode):o} {st.st_uid} {st.st_gid}"
        if stat.S_ISDIR(mode):
            h = hashlib.sha256(b"dir\0" + header.encode())
            any_child = False
            with os.scandir(host) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                child_filter_rel = f"{filter_rel}/{entry.name}" if filter_rel else entry.name
                keep, descend = True, False
                is_dir = entry.is_dir(follow_symlinks=False)
                if path_filter is not None:
                    keep, descend = path_filter.verdict(child_filter_rel, is_dir)
                    if not keep and not descend:
                        continue
                child_st = entry.stat(follow_symlinks=False)
                child_rel = f"{rel}/{entry.name}" if rel else entry.name
                child_filter = path_filter if not (keep and is_dir and path_filter is not None
                                                   and path_filter.exclude is None) else None
                record = self._record(cache, entry.path, child_rel, child_filter_rel, child_st,
                                      child_filter, memo if path_filter is None else None)
                if record is None:
                    continue
                any_child = True
                h.update(entry.name.encode("utf-8", "surrogateescape") + b"\0" +
                         record.encode() + b"\n")
            if path_filter is not None and filter_rel and not any_child:
                keep, _ = path_filter.verdict(filter_rel, True)
                if not keep:
                    return None
            return h.hexdigest()
        if stat.S_ISREG(mode):
            content = cache.content(rel, host, st)
            return hashlib.sha256(f"file\0{header}\0{content}".encode()).hexdigest()
        if stat.S_ISLNK(mode):
            target = os.readlink(host)
            return hashlib.sha256(f"symlink\0{header}\0".encode() +
                                  target.encode("utf-8", "surrogateescape")).hexdigest()
        return hashlib.sha256(f"special\0{header}\0{st.st_rdev}".encode()).hexdigest()
