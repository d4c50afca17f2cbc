"""Layer tarballs: unpack them safely, and write them from directory trees.

``apply_layer`` streams a (gzip / zstd / plain) layer into a directory as if the directory were
the root of a filesystem: absolute names are taken relative to it, symlinks met on the way are
resolved inside it (as a chroot would), an existing symlink at an entry's own path is replaced,
never written through, and names or hard links that climb out with ``..`` are refused. OCI
whiteouts are applied (``.wh.NAME`` deletes, ``.wh..wh..opq`` hides the lower contents of a
directory), or, for overlayfs upper directories, turned into overlay whiteouts.

``write_diff_tar`` and ``write_overlay_upper_tar`` produce OCI layer tars (PAX, sorted, hard links
kept) from a lower/upper pair of trees or from an overlayfs upper directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import sys
import tarfile
import zlib
from collections import deque
from typing import IO, BinaryIO

from pybk.core.errors import InputError, NotAvailableError
from pybk.core.fs.diskguard import copy_bounded
from pybk.core.fs.tarwriter import (
    OVERLAY_XATTR_PREFIXES,
    LayerWriter,
    is_opaque,
    read_xattrs,
)
from pybk.core.userns import in_user_namespace, mapped_ids, overlay_opaque_xattr

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_XATTR_PAX = "SCHILY.xattr."
_MAX_SYMLINKS = 40
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------
# Decompression
# ------------------------------------------------------------------------------------------


class _Counting:
    """A read-only stream wrapper that counts (and, given ``digest``, hashes) bytes read."""

    def __init__(self, stream: IO[bytes], digest: str | None = None):
        self._stream = stream
        self.count = 0
        self.hash = None
        if digest:
            algorithm = digest.partition(":")[0]
            if algorithm not in ("sha256", "sha384", "sha512"):
                raise InputError(f"unsupported digest {digest!r}")
            self.hash = hashlib.new(algorithm)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        if self.hash is not None:
            self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        assert self.hash is not None
        return f"{self.hash.name}:{self.hash.hexdigest()}"


class _Prefixed:
    """``prefix`` followed by the rest of ``stream`` (undoes a peek)."""

    def __init__(self, prefix: bytes, stream: IO[bytes]):
        self._prefix = prefix
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0:
                data, self._prefix = self._prefix + self._stream.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            if len(data) < size:
                data += self._stream.read(size - len(data))
            return data
        return self._stream.read(size)


def layer_compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type; ValueError for anything else."""
    if media_type.endswith(("+gzip", ".tar.gzip")):
        return "gzip"
    if media_type.endswith(("+zstd", ".tar.zstd")):
        return "zstd"
    if media_type.endswith((".tar", "/tar")) or media_type == "application/x-tar":
        return "none"
    raise ValueError(f"not a layer media type: {media_type!r}")


def _compression(media_type: str | None, stream: IO[bytes]) -> tuple[str, IO[bytes]]:
    if media_type:
        try:
            return layer_compression(media_type), stream
        except ValueError:
            raise InputError(f"unsupported layer media type {media_type!r}") from None
    head = b""
    while len(head) < 4:
        more = stream.read(4 - len(head))
        if not more:
            break
        head += more
    kind = "gzip" if head[:2] == b"\x1f\x8b" else "zstd" if head == b"\x28\xb5\x2f\xfd" else "none"
    return kind, _Prefixed(head, stream)


def decompressed(stream: IO[bytes], media_type: str | None = None) -> IO[bytes]:
    """A stream of the uncompressed tar; ``media_type=None`` sniffs the compression."""
    kind, stream = _compression(media_type, stream)
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[arg-type]
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return stream


# ------------------------------------------------------------------------------------------
# Unpacking
# ------------------------------------------------------------------------------------------


