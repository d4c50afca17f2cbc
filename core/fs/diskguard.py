"""Bounded extraction: an archive or layer never fills the disk.

Decompression bombs (a few KiB of gzip or zstd that expand to terabytes) and sparse or huge
declared files are written through :func:`copy_bounded`, which checks the free space of the
destination filesystem every :data:`CHECK_EVERY` bytes and stops with a clear error when less
than :func:`reserve` would be left. Memory stays bounded too: everything is streamed in
1 MiB chunks.
"""

from __future__ import annotations

import os
from typing import IO

from pybk.core.errors import StoreError

__all__ = ["DiskSpaceError", "copy_bounded", "reserve"]

#: free space always kept on the store's filesystem while unpacking (bytes); the larger of
#: this and :data:`MIN_FREE_RATIO` of the filesystem's size
MIN_FREE_BYTES = 512 << 20
MIN_FREE_RATIO = 0.02
#: how often (bytes written) the free space is looked at
CHECK_EVERY = 32 << 20
_CHUNK = 1 << 20


class DiskSpaceError(StoreError):
    """Unpacking stopped: it would have left too little free disk space."""


def reserve(path: str) -> tuple[int, int]:
    """``(free bytes, bytes to keep free)`` on the filesystem of ``path``."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    return free, max(MIN_FREE_BYTES, int(st.f_blocks * st.f_frsize * MIN_FREE_RATIO))


def check_space(path: str, what: str) -> None:
    free, keep = reserve(path)
    if free < keep:
        raise DiskSpaceError(
            f"{what}: stopped unpacking, only {free >> 20} MiB of disk space left (pybk keeps "
            f"{keep >> 20} MiB free); the archive expands too much (a decompression bomb?)")


def copy_bounded(source: IO[bytes], out: IO[bytes], where: str, what: str) -> int:
    """Copy ``source`` to ``out`` (a file under directory ``where``) in chunks; raise
    :class:`DiskSpaceError` when the disk nears full. Returns the bytes copied."""
    total = 0
    since = 0
    check_space(where, what)
    while True:
        chunk = source.read(_CHUNK)
        if not chunk:
            return total
        out.write(chunk)
        total += len(chunk)
        since += len(chunk)
        if since >= CHECK_EVERY:
            since = 0
            out.flush()
            check_space(where, what)
