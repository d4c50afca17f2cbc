"""Docker-compatible unpacking of local archives (ADD of a tar, plain or compressed).

A source file that is a tar archive (gzip, bzip2, xz or zstd compressed, told by magic bytes) is
extracted into the destination like Docker's untar, confined to the destination directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from typing import TYPE_CHECKING, Any

from pybk.core.errors import BuildError
from pybk.core.fs.diskguard import DiskSpaceError, copy_bounded
from pybk.core.fs.files import mkdir_all, remove_path, set_times
from pybk.core.fs.rootpath import norm_path, resolve_in_root, root_path
from pybk.core.fs.tarwriter import OVERLAY_XATTR_PREFIXES
from pybk.core.userns import in_user_namespace, mapped_ids

if TYPE_CHECKING:
    import tarfile

__all__ = ["extract_tar", "unpack_archive"]


_MAGIC = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _open_decompressed(f: Any) -> Any:
    """``f`` itself, or a reader decompressing it (gzip, bzip2, xz, zstd by magic bytes)."""
    import bz2
    import gzip
    import lzma

    head = f.read(6)
    f.seek(0)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            if kind == "gzip":
                return gzip.GzipFile(fileobj=f)
            if kind == "bzip2":
                return bz2.BZ2File(f)
            if kind == "xz":
                return lzma.LZMAFile(f)
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(f)
    return f


def _is_archive(host_path: str) -> bool:
    import lzma
    import tarfile

    try:
        if not stat.S_ISREG(os.lstat(host_path).st_mode):
            return False
        with open(host_path, "rb") as f:
            stream = _open_decompressed(f)
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                return tf.next() is not None
    except (OSError, EOFError, tarfile.TarError, lzma.LZMAError, ValueError):
        return False
    except Exception as e:  # zstandard raises its own error type
        if type(e).__module__.startswith("zstandard"):
            return False
        raise


def unpack_archive(src_root: str, src: str, dest_root: str, dest: str, owner: tuple[int, int] | None,
            timestamp_ns: int | None) -> bool:
    import tarfile

    src_host = root_path(src_root, src, True)
    if not _is_archive(src_host):
        return False
    dest_host = resolve_in_root(dest_root, norm_path(dest))
    mkdir_all(dest_host, 0o755, owner, timestamp_ns)
    try:
        with open(src_host, "rb") as f, \
                tarfile.open(fileobj=_open_decompressed(f), mode="r|") as tf:
            extract_tar(tf, dest_host)
    except DiskSpaceError:
        raise
    except BuildError as exc:
        raise BuildError(f"failed to unpack {src}: {exc}") from None
    except _corrupt_errors() as exc:
        raise BuildError(f"failed to unpack {src}: corrupt archive: {exc}") from None
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise BuildError(f"failed to unpack {src}: corrupt archive: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard") or type(exc).__name__ == "ZstdError":
            raise BuildError(f"failed to unpack {src}: corrupt zstd archive: {exc}") from None
        raise
    return True


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """What a damaged tar or compressed stream raises while it is read."""
    import bz2  # noqa: F401 - bz2 raises OSError/EOFError
    import lzma
    import tarfile
    import zlib

    return (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def extract_tar(tf: tarfile.TarFile, dest: str) -> None:
    """Extract an open tar stream into ``dest`` like Docker's untar, confined to ``dest``.

    Entries keep their uid/gid, mode, mtime and xattrs; ``..`` names and hardlinks or symlinks
    reaching outside ``dest`` are refused; an existing entry is replaced unless both are dirs.
    """
    dir_times: list[tuple[str, int]] = []
    is_root = os.geteuid() == 0
    devices = is_root and not in_user_namespace()  # a rootless pybk cannot make them
    for member in tf:
        if _escapes("", member.name.lstrip("/")):
            raise BuildError(f"invalid tar entry {member.name!r}: outside the destination")
        name = posixpath.normpath("/" + member.name).lstrip("/")
        if not name:
            continue
        parent = resolve_in_root(dest, posixpath.dirname(name))
        mkdir_all(parent, 0o755, None, None)
        path = os.path.join(parent, posixpath.basename(name))
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            remove_path(path)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(path, 0o700)
        elif member.isreg():
            source = tf.extractfile(member)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                copy_bounded(source, out, dest, f"tar entry {member.name!r}")
        elif member.issym():
            if not member.linkname.startswith("/") and _escapes(posixpath.dirname(name),
                                                                member.linkname):
                raise BuildError(f"invalid symlink {member.name!r} -> {member.linkname!r}")
            os.symlink(member.linkname, path)
        elif member.islnk():
            if _escapes("", member.linkname.lstrip("/")):
                raise BuildError(f"invalid hardlink {member.name!r} -> {member.linkname!r}")
            link_name = posixpath.normpath("/" + member.linkname).lstrip("/")
            # a hard link to a symlink links the symlink itself (CPython >= 3.14 follows by default)
            os.link(resolve_in_root(dest, link_name, follow_final=False), path,
                    follow_symlinks=False)
            continue
        elif member.ischr() or member.isblk() or member.isfifo():
            if not devices and not member.isfifo():
                continue
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else \
                stat.S_IFIFO
            os.mknod(path, kind | (member.mode & 0o7777), os.makedev(member.devmajor,
                                                                     member.devminor))
        else:
            continue
        if is_root:
            try:
                os.lchown(path, member.uid, member.gid)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                raise BuildError(f"archive entry {member.name!r}: owner {member.uid}:"
                                 f"{member.gid} is outside the ids this rootless pybk maps "
                                 f"({mapped_ids()})") from None
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        for key, value in (member.pax_headers or {}).items():
            attr = key[len("SCHILY.xattr."):]
            if key.startswith("SCHILY.xattr.") and not attr.startswith(OVERLAY_XATTR_PREFIXES):
                with contextlib.suppress(OSError):  # never let archive content steer overlayfs
                    os.setxattr(path, attr, value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
        mtime_ns = int(member.mtime * 1_000_000_000)
        if member.isdir():
            dir_times.append((path, mtime_ns))
        else:
            set_times(path, mtime_ns, mtime_ns)
    for path, mtime_ns in reversed(dir_times):
        set_times(path, mtime_ns, mtime_ns)


def _escapes(base_dir: str, link: str) -> bool:
    depth = len([c for c in base_dir.split("/") if c and c != "."])
    for comp in link.split("/"):
        if comp in ("", "."):
            continue
        depth = depth - 1 if comp == ".." else depth + 1
        if depth < 0:
            return True
    return False
