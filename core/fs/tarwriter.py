"""Writing layer tars: PAX entries for the files of a tree, byte for byte what
``tarfile.open(mode="w|", format=PAX_FORMAT)`` writes, without most of its cost.

The common entry (an ASCII name and link target of at most 100 characters, no extended
attributes, numbers that fit their octal fields, not a device) has a plain ustar header, which
:func:`ustar_header` formats directly; any other entry goes through ``TarInfo.tobuf`` as before.
Before the first use, both are compared on sample entries of every kind; if this Python's
``tarfile`` formats any of them differently, every entry goes through ``tarfile``. The stream is
written in blocks of about 1 MiB (the consumer hashes and compresses it), with file contents read
in large pieces; the end of archive (two zero blocks, then zeros up to a multiple of 10 KiB) is
``tarfile``'s.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from typing import IO

from pybk.core.errors import InputError

__all__ = ["OVERLAY_XATTR_PREFIXES", "LayerWriter", "read_xattrs", "ustar_header"]

BLOCKSIZE = tarfile.BLOCKSIZE
RECORDSIZE = tarfile.RECORDSIZE
#: xattrs that steer overlayfs: never taken from, nor written into, layer or archive content
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
#: what marks a directory opaque: overlayfs's (as root, and in a user namespace), fuse-overlayfs's
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")


def is_opaque(path: str) -> bool:
    """A directory an overlay marked opaque (:data:`OPAQUE_XATTRS`)."""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False
_XATTR_PAX = "SCHILY.xattr."
_FLUSH = 1 << 20
_READ = 1 << 20
_NUL_BLOCK = bytes(BLOCKSIZE)
_MAX_ID = 8 ** 7  # what an 8-byte octal field holds
_MAX_BIG = 8 ** 11  # what a 12-byte octal field holds
_fast: bool | None = None


def read_xattrs(path: str) -> dict[str, bytes]:
    """A file's extended attributes (none when they cannot be read)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = os.getxattr(path, name, follow_symlinks=False)
    return values


def ustar_header(name: str, mode: int, uid: int, gid: int, size: int, mtime: int,
                 kind: bytes, linkname: str = "") -> bytes | None:
    """The 512-byte header ``tarfile`` writes in PAX format for an entry needing no extended
    header and no device numbers (uname and gname empty); None for any other entry."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"  # as TarInfo.get_info names a directory
    if not (name.isascii() and linkname.isascii() and len(name) <= 100
            and len(linkname) <= 100 and 0 <= uid < _MAX_ID and 0 <= gid < _MAX_ID
            and 0 <= size < _MAX_BIG and 0 <= mtime < _MAX_BIG
            and kind not in (tarfile.CHRTYPE, tarfile.BLKTYPE)):
        return None
    head = b"".join((
        name.encode("ascii").ljust(100, b"\0"),
        b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime),
        b"        ", kind, linkname.encode("ascii").ljust(100, b"\0"), tarfile.POSIX_MAGIC))
    buf = head.ljust(BLOCKSIZE, b"\0")
    return buf[:148] + b"%06o\0" % sum(buf) + buf[155:]


def _tarfile_header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def _info(name: str, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
          linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    info.type, info.linkname = kind, linkname
    info.uname = info.gname = ""
    return info


def fast_headers() -> bool:
    """Whether :func:`ustar_header` agrees with this Python's ``tarfile`` (checked once)."""
    global _fast
    if _fast is None:
        samples = [
            ("app/main.py", 0o644, 0, 0, 1234, 1_700_000_000, tarfile.REGTYPE, ""),
            ("app/", 0o755, 1000, 1000, 0, 0, tarfile.DIRTYPE, ""),
            ("app/link", 0o777, 0, 0, 0, 5, tarfile.SYMTYPE, "../target/file"),
            ("app/hard", 0o600, 7, 8, 0, 8 ** 11 - 1, tarfile.LNKTYPE, "app/main.py"),
            ("app/fifo", 0o640, 8 ** 7 - 1, 0, 0, 1, tarfile.FIFOTYPE, ""),
            ("app/.wh.gone", 0, 0, 0, 0, 0, tarfile.REGTYPE, ""),
            ("x" * 100, 0o4755, 0, 0, 8 ** 11 - 1, 0, tarfile.REGTYPE, "y" * 100),
        ]
        try:
            _fast = all(ustar_header(*s) == _tarfile_header(_info(*s)) for s in samples)
        except Exception:
            _fast = False
    return _fast


