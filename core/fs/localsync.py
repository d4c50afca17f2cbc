"""Incremental mirror of a client directory (``local://NAME``) into the store's copy.

The walk skips excluded directories without reading them and, with include patterns or follow
paths, never enters directories that cannot hold a selected file. Each entry's lstat is compared
with the state of the previous sync; only entries whose ``(mode, size, mtime_ns, inode, dev)``
changed are copied (to a temporary name, then renamed into place), entries gone from the source
are removed, and directories get their mode and mtime. Synced entries are owned by 0:0, like
BuildKit's local source. The state file is written atomically, and only when something changed.

Hardlinks are kept: names of one source inode (among the synced entries) become names of one
destination file. Because the inode is part of each entry's state and changed entries are always
replaced, never written in place, a link made or broken in the source is mirrored by the next
sync.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Sequence

import attrs

from pybk.core.errors import BuildError
from pybk.core.fs.files import copy_fd_data, copy_file_data
from pybk.core.fs.pathfilter import PathFilter
from pybk.core.fs.rootpath import resolve_in_root

__all__ = ["SyncStats", "sync_local"]

_STATE_VERSION = 2
_TMP_PREFIX = ".pybk-sync-"


@attrs.frozen
class SyncStats:
    """What a sync did; counts are of non-directory entries (files, symlinks)."""

    copied: int
    removed: int
    unchanged: int
    bytes_copied: int


def _follow_targets(root: str, follow_paths: Sequence[str]) -> list[str]:
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


class _Walk:
    """One sync: the source walk and the changes it makes to the destination."""

    def __init__(self, dest: str, old: dict[str, list], path_filter: PathFilter | None,
                 on_copied: Callable[[str], None] | None = None):
        self.dest = dest
        self.on_copied = on_copied
        self.old = old
        self.new: dict[str, list] = {}
        self.filter = path_filter
        self.copied = 0
        self.unchanged = 0
        self.bytes = 0
        self.touched: set[str] = set()  # directories whose metadata must be (re)applied
        self.is_root = os.geteuid() == 0
        self._tmp_counter = 0
        #: (dev, inode) of a multiply linked source file -> the first synced name of it
        self._link_groups: dict[tuple[int, int], str] = {}

    def walk(self, host: str, rel: str, pending: list[tuple[str, os.stat_result]]) -> bool:
        """Mirror directory ``host`` (``rel`` in the tree); True when anything of it was kept.

        ``pending`` holds ancestors not created yet (they are kept only for a kept child).
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
                if self.filter is not None:
                    keep, descend = self.filter.verdict(child_rel, is_dir)
                    if not keep and not descend:
                        continue
                st = entry.stat(follow_symlinks=False)
                if is_dir and not keep:
                    if self.walk(entry.path, child_rel, [*pending, (child_rel, st)]):
                        kept_any = True
                        pending = []
                    continue
                self._create_pending(pending)
                pending = []
                kept_any = True
                if is_dir:
                    self._dir(child_rel, st)
                    self.walk(entry.path, child_rel, [])
                else:
                    self._entry(entry.path, child_rel, st)
        return kept_any

    def _create_pending(self, pending: list[tuple[str, os.stat_result]]) -> None:
        for rel, st in pending:
            if rel not in self.new:
                self._dir(rel, st)
        pending.clear()

    def _dir(self, rel: str, st: os.stat_result) -> None:
        record = ["d", st.st_mode, 0, st.st_mtime_ns, st.st_ino, st.st_dev]
        self.new[rel] = record
        old = self.old.get(rel)
        if old == record:
            return
        if old is None or old[0] != "d":
            target = os.path.join(self.dest, rel)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    os.unlink(target)
            with contextlib.suppress(FileExistsError):
                os.mkdir(target, 0o700)
            self.touched.add(os.path.dirname(rel))
        self.touched.add(rel)

    def _entry(self, host: str, rel: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            return  # sockets, fifos and devices are not transferred
        record = ["l" if stat.S_ISLNK(mode) else "f", mode, st.st_size, st.st_mtime_ns,
                  st.st_ino, st.st_dev]
        self.new[rel] = record
        first_name = None
        if stat.S_ISREG(mode) and st.st_nlink > 1:
            first_name = self._link_groups.setdefault((st.st_dev, st.st_ino), rel)
            if first_name == rel:
                first_name = None
        if self.old.get(rel) == record:
            self.unchanged += 1
            return
        target = os.path.join(self.dest, rel)
        if rel not in self.old and self._create(host, target, st, first_name):
            self._copied(rel, mode)
            return
        tmp = self._temp_name(os.path.dirname(target))
        if first_name is not None:
            os.link(os.path.join(self.dest, first_name), tmp)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(host), tmp)
        else:
            self.bytes += copy_file_data(host, tmp)
            os.chmod(tmp, stat.S_IMODE(mode))
        if first_name is None:
            if self.is_root:
                os.lchown(tmp, 0, 0)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        try:
            os.replace(tmp, target)
        except IsADirectoryError:
            shutil.rmtree(target)
            os.replace(tmp, target)
        self._copied(rel, mode)

    def _copied(self, rel: str, mode: int) -> None:
        self.touched.add(os.path.dirname(rel))
        self.copied += 1
        if self.on_copied is not None and stat.S_ISREG(mode):
            self.on_copied(rel)

    def _create(self, host: str, target: str, st: os.stat_result, first_name: str | None) -> bool:
        """An entry the last sync did not have, made at its name directly (no temporary name
        and rename: a new name is not read by anyone before the sync ends); False when the
        name is taken after all (a sync interrupted before it saved its state), for the caller
        to replace it."""
        mode = st.st_mode
        try:
            if first_name is not None:
                os.link(os.path.join(self.dest, first_name), target)
                return True
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(host), target)
                if self.is_root:
                    os.lchown(target, 0, 0)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                return True
            in_fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            except BaseException:
                os.close(in_fd)
                raise
        except FileExistsError:
            return False
        try:
            with contextlib.ExitStack() as closing:
                closing.callback(os.close, in_fd)
                closing.callback(os.close, fd)
                self.bytes += copy_fd_data(in_fd, fd)
                os.fchmod(fd, stat.S_IMODE(mode))
                if self.is_root:
                    os.fchown(fd, 0, 0)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise
        return True

    def _temp_name(self, directory: str) -> str:
        while True:
            self._tmp_counter += 1
            tmp = os.path.join(directory, f".pybk-sync-{os.getpid()}-{self._tmp_counter}")
            if not os.path.lexists(tmp):
                return tmp

    def remove_stale(self) -> int:
        """Delete entries of the last sync the source no longer has; returns non-dirs removed."""
        removed = 0
        for rel in sorted((r for r in self.old if r and r not in self.new), reverse=True):
            target = os.path.join(self.dest, rel)
            if self.old[rel][0] == "d":
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    shutil.rmtree(target)
            else:
                removed += 1
                with contextlib.suppress(FileNotFoundError, NotADirectoryError,
                                         IsADirectoryError):
                    os.unlink(target)
            self.touched.add(os.path.dirname(rel))
        return removed

    def finish_dirs(self) -> None:
        """Apply directory modes, owners and mtimes, deepest first (children touch parents)."""
        for rel in sorted(self.touched, reverse=True):
            record = self.new.get(rel)
            if record is None:
                continue
            target = os.path.join(self.dest, rel) if rel else self.dest
            os.chmod(target, stat.S_IMODE(record[1]))
            if self.is_root:
                os.lchown(target, 0, 0)
            os.utime(target, ns=(record[3], record[3]))


