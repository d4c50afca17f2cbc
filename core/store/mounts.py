"""Mounting and unmounting through mount(2)/umount2(2), without a subprocess per mount.

``mount_all`` stacks a list of :class:`~pybk.core.interfaces.Mount` on one target (containerd's
``mount.All``), ``unmount_all`` takes everything at and under a target down again, and
``cleanup_stale_mounts`` removes what a killed process left behind, found in
``/proc/self/mountinfo``. Every failure is an ``OSError`` naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pybk.core.interfaces import Mount

if TYPE_CHECKING:
    import ctypes

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

# option -> (clear?, flag), as mount(8) reads them
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}

_PROPAGATION_OPTIONS = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# The kernel copies at most one page of mount data.
_MAX_DATA = os.sysconf("SC_PAGE_SIZE") - 1

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno kept for ``ctypes.get_errno`` (ctypes is imported
    here: a cached build mounts nothing and spares its ~3 ms)."""
    global _libc
    if _libc is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                              ctypes.c_ulong, ctypes.c_char_p]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc = lib
    return _libc


def _errno() -> int:
    """errno of the last libc call (:func:`libc` imported ctypes)."""
    import ctypes

    return ctypes.get_errno()


def _encode(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def sys_mount(source: str | None, target: str, fstype: str | None, flags: int,
              data: str | None = None) -> None:
    """mount(2); raises ``OSError(errno, message, target)``."""
    if libc().mount(_encode(source), _encode(target), _encode(fstype), flags,
                    _encode(data)) != 0:
        err = _errno()
        kind = fstype or "bind"
        raise OSError(err, f"mount {kind} {source!s} on {target}: {os.strerror(err)}", target)


def parse_options(options: Sequence[str]) -> tuple[int, int, list[str]]:
    """Split mount options into (flags, propagation flags, filesystem data options)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[opt]
        else:
            data.append(opt)
    return flags, propagation, data


def mount(m: Mount, target: str) -> None:
    """Mount one ``Mount`` on ``target``.

    A read-only bind needs a second call: the kernel ignores ``MS_RDONLY`` on the first bind.
    A FUSE type (``fuse3.PROGRAM``, as containerd names them) runs ``PROGRAM -o OPTIONS
    TARGET`` (``fuse-overlayfs``), which serves the mount until it is unmounted.
    """
    if m.type.startswith(FUSE_PREFIXES):
        _mount_fuse(m, target)
        return
    flags, propagation, data = parse_options(m.options)
    if m.type == "bind" or flags & MS_BIND:
        sys_mount(m.source, target, None, flags & ~MS_RDONLY | MS_BIND)
        remount_flags = flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if remount_flags:
            sys_mount(None, target, None, MS_REMOUNT | MS_BIND | remount_flags)
    else:
        with _short_data(m.type, data) as text:
            sys_mount(m.source or m.type, target, m.type, flags, text)
    if propagation:
        sys_mount(None, target, None, propagation)


#: mount types served by a FUSE program
FUSE_PREFIXES = ("fuse3.", "fuse.")


def _mount_fuse(m: Mount, target: str) -> None:
    import subprocess

    program = m.type.partition(".")[2]
    try:
        done = subprocess.run([program, "-o", ",".join(m.options), target],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"mount {m.type} on {target}: {program} not found",
                      target) from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise OSError(errno.EIO, f"mount {m.type} on {target}: {message}", target)


@contextlib.contextmanager
def _short_data(fstype: str, data: list[str]) -> Iterator[str | None]:
    """Mount data that fits in a page.

    Long overlay ``lowerdir`` lists (many layers) are shortened by naming each layer through an
    ``O_PATH`` descriptor (``/proc/self/fd/N``), kept open only for the mount call.
    """
    text = ",".join(data) or None
    if text is None or len(text) <= _MAX_DATA or fstype != "overlay":
        yield text
        return
    fds: list[int] = []
    try:
        short: list[str] = []
        for opt in data:
            key, _, value = opt.partition("=")
            if key in ("lowerdir", "upperdir", "workdir") and value:
                paths = []
                for path in value.split(":"):
                    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    fds.append(fd)
                    paths.append(f"/proc/self/fd/{fd}")
                opt = f"{key}={':'.join(paths)}"
            short.append(opt)
        yield ",".join(short)
    finally:
        for fd in fds:
            os.close(fd)


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount every entry on ``target`` in order; on failure, undo what was mounted."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(OSError):
                unmount(target, lazy=True)
        raise


def unmount(target: str, *, lazy: bool = False) -> None:
    """umount2(2) once; retries briefly while the target is busy."""
    flags = MNT_DETACH if lazy else 0
    raw = os.fsencode(target)
    for attempt in range(50):
        if libc().umount2(raw, flags) == 0:
            return
        err = _errno()
        if err != errno.EBUSY or attempt == 49:
            raise OSError(err, f"unmount {target}: {os.strerror(err)}", target)
        time.sleep(0.01)


def unmount_all(target: str, *, lazy: bool = False) -> None:
    """Unmount everything under ``target`` (deepest first), then every mount stacked on it."""
    target = os.path.abspath(target)
    for path in _deepest_first(find_mounts_under(target)):
        if path != target:
            _unmount_if_mounted(path, lazy)
    while True:
        try:
            unmount(target, lazy=lazy)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


def _unmount_if_mounted(path: str, lazy: bool) -> None:
    try:
        unmount(path, lazy=lazy)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount]) -> Iterator[str]:
    """Mount ``mounts`` on a fresh temporary directory; unmount and remove it afterwards."""
    target = tempfile.mkdtemp(prefix="pybk-mount-")
    try:
        mount_all(mounts, target)
        try:
            yield target
        finally:
            unmount_all(target)
    finally:
        if not find_mounts_under(target):
            shutil.rmtree(target, ignore_errors=True)


def _unescape(field: str) -> str:
    """Decode mountinfo's octal escapes (``\\040`` for a space …)."""
    if "\\" not in field:
        return field
    raw = os.fsencode(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        code = raw[i + 1:i + 4]
        if raw[i] == 0x5C and len(code) == 3 and code.isdigit():
            out.append(int(code, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def find_mounts_under(prefix: str) -> list[str]:
    """Mount points equal to or below ``prefix``, in mount order (from /proc/self/mountinfo)."""
    prefix = os.path.abspath(prefix)
    below = prefix.rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) < 5:
                continue
            point = _unescape(fields[4])
            if point == prefix or point.startswith(below):
                found.append(point)
    return found


def _deepest_first(points: list[str]) -> list[str]:
    # Later mounts may sit on earlier ones at the same depth: reverse mount order, then depth.
    ordered = list(reversed(points))
    return sorted(ordered, key=lambda p: p.rstrip("/").count("/"), reverse=True)


def cleanup_stale_mounts(prefix: str) -> list[str]:
    """Lazily unmount every mount at or under ``prefix``, deepest first; returns them."""
    points = _deepest_first(find_mounts_under(prefix))
    for path in points:
        _unmount_if_mounted(path, lazy=True)
    return points
