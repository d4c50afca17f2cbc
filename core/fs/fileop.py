"""FileOp actions on real directories (mounted snapshots): copy, mkfile, mkdir, rm, symlink.

Every path is resolved *inside* its root, which stands for ``/``: ``..`` stops at the root and a
symlink met on the way (``/etc -> /usr/etc``, ``x -> ../../..``) is followed within the root, never
out of it. Semantics follow BuildKit's file backend: wildcards are Go ``filepath.Match`` patterns,
a destination ending in ``/`` is a directory, ``dir_copy_contents`` copies a directory's entries
rather than the directory itself, owners named by name are looked up in the ``/etc/passwd`` and
``/etc/group`` of the destination root, and so on. Failures raise :class:`BuildError`.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.fs.files import (
    chown,
    copy_file_data,
    copy_xattrs,
    mkdir_all,
    remove_path,
    set_times,
)
from pybk.core.fs.owners import mode_value, parse_mode_str, resolve_owner, timestamp_value
from pybk.core.fs.pathfilter import PathFilter
from pybk.core.fs.rootpath import (
    clean_path,
    norm_path,
    resolve_in_root,
    resolve_wildcards,
    root_path,
    user_errors,
)
from pybk.core.fs.unpack import unpack_archive
from pybk.core.model import Model

__all__ = [
    "CopyOptions",
    "LinkPlan",
    "copy",
    "mkdir",
    "mkfile",
    "rm",
    "symlink",
]


# --------------------------------------------------------------------------------------------
# copy
# --------------------------------------------------------------------------------------------


class CopyOptions(Model):
    """FileActionCopy's options (everything but src/dest); ``None``/-1 mean unset."""

    owner: Any = None
    mode: int | None = None
    follow_symlink: bool = False
    dir_copy_contents: bool = False
    attempt_unpack_docker_compatibility: bool = False
    create_dest_path: bool = False
    allow_wildcard: bool = False
    allow_empty_wildcard: bool = False
    timestamp: int | None = None
    include_patterns: Sequence[str] = ()
    exclude_patterns: Sequence[str] = ()
    always_replace_existing_dest_paths: bool = False
    mode_str: str = ""
    required_paths: Sequence[str] = ()


