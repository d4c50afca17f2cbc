"""Work on file trees holding snapshot layers: overlay-style whiteouts and opaque directories,
applying a layer onto a tree, diffing two trees into a layer, copies and disk usage.

A *layer* is a directory of changes: added and changed entries as they are, a deleted path as a
whiteout (a ``0:0`` character device), a directory replacing the one below marked opaque
(``trusted.overlay.opaque=y``) — what overlayfs understands and an exporter turns into an OCI
layer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import subprocess

from pybk.core.errors import StoreError
from pybk.core.fs.files import remove_path
from pybk.core.fs.tarwriter import OVERLAY_XATTR_PREFIXES, is_opaque

_FICLONE = 0x40049409


def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def make_whiteout(path: str) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _xattrs(path: str) -> dict[str, bytes]:
    """Extended attributes of ``path`` (not following symlinks), overlay's own left out."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def _copy_metadata(src: str, st: os.stat_result, dst: str) -> None:
    """Owner, mode, xattrs and times of ``src`` onto ``dst`` (in the order that keeps them)."""
    link = stat.S_ISLNK(st.st_mode)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name, value in _xattrs(src).items():
        with contextlib.suppress(OSError):
            os.setxattr(dst, name, value, follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file_data(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass
        size = os.fstat(fin.fileno()).st_size
        offset = 0
        while offset < size:
            sent = os.sendfile(fout.fileno(), fin.fileno(), offset, size - offset)
            if sent == 0:
                break
            offset += sent


def _copy_node(src: str, st: os.stat_result, dst: str, links: dict[tuple[int, int], str]) -> None:
    """Copy one non-directory entry (file, symlink, device, fifo, socket) with its metadata.

    Files hard-linked together in the source stay hard-linked together in the copy.
    """
    mode = st.st_mode
    if stat.S_ISREG(mode) and st.st_nlink > 1:
        first = links.get((st.st_dev, st.st_ino))
        if first is not None:
            os.link(first, dst, follow_symlinks=False)
            return
        links[(st.st_dev, st.st_ino)] = dst
    if stat.S_ISREG(mode):
        _copy_file_data(src, dst)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    else:
        os.mknod(dst, mode, st.st_rdev)
    _copy_metadata(src, st, dst)


def _clear_dir(path: str) -> None:
    with os.scandir(path) as it:
        for entry in it:
            remove_path(entry.path)


def apply_layer(layer: str, target: str) -> None:
    """Apply ``layer`` (overlay-style whiteouts and opaque dirs) onto the tree at ``target``.

    This is what overlayfs shows when ``layer`` is stacked on ``target``, done with copies.
    """
    links: dict[tuple[int, int], str] = {}

    def walk(src_dir: str, dst_dir: str) -> None:
        with os.scandir(src_dir) as it:
            entries = list(it)
        for entry in entries:
            src = entry.path
            dst = os.path.join(dst_dir, entry.name)
            st = entry.stat(follow_symlinks=False)
            if is_whiteout(st):
                remove_path(dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    dst_st = os.lstat(dst)
                except FileNotFoundError:
                    dst_st = None
                if dst_st is not None and not stat.S_ISDIR(dst_st.st_mode):
                    os.unlink(dst)
                    dst_st = None
                if dst_st is None:
                    os.mkdir(dst, 0o700)
                elif is_opaque(src):
                    _clear_dir(dst)
                walk(src, dst)
                _copy_metadata(src, st, dst)
            else:
                remove_path(dst)
                _copy_node(src, st, dst, links)

    walk(layer, target)
    _copy_metadata(layer, os.lstat(layer), target)


def _same_entry(a_path: str, a: os.stat_result, b_path: str, b: os.stat_result) -> bool:
    """Whether two entries look identical (type, mode, owner, size, mtime, target, xattrs)."""
    if (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) != (b.st_mode, b.st_uid, b.st_gid,
                                                          b.st_mtime_ns):
        return False
    if stat.S_ISREG(a.st_mode) and a.st_size != b.st_size:
        return False
    if stat.S_ISLNK(a.st_mode) and os.readlink(a_path) != os.readlink(b_path):
        return False
    if (stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode)) and a.st_rdev != b.st_rdev:
        return False
    return _xattrs(a_path) == _xattrs(b_path)


def tree_diff(lower: str | None, upper: str, out: str) -> None:
    """Write into the empty directory ``out`` the changes from ``lower`` to ``upper``.

    Added and changed entries are copied, deleted ones become whiteouts, so applying ``out``
    on ``lower`` (overlayfs or :func:`apply_layer`) reproduces ``upper``.
    """
    links: dict[tuple[int, int], str] = {}

    def copy_subtree(src: str, st: os.stat_result, dst: str) -> None:
        if not stat.S_ISDIR(st.st_mode):
            _copy_node(src, st, dst, links)
            return
        os.mkdir(dst, 0o700)
        with os.scandir(src) as it:
            for entry in it:
                copy_subtree(entry.path, entry.stat(follow_symlinks=False),
                             os.path.join(dst, entry.name))
        _copy_metadata(src, st, dst)

    def listing(path: str | None) -> dict[str, os.stat_result]:
        if path is None:
            return {}
        with os.scandir(path) as it:
            return {e.name: e.stat(follow_symlinks=False) for e in it}

    def walk(low: str | None, up: str, dst: str) -> bool:
        """Fill ``dst`` with the changes below ``up``; True when anything was written."""
        lows, ups = listing(low), listing(up)
        changed = False
        for name in sorted(lows.keys() - ups.keys()):
            make_whiteout(os.path.join(dst, name))
            changed = True
        for name, ust in sorted(ups.items()):
            u_path, d_path = os.path.join(up, name), os.path.join(dst, name)
            lst = lows.get(name)
            if lst is None:
                copy_subtree(u_path, ust, d_path)
                changed = True
                continue
            l_path = os.path.join(low, name)  # type: ignore[arg-type]
            if stat.S_ISDIR(ust.st_mode) and stat.S_ISDIR(lst.st_mode):
                os.mkdir(d_path, 0o700)
                inner = walk(l_path, u_path, d_path)
                if inner or not _same_entry(l_path, lst, u_path, ust):
                    _copy_metadata(u_path, ust, d_path)
                    changed = True
                else:
                    os.rmdir(d_path)
            elif not _same_entry(l_path, lst, u_path, ust):
                copy_subtree(u_path, ust, d_path)
                changed = True
        return changed

    walk(lower, upper, out)
    _copy_metadata(upper, os.lstat(upper), out)


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes allocated under ``path`` (each inode once, directories included)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [os.fspath(path)]
    while stack:
        current = stack.pop()
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(FileNotFoundError), os.scandir(current) as it:
                stack.extend(e.path for e in it)
    return total


def copy_contents(src: str, dst: str) -> None:
    """Copy the tree ``src`` into the existing directory ``dst`` (reflinks where possible)."""
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", f"{src}/.", f"{dst}/"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise StoreError(f"copying {src} to {dst} failed: {proc.stderr.strip()}")