def apply_layer(
    source: str | os.PathLike[str] | BinaryIO,
    dest_dir: str | os.PathLike[str],
    *,
    media_type: str | None = None,
    whiteout_style: str = "delete",
    digest: str | None = None,
    diff_id: str | None = None,
) -> int:
    """Unpack a layer into ``dest_dir``; returns the size of the uncompressed tar stream.

    :param media_type: the layer's media type (decides gzip / zstd / none); None sniffs.
    :param diff_id: when given, the sha256 of the uncompressed tar must be this (InputError
        otherwise, raised before the unpack is finished: the caller discards it).
    :param whiteout_style: ``delete`` removes whited-out paths; ``overlay`` writes overlay
        whiteouts (0/0 character devices, ``trusted.overlay.opaque=y``) for an overlay upper dir.
    :param digest: the blob's digest, ``diff_id`` the uncompressed tar's: both streams are
        hashed while unpacking, and a mismatch is an InputError naming the layer (the caller
        discards what was unpacked).
    """
    if whiteout_style not in ("delete", "overlay"):
        raise ValueError(f"whiteout_style must be 'delete' or 'overlay', not {whiteout_style!r}")
    os.makedirs(dest_dir, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            raw: IO[bytes] = stack.enter_context(open(source, "rb"))
        else:
            raw = source
        hashed = _Counting(raw, digest)
        plain = decompressed(hashed, media_type)  # type: ignore[arg-type]
        counter = _Counting(plain, diff_id)
        unpacker = _Unpacker(os.path.realpath(dest_dir), whiteout_style)
        name = f"layer {digest}: " if digest else ""
        try:
            with tarfile.open(fileobj=counter, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    unpacker.add(member, tar)
            counter.drain()
        except Exception as exc:
            if digest:  # a tampered blob: say so rather than how it fails to unpack
                try:
                    hashed.drain()
                except Exception:  # noqa: BLE001 - the blob cannot be read: the first error
                    pass
                else:
                    _check_digest(name, "content", hashed.digest(), digest)
            if isinstance(exc, (tarfile.TarError, EOFError, zlib.error)) or (
                    isinstance(exc, OSError) and exc.errno is None):
                raise InputError(f"{name}corrupt layer archive: {exc}") from None
            if type(exc).__name__ == "ZstdError":
                raise InputError(f"{name}corrupt zstd layer archive: {exc}") from None
            raise
        if digest:
            hashed.drain()
            _check_digest(name, "content", hashed.digest(), digest)
        if diff_id:
            _check_digest(name or f"layer {diff_id}: ", "uncompressed content (diff_id)",
                          counter.digest(), diff_id)
        unpacker.finish()
        if unpacker.skipped_devices:
            _warn_devices(name, unpacker.skipped_devices)
        return counter.count


def _warn_devices(name: str, skipped: list[str]) -> None:
    """One warning per layer whose device nodes a rootless pybk skipped."""
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    sys.stderr.write(f"warning: {name or 'layer: '}{len(skipped)} device node(s) skipped "
                     f"({', '.join(skipped[:5])}{more}): a rootless pybk cannot make device "
                     "nodes\n")


def _check_digest(name: str, what: str, got: str, expected: str) -> None:
    if got != expected:
        raise InputError(f"{name}{what} digest is {got}, expected {expected}: the blob was "
                         "altered or does not belong to this image")


class _Unpacker:
    def __init__(self, root: str, whiteout_style: str):
        self.root = root
        self.overlay = whiteout_style == "overlay"
        self.privileged = os.geteuid() == 0
        #: device nodes can be made (real root; never in a user namespace)
        self.devices = self.privileged and not in_user_namespace()
        #: device entries skipped (rootless), for one warning per layer
        self.skipped_devices: list[str] = []
        self.written: set[str] = set()
        self.dir_times: list[tuple[str, int, int]] = []

    # -- paths

    @staticmethod
    def _clean(name: str, what: str = "entry") -> str:
        """``name`` as a path relative to the root; InputError if ``..`` climbs above it."""
        parts: list[str] = []
        for component in name.split("/"):
            if component in ("", "."):
                continue
            if component == "..":
                if not parts:
                    raise InputError(f"layer {what} {name!r} points outside the layer root")
                parts.pop()
            else:
                parts.append(component)
        return "/".join(parts)

    def _resolve_dir(self, rel: str, *, create: bool, entry: str) -> str | None:
        """Real path of directory ``rel``, following symlinks as if ``root`` were ``/``.

        Missing directories are created (mode 0755) when ``create``; otherwise None is returned.
        """
        current = self.root
        pending = deque(rel.split("/")) if rel else deque()
        hops = 0
        while pending:
            component = pending.popleft()
            if component in ("", "."):
                continue
            if component == "..":
                if current != self.root:
                    current = os.path.dirname(current)
                continue
            candidate = os.path.join(current, component)
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(candidate, 0o755)
                self.written.add(candidate)
                current = candidate
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise InputError(f"layer entry {entry!r}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = self.root
                pending.extendleft(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise InputError(f"layer entry {entry!r}: {candidate[len(self.root):]!r} is not a directory")
            current = candidate
        return current

    # -- entries

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        rel = self._clean(member.name)
        if not rel:
            return  # the root directory itself
        parent_rel, _, base = rel.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent_rel, base, member.name)
            return
        parent = self._resolve_dir(parent_rel, create=True, entry=member.name)
        assert parent is not None
        target = os.path.join(parent, base)
        existing = _lstat(target)

        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                _remove(target)
                existing = None
            if existing is None:
                os.mkdir(target, 0o700)
        elif member.islnk():
            self._hardlink(member, target, existing)
            self.written.add(target)
            return
        else:
            if existing is not None:
                _remove(target)
            if member.isreg():
                self._write_file(member, tar, target)
            elif member.issym():
                os.symlink(member.linkname, target)
            elif member.ischr() or member.isblk():
                if not self.devices:
                    # device nodes need real root; skipped like rootless engines do
                    self.skipped_devices.append(member.name)
                    return
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                os.mknod(target, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            elif member.isfifo():
                os.mkfifo(target, 0o600)
            else:
                return  # unknown entry types are ignored
        self.written.add(target)
        self._metadata(member, target)

    def _write_file(self, member: tarfile.TarInfo, tar: tarfile.TarFile, target: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            data = tar.extractfile(member)
            if data is not None:
                copy_bounded(data, out, self.root, f"layer entry {member.name!r}")

    def _hardlink(self, member: tarfile.TarInfo, target: str, existing: os.stat_result | None) -> None:
        link_rel = self._clean(member.linkname, what="hard link target")
        if not link_rel:
            raise InputError(f"layer entry {member.name!r}: hard link to the layer root")
        link_parent_rel, _, link_base = link_rel.rpartition("/")
        link_parent = self._resolve_dir(link_parent_rel, create=False, entry=member.name)
        source = os.path.join(link_parent, link_base) if link_parent is not None else None
        source_st = _lstat(source) if source is not None else None
        if source is None or source_st is None:
            raise InputError(
                f"layer entry {member.name!r}: hard link target {member.linkname!r} does not exist"
            )
        if stat.S_ISDIR(source_st.st_mode):
            raise InputError(f"layer entry {member.name!r}: hard link to directory {member.linkname!r}")
        if source == target:
            return
        if existing is not None:
            _remove(target)
        os.link(source, target, follow_symlinks=False)

    def _whiteout(self, parent_rel: str, base: str, name: str) -> None:
        victim_name = base[len(WHITEOUT_PREFIX):]
        if base != OPAQUE_WHITEOUT and (
            victim_name in ("", ".", "..") or victim_name.startswith(WHITEOUT_PREFIX)
        ):
            raise InputError(f"layer entry {name!r}: malformed whiteout")
        parent = self._resolve_dir(parent_rel, create=self.overlay, entry=name)
        if parent is None:
            return
        if base == OPAQUE_WHITEOUT:
            if self.overlay:
                self._require_root(name)
                os.setxattr(parent, overlay_opaque_xattr(), b"y", follow_symlinks=False)
                return
            with os.scandir(parent) as entries:
                for entry in entries:
                    if entry.path not in self.written:
                        _remove(entry.path)
            return
        victim = os.path.join(parent, victim_name)
        if victim in self.written:
            return
        existing = _lstat(victim)
        if self.overlay:
            self._require_root(name)
            if existing is not None:
                _remove(victim)
            os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0))
        elif existing is not None:
            _remove(victim)

    def _require_root(self, name: str) -> None:
        if not self.privileged:
            raise NotAvailableError(f"layer entry {name!r}: overlay whiteouts need root")

    def _metadata(self, member: tarfile.TarInfo, target: str) -> None:
        is_link = member.issym()
        if self.privileged:
            try:
                os.chown(target, member.uid, member.gid, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                raise InputError(f"layer entry {member.name!r}: owner {member.uid}:"
                                 f"{member.gid} is outside the ids this rootless pybk maps "
                                 f"({mapped_ids()}); give the user a larger range in "
                                 "/etc/subuid and /etc/subgid") from None
        if not is_link:
            os.chmod(target, member.mode & 0o7777)
        for key, value in sorted(member.pax_headers.items()):
            if not key.startswith(_XATTR_PAX):
                continue
            attr = key[len(_XATTR_PAX):]
            if attr.startswith(OVERLAY_XATTR_PREFIXES):
                continue  # never let layer content steer overlayfs
            with contextlib.suppress(OSError):
                os.setxattr(target, attr, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        mtime_ns = int(round(member.mtime * 1_000_000_000))
        atime_ns = mtime_ns
        if "atime" in member.pax_headers:
            with contextlib.suppress(ValueError):
                atime_ns = int(round(float(member.pax_headers["atime"]) * 1_000_000_000))
        if member.isdir():
            self.dir_times.append((target, atime_ns, mtime_ns))
        else:
            _utime(target, atime_ns, mtime_ns)

    def finish(self) -> None:
        """Set directory times last: creating their children changed them."""
        for path, atime_ns, mtime_ns in reversed(self.dir_times):
            _utime(path, atime_ns, mtime_ns)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _utime(path: str, atime_ns: int, mtime_ns: int) -> None:
    try:
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EINVAL):
            raise


# ------------------------------------------------------------------------------------------
# Writing layers
# ------------------------------------------------------------------------------------------


def _sorted_names(path: str) -> list[str]:
    return sorted(os.listdir(path), key=os.fsencode)


def write_diff_tar(
    lower_dir: str | os.PathLike[str] | None,
    upper_dir: str | os.PathLike[str],
    out_stream: IO[bytes],
    *,
    source_date_epoch: int | None = None,
) -> None:
    """Write the changes from ``lower_dir`` to ``upper_dir`` as an OCI layer tar.

    New and changed entries are archived with their parent directories; entries missing from
    ``upper_dir`` become ``.wh.`` whiteouts. A file counts as changed when its type, mode,
    owner, xattrs, size, mtime, link target or device differ. Entries are sorted; mtimes are
    clamped to ``source_date_epoch`` when it is given.
    """
    upper = os.fspath(upper_dir)
    lower = os.fspath(lower_dir) if lower_dir is not None else None
    writer = LayerWriter(out_stream, source_date_epoch)
    whiteout_mtime = source_date_epoch if source_date_epoch is not None else 0

    def ensure_parents(rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix not in writer.emitted_dirs:
                path = os.path.join(upper, prefix)
                writer.add(path, prefix, os.lstat(path))

    def walk(rel: str, lower_present: bool) -> None:
        upper_path = os.path.join(upper, rel) if rel else upper
        names = _sorted_names(upper_path)
        lower_names: set[str] = set()
        if lower_present and lower is not None:
            lower_names = set(os.listdir(os.path.join(lower, rel) if rel else lower))
        present = set(names)
        for name in sorted(present | lower_names, key=os.fsencode):
            child = f"{rel}/{name}" if rel else name
            if name not in present:
                ensure_parents(child)
                writer.whiteout(rel, WHITEOUT_PREFIX + name, whiteout_mtime)
                continue
            upper_child = os.path.join(upper, child)
            ust = os.lstat(upper_child)
            lst = os.lstat(os.path.join(lower, child)) if lower is not None and name in lower_names else None
            lower_child = os.path.join(lower, child) if lst is not None and lower is not None else None
            if stat.S_ISDIR(ust.st_mode):
                both_dirs = lst is not None and stat.S_ISDIR(lst.st_mode)
                if not both_dirs or not _same(upper_child, ust, lower_child, lst):
                    ensure_parents(child)
                    writer.add(upper_child, child, ust)
                walk(child, both_dirs)
            elif lst is None or not _same(upper_child, ust, lower_child, lst):
                ensure_parents(child)
                writer.add(upper_child, child, ust)

    try:
        walk("", lower is not None)
    finally:
        writer.close()


def _same(upper: str, ust: os.stat_result, lower: str | None, lst: os.stat_result | None) -> bool:
    if lst is None or lower is None:
        return False
    if stat.S_IFMT(ust.st_mode) != stat.S_IFMT(lst.st_mode):
        return False
    if (ust.st_mode, ust.st_uid, ust.st_gid) != (lst.st_mode, lst.st_uid, lst.st_gid):
        return False
    mode = ust.st_mode
    if stat.S_ISLNK(mode):
        return os.readlink(upper) == os.readlink(lower) and read_xattrs(upper) == read_xattrs(lower)
    if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and ust.st_rdev != lst.st_rdev:
        return False
    if stat.S_ISREG(mode) and ust.st_size != lst.st_size:
        return False
    if ust.st_mtime_ns != lst.st_mtime_ns:
        return False
    return read_xattrs(upper) == read_xattrs(lower)


def write_overlay_upper_tar(
    upper_dir: str | os.PathLike[str],
    out_stream: IO[bytes],
    *,
    source_date_epoch: int | None = None,
) -> None:
    """Write an overlayfs upper directory as an OCI layer tar.

    0/0 character devices become ``.wh.NAME`` entries and opaque directories
    (``trusted.overlay.opaque=y``) get a ``.wh..wh..opq`` entry; overlay xattrs are dropped.
    """
    upper = os.fspath(upper_dir)
    writer = LayerWriter(out_stream, source_date_epoch)

    def walk(rel: str) -> None:
        path = os.path.join(upper, rel) if rel else upper
        for name in _sorted_names(path):
            child = f"{rel}/{name}" if rel else name
            child_path = os.path.join(upper, child)
            st = os.lstat(child_path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                writer.whiteout(rel, WHITEOUT_PREFIX + name, st.st_mtime_ns // 1_000_000_000)
                continue
            writer.add(child_path, child, st)
            if stat.S_ISDIR(st.st_mode):
                if is_opaque(child_path):
                    writer.whiteout(child, OPAQUE_WHITEOUT, st.st_mtime_ns // 1_000_000_000)
                walk(child)

    try:
        walk("")
    finally:
        writer.close()


