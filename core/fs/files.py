"""File system primitives of FileOp actions: owners and times of one entry, directories made
with their parents, file contents and extended attributes copied, trees removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from typing import BinaryIO

from pybk.core.errors import BuildError
from pybk.core.userns import in_user_namespace, mapped_ids

__all__ = ["chown", "copy_fd_data", "copy_file_data", "copy_xattrs", "mkdir_all", "private_dir",
           "private_file", "remove_path", "set_times"]


def chown(path: str, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    try:
        os.lchown(path, owner[0], owner[1])
    except PermissionError as e:
        raise BuildError(f"failed to chown {path} to {owner[0]}:{owner[1]}: {e.strerror}") from None
    except OSError as e:
        if e.errno != errno.EINVAL or not in_user_namespace():
            raise
        raise BuildError(f"failed to chown {path} to {owner[0]}:{owner[1]}: outside the ids "
                         f"this rootless pybk maps ({mapped_ids()}); give the user a larger "
                         "range in /etc/subuid and /etc/subgid") from None


def set_times(path: str, atime_ns: int, mtime_ns: int) -> None:
    try:
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    except NotImplementedError:  # pragma: no cover - lutimes is always there on Linux
        if not os.path.islink(path):
            os.utime(path, ns=(atime_ns, mtime_ns))


def mkdir_all(host_path: str, mode: int, owner: tuple[int, int] | None,
              timestamp_ns: int | None) -> None:
    """Create ``host_path`` and missing parents (already resolved in a root) with mode/owner."""
    missing: list[str] = []
    current = host_path
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
            continue
        except NotADirectoryError:
            raise BuildError(f"cannot create directory {host_path}: not a directory") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot create directory {current}: a file exists there")
        break
    created: list[str] = []
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise BuildError(f"cannot create directory {path}: a file exists there") from None
            continue
        os.chmod(path, mode)
        chown(path, owner)
        created.append(path)
    if timestamp_ns is not None:
        for path in created:  # after all are made: making a child changes its parent's mtime
            set_times(path, timestamp_ns, timestamp_ns)


def copy_file_data(src: str, dst: str) -> int:
    """Copy a regular file's content to a new file ``dst`` (mode 0600); returns the byte count."""
    in_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        try:
            return _copy_fd(in_fd, out_fd)
        finally:
            os.close(out_fd)
    finally:
        os.close(in_fd)


def copy_fd_data(in_fd: int, out_fd: int) -> int:
    """Copy the rest of ``in_fd`` to ``out_fd`` (in the kernel when it can); the byte count."""
    return _copy_fd(in_fd, out_fd)


def _copy_fd(in_fd: int, out_fd: int) -> int:
    total = 0
    try:
        while True:
            n = os.copy_file_range(in_fd, out_fd, 1 << 30)
            if n == 0:
                return total
            total += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or total:
            raise
    while True:
        chunk = os.read(in_fd, 1 << 20)
        if not chunk:
            return total
        os.write(out_fd, chunk)
        total += len(chunk)


def copy_xattrs(src: str, dst: str) -> None:
    """Best-effort copy of extended attributes (unsupported ones are skipped, like BuildKit)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError:
            continue


def remove_path(path: str) -> None:
    """Remove a file, symlink or whole directory tree; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def private_dir(path: str | os.PathLike[str], mode: int = 0o700) -> None:
    """Make the directory ``path`` (its missing parents as :func:`os.makedirs` would) and give
    it exactly ``mode``, whatever the process's umask; an existing directory is set to ``mode``
    (the store's directories are tightened this way each time it is opened)."""
    if not os.path.isdir(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)
    if stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)


def private_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to the new file ``path`` (never an existing one, never through a symbolic
    link) with exactly ``mode``, whatever the umask: nobody else may read it at any moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_file(dest: str) -> Iterator[BinaryIO]:
    """A file object writing an output file ``dest`` (a tarball, an archive): into a temporary
    file beside it, renamed over ``dest`` once complete (nothing half-written is left under its
    name); when ``dest`` is a character device, a FIFO or a socket (``/dev/null``,
    ``/dev/stdout``, a named pipe), straight into it: renaming over it would replace the
    device node with a regular file."""
    try:
        special = not stat.S_ISREG(os.stat(dest).st_mode) and not os.path.isdir(dest)
    except FileNotFoundError:
        special = False
    if special:
        with open(dest, "wb") as out:
            yield out
        return
    tmp = f"{dest}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            yield out
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
