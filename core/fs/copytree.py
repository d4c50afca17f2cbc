"""Copying a result's filesystem into a directory (``--output type=local``)."""

from __future__ import annotations

import os
import shutil
import stat


def copy_tree(src: str, dest: str, *, devices: bool = False,
              skipped: list[str] | None = None,
              owner: tuple[int, int] | None = None) -> int:
    """Copy a result tree keeping modes, owners (when root), symlinks and hardlinks; returns
    the number of entries written.

    ``owner`` ``(uid, gid)`` gives every entry written to that user instead of
    keeping the tree's owners, as BuildKit's client writes a ``local`` output: it is the
    calling user's own (a non-root process may only name itself and its groups).

    Device nodes (character and block) are skipped unless ``devices`` (and root): an image must
    not drop devices onto the host; asked for, they are made accessible to their owner only
    (mode ``& 0o600``). The paths of skipped device nodes are appended to ``skipped``.
    """
    count = 0
    seen_inodes: dict[tuple[int, int], str] = {}
    as_root = os.geteuid() == 0
    os.makedirs(dest, exist_ok=True)
    # a directory that cannot be listed (or vanished) fails the copy: os.walk would skip it
    # without a word, and a partial tree would pass for the result
    for dirpath, dirnames, filenames in os.walk(src, onerror=_fail):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        target_dir = dest if rel == "." else os.path.join(dest, rel)
        for name in sorted(dirnames) + sorted(filenames):
            s = os.path.join(dirpath, name)
            d = os.path.join(target_dir, name)
            st = os.lstat(s)
            is_device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            if is_device and not (devices and as_root):
                if skipped is not None:
                    skipped.append(os.path.relpath(s, src))
                continue
            if os.path.lexists(d) and not (os.path.isdir(d) and not os.path.islink(d)):
                os.unlink(d)
            if os.path.islink(s):
                os.symlink(os.readlink(s), d)
            elif os.path.isdir(s):
                os.makedirs(d, exist_ok=True)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(d, st.st_mode & 0o7777)
            elif is_device:
                os.mknod(d, stat.S_IFMT(st.st_mode) | (st.st_mode & 0o600), st.st_rdev)
            elif stat.S_ISSOCK(st.st_mode):
                continue  # sockets cannot be exported (BuildKit skips them too)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen_inodes:
                os.link(seen_inodes[(st.st_dev, st.st_ino)], d, follow_symlinks=False)
                count += 1
                continue
            else:
                shutil.copy2(s, d, follow_symlinks=False)
                if st.st_nlink > 1:
                    seen_inodes[(st.st_dev, st.st_ino)] = d
            if owner is not None:
                os.lchown(d, *owner)
            elif as_root:
                os.lchown(d, st.st_uid, st.st_gid)
            if not os.path.islink(s):
                os.chmod(d, st.st_mode & (0o600 if is_device else 0o7777))
            count += 1
    for dirpath, _dirnames, _ in os.walk(src, onerror=_fail):
        rel = os.path.relpath(dirpath, src)
        if rel != ".":
            st = os.lstat(dirpath)
            os.utime(os.path.join(dest, rel), ns=(st.st_atime_ns, st.st_mtime_ns))
    return count


def _fail(error: OSError) -> None:
    raise error