def _load_state(state_file: str, dest_dir: str) -> dict[str, list]:
    import orjson

    try:
        with open(state_file, "rb") as f:
            data = orjson.loads(f.read())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("v") != _STATE_VERSION or \
            data.get("dest") != dest_dir or not os.path.isdir(dest_dir):
        return {}
    return data.get("entries", {})


def _save_state(state_file: str, dest_dir: str, entries: dict[str, list]) -> None:
    import orjson

    tmp = f"{state_file}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"v": _STATE_VERSION, "dest": dest_dir, "entries": entries}))
    os.replace(tmp, state_file)


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
    state_path = os.fspath(state_file)
    if not os.path.isdir(src):
        raise BuildError(f"local context {os.fspath(src_dir)}: not a directory")
    old = _load_state(state_path, dest)
    if not old and os.path.lexists(dest):
        shutil.rmtree(dest)  # unknown content: start from an empty copy
    os.makedirs(dest, exist_ok=True)

    includes = list(include_patterns)
    if follow_paths:
        includes.extend(_follow_targets(src, follow_paths))
    walk = _Walk(dest, old, PathFilter.create(includes, list(exclude_patterns)), on_copied)
    root_st = os.stat(src)
    root_record = ["d", root_st.st_mode, 0, root_st.st_mtime_ns, root_st.st_ino, root_st.st_dev]
    walk.new[""] = root_record
    if old.get("") != root_record:
        walk.touched.add("")
    try:
        walk.walk(src, "", [])
        removed = walk.remove_stale()
        walk.finish_dirs()
    except OSError as e:
        raise BuildError(f"syncing local context {os.fspath(src_dir)}: {e}") from None
    if walk.new != old:
        _save_state(state_path, dest, walk.new)
    return SyncStats(copied=walk.copied, removed=removed, unchanged=walk.unchanged,
                     bytes_copied=walk.bytes)