class LayerWriter:
    """Writes PAX tar entries for files of one tree into ``out``, keeping hard links as links;
    mtimes are clamped to ``source_date_epoch`` when it is given. :meth:`close` ends the
    archive (it does not close ``out``)."""

    def __init__(self, out: IO[bytes], source_date_epoch: int | None):
        self.out = out
        self.epoch = source_date_epoch
        self.links: dict[tuple[int, int], str] = {}
        self.emitted_dirs: set[str] = set()
        self._buf = bytearray()
        self._offset = 0
        self._fast = fast_headers()
        self._closed = False

    def _mtime(self, seconds: int) -> int:
        return min(seconds, self.epoch) if self.epoch is not None else seconds

    def _write(self, data: bytes) -> None:
        self._buf += data
        self._offset += len(data)
        if len(self._buf) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self.out.write(self._buf)
            self._buf = bytearray()

    def _entry(self, name: str, mode: int, uid: int, gid: int, size: int, mtime: int,
               kind: bytes, linkname: str = "", pax: dict[str, str] | None = None,
               rdev: int = 0) -> None:
        header = None
        if self._fast and not pax:
            header = ustar_header(name, mode, uid, gid, size, mtime, kind, linkname)
        if header is None:
            info = _info(name, mode, uid, gid, size, mtime, kind, linkname)
            info.pax_headers = dict(pax or {})
            if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = os.major(rdev), os.minor(rdev)
            header = _tarfile_header(info)
        self._write(header)

    def add(self, path: str, rel: str, st: os.stat_result) -> None:
        mode = st.st_mode
        name = rel + "/" if stat.S_ISDIR(mode) else rel
        xattrs = {k: v for k, v in read_xattrs(path).items()
                  if not k.startswith(OVERLAY_XATTR_PREFIXES)}
        pax = {_XATTR_PAX + k: xattrs[k].decode("utf-8", "surrogateescape")
               for k in sorted(xattrs)}
        common = (stat.S_IMODE(mode), st.st_uid, st.st_gid)
        mtime = self._mtime(st.st_mtime_ns // 1_000_000_000)
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                self._entry(name, *common, 0, mtime, tarfile.LNKTYPE, self.links[key], pax)
                return
            if st.st_nlink > 1:
                self.links[key] = rel
            self._entry(name, *common, st.st_size, mtime, tarfile.REGTYPE, "", pax)
            self._content(path, st.st_size)
        elif stat.S_ISDIR(mode):
            self._entry(name, *common, 0, mtime, tarfile.DIRTYPE, "", pax)
            self.emitted_dirs.add(rel)
        elif stat.S_ISLNK(mode):
            self._entry(name, *common, 0, mtime, tarfile.SYMTYPE, os.readlink(path), pax)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            self._entry(name, *common, 0, mtime, kind, "", pax, rdev=st.st_rdev)
        elif stat.S_ISFIFO(mode):
            self._entry(name, *common, 0, mtime, tarfile.FIFOTYPE, "", pax)
        # sockets are not archived

    def _content(self, path: str, size: int) -> None:
        """Exactly ``size`` bytes of the file, then the padding to a whole block; a file that
        shrank while archived is an error (one that grew is cut at ``size``)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            left = size
            if size >= _FLUSH:
                self._flush()
            while left:
                data = os.read(fd, min(left, _READ))
                if not data:
                    raise InputError(f"{path} changed size while it was archived")
                left -= len(data)
                if size >= _FLUSH:
                    self.out.write(data)
                    self._offset += len(data)
                else:
                    self._write(data)
        finally:
            os.close(fd)
        if size % BLOCKSIZE:
            self._write(_NUL_BLOCK[size % BLOCKSIZE:])

    def whiteout(self, parent_rel: str, name: str, mtime: int) -> None:
        self._entry(f"{parent_rel}/{name}" if parent_rel else name, 0, 0, 0, 0,
                    self._mtime(mtime), tarfile.REGTYPE)

    def close(self) -> None:
        """Two zero blocks, then zeros up to a whole record, as ``tarfile`` ends an archive."""
        if self._closed:
            return
        self._closed = True
        self._write(bytes(2 * BLOCKSIZE))
        if self._offset % RECORDSIZE:
            self._write(bytes(RECORDSIZE - self._offset % RECORDSIZE))
        self._flush()
