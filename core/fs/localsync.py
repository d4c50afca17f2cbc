"""Incremental mirror of a client directory (``local://NAME``) into the store's copy.

The walk skips excluded directories without reading them and, with include patterns or follow
paths, never enters directories that cannot hold a selected file. Each entry's lstat is compared
with the state of the previous sync; only entries whose ``(mode, size, mtime_ns, inode, dev)``
changed are copied; the destination side (temporary names renamed into place, removals,
directory modes and mtimes, 0:0 owners, the state file) is :mod:`pybk.core.fs.mirror`, shared
with the remote sync (:mod:`pybk.core.remote.filesync`), which also shares this module's walk
(:func:`context_filter`, :func:`walk_context`).

Hardlinks are kept: names of one source inode (among the synced entries) become names of one
destination file. Because the inode is part of each entry's state and changed entries are always
replaced, never written in place, a link made or broken in the source is mirrored by the next
sync.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from pybk.core.errors import BuildError
from pybk.core.fs.files import copy_fd_data
from pybk.core.fs.mirror import Mirror, SyncStats, make_file, run_mirror
from pybk.core.fs.pathfilter import PathFilter
from pybk.core.fs.rootpath import resolve_in_root

__all__ = ["SyncStats", "context_filter", "follow_targets", "sync_local", "walk_context"]

#: 3: owners before modes (set-id bits kept), failed syncs save dirty marks
_STATE_VERSION = 3

#: ``visit(rel, host_path, lstat, is_dir)``
Visitor = Callable[[str, str, os.stat_result, bool], None]


def follow_targets(root: str, follow_paths: Sequence[str]) -> list[str]:
    """The follow paths plus each symlink hop met resolving them (relative to ``root``)."""
    out: list[str] = []
    for path in follow_paths:
        current = os.path.normpath("/" + path)
        for _ in range(256):
            rel = os.path.relpath(current, "/")
            if rel == "." or rel in out:
                break
            out.append(rel)
            host = os.path.join(root, rel)
            if not os.path.islink(host):
                break
            target = os.readlink(host)
            joined = target if target.startswith("/") else \
                os.path.join(os.path.dirname(current), target)
            resolved = resolve_in_root(root, joined, follow_final=False)
            current = "/" + os.path.relpath(resolved, root)
    return out


def context_filter(root: str, include_patterns: Sequence[str] = (),
                   exclude_patterns: Sequence[str] = (),
                   follow_paths: Sequence[str] = ()) -> PathFilter | None:
    """The filter selecting a context's entries: the include patterns, plus (with follow paths)
    the follow paths and their symlink hops; ``None`` when everything is selected."""
    includes = list(include_patterns)
    if follow_paths:
        includes.extend(follow_targets(root, follow_paths))
    return PathFilter.create(includes, list(exclude_patterns))


def walk_context(root: str, path_filter: PathFilter | None, visit: Visitor) -> None:
    """Call ``visit`` for each selected entry under ``root`` (not for ``root`` itself), a
    directory before its content, in ``scandir`` order.

    An excluded directory is not read unless a selected entry may be inside (a re-included
    path, an include pattern reaching into it); such a directory is visited (as a parent)
    only when something inside it is. Every kind of entry is visited: what to do with
    sockets, fifos and devices is the caller's.
    """
    _walk(root, "", [], path_filter, visit)


def _walk(host: str, rel: str, pending: list[tuple[str, str, os.stat_result]],
          path_filter: PathFilter | None, visit: Visitor) -> bool:
    """Walk directory ``host`` (``rel`` in the tree); True when anything of it was visited.

    ``pending`` holds ancestors not visited yet (they are, just before a selected child).
    """
    kept_any = False
    try:
        it = os.scandir(host)
    except PermissionError as e:
        raise BuildError(f"cannot read {rel or '.'} of the local context: {e.strerror}") from None
    with it:
        for entry in it:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            keep, descend = True, is_dir
            if path_filter is not None:
                keep, descend = path_filter.verdict(child_rel, is_dir)
                if not keep and not descend:
                    continue
            st = entry.stat(follow_symlinks=False)
            if is_dir and not keep:
                if _walk(entry.path, child_rel, [*pending, (child_rel, entry.path, st)],
                         path_filter, visit):
                    kept_any = True
                    pending = []
                continue
            for pending_rel, pending_host, pending_st in pending:
                visit(pending_rel, pending_host, pending_st, True)
            pending = []
            kept_any = True
            visit(child_rel, entry.path, st, is_dir)
            if is_dir:
                _walk(entry.path, child_rel, [], path_filter, visit)
    return kept_any


def _record(kind: str, st: os.stat_result) -> list:
    return [kind, st.st_mode, st.st_size if kind != "d" else 0, st.st_mtime_ns, st.st_ino,
            st.st_dev]


class _LocalSource:
    """Hands the entries of one walk of the source to the mirror."""

    def __init__(self, mirror: Mirror):
        self.mirror = mirror
        self.old = mirror.old
        #: (dev, inode) of a multiply linked source file -> the first synced name of it
        self._link_groups: dict[tuple[int, int], str] = {}
        #: first names of multiply linked files copied by this sync (a new inode: the other
        #: names are linked to it again, even unchanged ones)
        self._made_first: set[str] = set()

    def visit(self, rel: str, host: str, st: os.stat_result, is_dir: bool) -> None:
        if is_dir:
            self.mirror.dir(rel, _record("d", st))
            return
        mode = st.st_mode
        if stat.S_ISREG(mode):
            record = _record("f", st)
        elif stat.S_ISLNK(mode):
            record = _record("l", st)
        else:
            return  # sockets, fifos and devices are not transferred
        first_name = None
        if st.st_nlink > 1 and record[0] == "f":
            first_name = self._link_groups.setdefault((st.st_dev, st.st_ino), rel)
            if first_name == rel:
                first_name = None
        if self.old.get(rel) == record and (first_name is None or
                                            first_name not in self._made_first):
            self.mirror.keep(rel, record)
        elif first_name is not None:
            self.mirror.link(rel, record, first_name)
        elif record[0] == "l":
            self.mirror.symlink(rel, record, os.readlink(host), st.st_atime_ns)
        else:
            self.mirror.place(rel, record, lambda path: self._copy(host, path, st))
            if st.st_nlink > 1:
                self._made_first.add(rel)

    def _copy(self, host: str, path: str, st: os.stat_result) -> int:
        in_fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return make_file(path, st.st_mode, st.st_atime_ns, st.st_mtime_ns,
                             lambda fd: copy_fd_data(in_fd, fd), self.mirror.as_root)
        finally:
            os.close(in_fd)


def sync_local(src_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *,
               include_patterns: Sequence[str] = (), exclude_patterns: Sequence[str] = (),
               follow_paths: Sequence[str] = (),
               state_file: str | os.PathLike[str],
               on_copied: Callable[[str], None] | None = None) -> SyncStats:
    """Make ``dest_dir`` mirror the selected part of ``src_dir``, copying only what changed.

    ``include_patterns``/``exclude_patterns``: BuildKit patternmatcher patterns (an excluded
    directory is not read). ``follow_paths``: only these paths (their parents, and the targets of
    symlinks among them) are transferred, in addition to ``include_patterns``. ``on_copied``
    is given the relative path of each regular file copied, once it is complete.
    """
    src = os.path.realpath(os.fspath(src_dir))
    dest = os.path.abspath(os.fspath(dest_dir))
    if not os.path.isdir(src):
        raise BuildError(f"local context {os.fspath(src_dir)}: not a directory")
    path_filter = context_filter(src, include_patterns, exclude_patterns, follow_paths)

    def fill(mirror: Mirror) -> None:
        mirror.dir("", _record("d", os.stat(src)))
        walk_context(src, path_filter, _LocalSource(mirror).visit)

    try:
        return run_mirror(dest, os.fspath(state_file), _STATE_VERSION, fill, on_copied)
    except OSError as e:
        raise BuildError(f"syncing local context {os.fspath(src_dir)}: {e}") from None