class LinkPlan:
    """Regular files a copy hard-links from its source instead of copying their bytes.

    Only for a source whose files are never changed in place (a synced local context: the sync
    replaces a changed file by a new one) and only for files whose copy would carry exactly the
    source's owner, mode and times, so nothing is ever applied through the link. The copy
    leaves these files out of the destination ``root`` and records them; once the destination
    is unmounted, :meth:`apply` links them into its layer directory (files cannot be linked
    across an overlay mount, and the layer of a mounted overlay must not be changed from below).
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        #: target path relative to ``root`` -> source file, in copy order
        self.pending: dict[str, str] = {}

    def add(self, src: str, target: str) -> None:
        self.pending[os.path.relpath(target, self.root)] = src

    def discard(self, target: str) -> None:
        """``target`` is written by the copy itself: a link planned there is dropped."""
        if self.pending:
            self.pending.pop(os.path.relpath(target, self.root), None)

    def ensure_parents(self, layer: str) -> None:
        """While ``root`` is mounted over ``layer``: make each target's directory exist in it.

        A directory only in a lower layer is copied up by setting its times to what they are.
        """
        for rel in {os.path.dirname(r) for r in self.pending}:
            if os.path.isdir(os.path.join(layer, rel)):
                continue
            merged = os.path.join(self.root, rel)
            st = os.lstat(merged)
            os.utime(merged, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            if not os.path.isdir(os.path.join(layer, rel)):
                raise BuildError(f"copy: {rel or '/'} did not appear in the layer directory")

    def apply(self, layer: str) -> int:
        """Link the planned files into ``layer`` (not mounted); returns how many."""
        times: dict[str, tuple[int, int]] = {}
        for rel, src in self.pending.items():
            target = os.path.join(layer, rel)
            parent = os.path.dirname(target)
            if parent not in times:
                st = os.lstat(parent)
                times[parent] = (st.st_atime_ns, st.st_mtime_ns)
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                pass
            else:  # only a whiteout (a lower file the copy replaced) can be there
                if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                    raise BuildError(f"copy: unexpected entry at {rel} in the layer directory")
                os.unlink(target)
            os.link(src, target, follow_symlinks=False)
        for parent, (atime_ns, mtime_ns) in times.items():
            os.utime(parent, ns=(atime_ns, mtime_ns))
        return len(self.pending)


def copy(src_root: str, src_path: str, dest_root: str, dest_path: str, opts: Any = None, *,
         owner_root: str | None = None, links: LinkPlan | None = None) -> None:
    """FileActionCopy: copy ``src_path`` of ``src_root`` to ``dest_path`` of ``dest_root``.

    ``opts`` is a :class:`CopyOptions` or any object with FileActionCopy's attribute names.
    Owner names resolve against ``owner_root`` (default: ``dest_root``). With ``links`` (a
    :class:`LinkPlan` on ``dest_root``), eligible regular files are planned there instead of
    copied; the caller applies the plan.
    """
    with user_errors(f"copy {src_path} to {dest_path}", src_root, dest_root):
        _copy(src_root, src_path, dest_root, dest_path, opts, owner_root, links)


def _copy(src_root: str, src_path: str, dest_root: str, dest_path: str, opts: Any,
          owner_root: str | None, links: LinkPlan | None = None) -> None:
    o = opts if opts is not None else CopyOptions()

    def opt(name: str, default: Any) -> Any:
        value = getattr(o, name, default)
        return default if value is None else value

    src = clean_path(src_path)
    dest = clean_path(dest_path)
    owner = resolve_owner(opt("owner", None), owner_root or dest_root)
    timestamp_ns = timestamp_value(opt("timestamp", None))
    mode_str = opt("mode_str", "")
    copier = _Copier(
        owner=owner,
        timestamp_ns=timestamp_ns,
        mode=None if mode_str else mode_value(opt("mode", None)),
        mode_fn=parse_mode_str(mode_str) if mode_str else None,
        path_filter=PathFilter.create(opt("include_patterns", ()), opt("exclude_patterns", ())),
        always_replace=bool(opt("always_replace_existing_dest_paths", False)),
        links=links,
    )
    follow = bool(opt("follow_symlink", False))

    if not opt("create_dest_path", False):
        parent = os.path.dirname(resolve_in_root(dest_root, norm_path(dest)))
        if not os.path.isdir(parent):
            raise BuildError(f'destination "{norm_path(dest)}": parent directory does not exist')

    for required in opt("required_paths", ()):
        if not os.path.lexists(root_path(src_root, posixpath.join(src, required), follow)):
            raise BuildError(f'"{norm_path(posixpath.join(src, required))}": not found')

    if opt("allow_wildcard", False):
        sources = resolve_wildcards(src_root, src)
        if not sources:
            if opt("allow_empty_wildcard", False):
                return
            raise BuildError(f'"{norm_path(src)}": not found')
    else:
        sources = [src]

    unpack = bool(opt("attempt_unpack_docker_compatibility", False))
    for source in sources:
        if unpack and unpack_archive(src_root, source, dest_root, dest, owner, timestamp_ns):
            continue
        _copy_one(copier, src_root, source, dest_root, dest, follow,
                  bool(opt("dir_copy_contents", False)))


def _copy_one(copier: _Copier, src_root: str, src: str, dest_root: str, dest: str,
              follow: bool, dir_contents: bool) -> None:
    src_host = root_path(src_root, src, follow)
    try:
        src_st = os.lstat(src_host)
    except (FileNotFoundError, NotADirectoryError):
        raise BuildError(f'"{norm_path(src)}": not found') from None
    head, tail = posixpath.split(dest)
    ensure = dest if tail in ("", ".") else head
    if ensure:
        mkdir_all(resolve_in_root(dest_root, ensure), 0o755, copier.owner, copier.timestamp_ns)
    dest_host = resolve_in_root(dest_root, norm_path(dest))

    target = _prepare_target(copier, src_st, src, dest_host, dir_contents)
    copier.copy(src_host, "", target, False)


def _prepare_target(copier: _Copier, src_st: os.stat_result, src: str, dest_host: str,
                    dir_contents: bool) -> str:
    src_is_dir = stat.S_ISDIR(src_st.st_mode)
    try:
        dest_st: os.stat_result | None = os.stat(dest_host)
    except (FileNotFoundError, NotADirectoryError):
        dest_st = None
    target = dest_host
    if dest_st is not None and (
        (src_is_dir and not dir_contents) or (not src_is_dir and stat.S_ISDIR(dest_st.st_mode))
    ):
        base = posixpath.basename(norm_path(src))
        if base:
            target = os.path.join(dest_host, base)
    parent = target if (dir_contents and src_is_dir and dest_st is None) else os.path.dirname(target)
    mkdir_all(parent, 0o755, copier.owner, copier.timestamp_ns)
    return target


class _Copier:
    """One copy's state: options, hardlink map, pending (lazily created) parent directories."""

    def __init__(self, *, owner: tuple[int, int] | None, timestamp_ns: int | None,
                 mode: int | None, mode_fn: Callable[[int, bool], int] | None,
                 path_filter: PathFilter | None, always_replace: bool,
                 links: LinkPlan | None = None):
        self.owner = owner
        self.timestamp_ns = timestamp_ns
        self.mode = mode
        self.mode_fn = mode_fn
        self.filter = path_filter
        self.always_replace = always_replace
        self.links = links
        self.inodes: dict[tuple[int, int], str] = {}
        self.parents: list[list[Any]] = []  # [src, dst, created]

    def copy(self, src: str, rel: str, target: str, overwrite_meta: bool) -> None:
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise BuildError(f'"{src}": not found') from None
        is_dir = stat.S_ISDIR(st.st_mode)
        include, descend = True, is_dir
        if rel and self.filter is not None:
            include, descend = self.filter.verdict(rel, is_dir)
            if not include and not descend:
                return
        try:
            target_st: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            target_st = None
        if include:
            if (self.always_replace and target_st is not None
                    and not (is_dir and stat.S_ISDIR(target_st.st_mode))):
                remove_path(target)
                target_st = None
            self._create_parents(overwrite_meta)
        if not is_dir and target_st is not None:
            if stat.S_ISDIR(target_st.st_mode):
                raise BuildError(f"cannot replace directory {target} with a file")
            os.unlink(target)
        if self.links is not None:
            self.links.discard(target)
        copy_info = include
        restore_times = False
        if is_dir:
            created = self._copy_dir(src, rel, target, st, overwrite_meta, include)
            if not overwrite_meta:
                copy_info = created
                restore_times = not created
        elif stat.S_ISREG(st.st_mode) and self.links is not None and self._keeps_info(st):
            self.links.add(src, target)  # every name of one inode: linked together, as in src
            copy_info = False
        elif stat.S_ISREG(st.st_mode):
            link_to = None
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                link_to = self.inodes.get(key)
                if link_to is None:
                    self.inodes[key] = target
            if link_to is not None:
                os.link(link_to, target, follow_symlinks=False)
            else:
                copy_file_data(src, target)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(
                st.st_mode) or stat.S_ISSOCK(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
        else:  # pragma: no cover - no other file types on Linux
            raise BuildError(f"unsupported file type: {src}")
        if copy_info:
            self._copy_info(st, target)
            copy_xattrs(src, target)
        elif restore_times and target_st is not None:
            self._copy_times(st, target)

    def _copy_dir(self, src: str, rel: str, dst: str, st: os.stat_result, overwrite_meta: bool,
                  include: bool) -> bool:
        created = False
        if include:
            created = _copy_dir_only(dst, st, overwrite_meta)
        self.parents.append([src, dst, include])
        try:
            for name in sorted(os.listdir(src)):
                self.copy(os.path.join(src, name), f"{rel}/{name}" if rel else name,
                          os.path.join(dst, name), True)
        finally:
            self.parents.pop()
        return created

    def _create_parents(self, overwrite_meta: bool) -> None:
        for entry in self.parents:
            if entry[2]:
                continue
            src, dst = entry[0], entry[1]
            st = os.stat(src)
            if _copy_dir_only(dst, st, overwrite_meta):
                self._copy_info(st, dst)
                copy_xattrs(src, dst)
            entry[2] = True

    def _keeps_info(self, st: os.stat_result) -> bool:
        """Whether a copy of this file would get exactly its owner, mode and times."""
        if self.owner is not None and self.owner != (st.st_uid, st.st_gid):
            return False
        if self.owner is None and os.geteuid() != 0:
            return False  # the copy would be owned by this user
        mode = stat.S_IMODE(st.st_mode)
        if self.mode is not None and (mode & ~0o777) | (self.mode & 0o777) != mode:
            return False
        if self.mode_fn is not None and self.mode_fn(mode, False) != mode:
            return False
        return self.timestamp_ns is None or self.timestamp_ns == st.st_mtime_ns == st.st_atime_ns

    def _copy_info(self, st: os.stat_result, target: str) -> None:
        owner = self.owner if self.owner is not None else (st.st_uid, st.st_gid)
        if self.owner is not None or os.geteuid() == 0:
            chown(target, owner)
        if not stat.S_ISLNK(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
            if self.mode is not None:
                mode = (mode & ~0o777) | (self.mode & 0o777)
            elif self.mode_fn is not None:
                mode = self.mode_fn(mode, stat.S_ISDIR(st.st_mode))
            os.chmod(target, mode)
        self._copy_times(st, target)

    def _copy_times(self, st: os.stat_result, target: str) -> None:
        if self.timestamp_ns is not None:
            set_times(target, self.timestamp_ns, self.timestamp_ns)
        else:
            set_times(target, st.st_atime_ns, st.st_mtime_ns)


def _copy_dir_only(dst: str, st: os.stat_result, overwrite_meta: bool) -> bool:
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        os.mkdir(dst, stat.S_IMODE(st.st_mode) | 0o700)
        return True
    if not stat.S_ISDIR(dst_st.st_mode):
        raise BuildError(f"cannot copy to non-directory: {dst}")
    if overwrite_meta:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    return False



# mkfile, mkdir, rm, symlink
# --------------------------------------------------------------------------------------------


def mkfile(root: str, path: str, mode: int, data: bytes, owner: Any = None,
           timestamp: int | None = None, *, owner_root: str | None = None) -> None:
    """FileActionMkFile: write ``data`` to ``path`` (parent must exist) with mode and owner."""
    with user_errors(f"mkfile {path}", root):
        _mkfile(root, path, mode, data, owner, timestamp, owner_root)


def _mkfile(root: str, path: str, mode: int, data: bytes, owner: Any = None,
           timestamp: int | None = None, owner_root: str | None = None) -> None:
    owner_ids = resolve_owner(owner, owner_root or root)
    host = resolve_in_root(root, norm_path(path))
    if host == os.path.abspath(root) or os.path.isdir(host):
        raise BuildError(f"mkfile {norm_path(path)}: is a directory")
    if not os.path.isdir(os.path.dirname(host)):
        raise BuildError(f"mkfile {norm_path(path)}: parent directory does not exist")
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(host, (mode_value(mode) or 0) & 0o777)
    chown(host, owner_ids)
    ts = timestamp_value(timestamp)
    if ts is not None:
        set_times(host, ts, ts)


def mkdir(root: str, path: str, mode: int, make_parents: bool = False, owner: Any = None,
          timestamp: int | None = None, *, owner_root: str | None = None) -> None:
    """FileActionMkDir: create ``path``; with ``make_parents`` also missing parents (same mode).

    An existing directory is left alone.
    """
    with user_errors(f"mkdir {path}", root):
        _mkdir(root, path, mode, make_parents, owner, timestamp, owner_root)


def _mkdir(root: str, path: str, mode: int, make_parents: bool = False, owner: Any = None,
          timestamp: int | None = None, owner_root: str | None = None) -> None:
    owner_ids = resolve_owner(owner, owner_root or root)
    host = resolve_in_root(root, norm_path(path))
    mode_bits = (mode_value(mode) or 0) & 0o777
    ts = timestamp_value(timestamp)
    if make_parents:
        mkdir_all(host, mode_bits, owner_ids, ts)
        return
    try:
        os.mkdir(host, mode_bits)
    except FileExistsError:
        return
    except FileNotFoundError:
        raise BuildError(f"mkdir {norm_path(path)}: parent directory does not exist") from None
    os.chmod(host, mode_bits)
    chown(host, owner_ids)
    if ts is not None:
        set_times(host, ts, ts)


def rm(root: str, path: str, allow_not_found: bool = False, allow_wildcard: bool = False) -> None:
    """FileActionRm: remove ``path`` (recursively; a symlink itself, never its target)."""
    with user_errors(f"rm {path}", root):
        _rm(root, path, allow_not_found, allow_wildcard)


def _rm(root: str, path: str, allow_not_found: bool = False, allow_wildcard: bool = False) -> None:
    if allow_wildcard:
        for match in resolve_wildcards(root, clean_path(path)):
            _rm_path(root, match, allow_not_found)
        return
    _rm_path(root, path, allow_not_found)


def _rm_path(root: str, path: str, allow_not_found: bool) -> None:
    cleaned = norm_path(path)
    if cleaned == "/":
        raise BuildError("rm: refusing to remove the root directory")
    host = resolve_in_root(root, cleaned, follow_final=False)
    if not os.path.lexists(host):
        if allow_not_found:
            return
        raise BuildError(f'rm "{cleaned}": not found')
    remove_path(host)


def symlink(root: str, oldpath: str, newpath: str, owner: Any = None,
            timestamp: int | None = None, *, owner_root: str | None = None) -> None:
    """FileActionSymlink: create ``newpath`` pointing at ``oldpath`` (stored verbatim)."""
    with user_errors(f"symlink {newpath}", root):
        _symlink(root, oldpath, newpath, owner, timestamp, owner_root)


def _symlink(root: str, oldpath: str, newpath: str, owner: Any = None,
            timestamp: int | None = None, owner_root: str | None = None) -> None:
    owner_ids = resolve_owner(owner, owner_root or root)
    host = resolve_in_root(root, norm_path(newpath), follow_final=False)
    try:
        os.symlink(oldpath, host)
    except FileExistsError:
        raise BuildError(f"symlink {norm_path(newpath)}: file exists") from None
    except FileNotFoundError:
        raise BuildError(f"symlink {norm_path(newpath)}: parent directory does not exist") from None
    chown(host, owner_ids)
    ts = timestamp_value(timestamp)
    if ts is not None:
        set_times(host, ts, ts)

