"""gzip compression on every core: one gzip member whose deflate stream is made of blocks
compressed in threads (zlib releases the GIL), as pigz does.

Each 1 MiB block is deflated on its own, primed with the 32 KiB before it (so the ratio stays
that of one stream) and ended with a sync flush (so the blocks concatenate into one valid
stream); the last one ends the stream. The output depends only on the data, the level and the
block size, never on the number of threads, so layer digests stay reproducible. Any gzip reader
reads it; memory is bounded by a few blocks per thread.

Because a block's output is a function of the block, the 32 KiB before it, the level and whether
it is the last, a writer given a :class:`BlockReuse` looks each block up by a sha256 of exactly
those (and the zlib version) and copies the deflated bytes of an identical block of an earlier
stream instead of compressing it again; the stream's bytes are the same either way. A changed
layer of a few files in a large tree is then compressed only around the change.

A block that deflate cannot shrink (random data, or files already compressed: archives, images,
media) is stored instead of searched for matches: four 16 KiB samples spread over the block are
compressed at level 1 first, and when none of them shrinks by 2 %, the block is written as
deflate's stored blocks (its bytes plus 5 per 64 KiB, about what level 6 would produce for
such data, at the cost of a copy instead of ~25 ms of matching per MiB). The choice is a
function of the block's bytes, so the output still depends only on the data, the level and the
block size.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Protocol

BLOCK = 1 << 20
WINDOW = 1 << 15
#: the gzip header's length: the first block starts at this offset of the member
HEADER_SIZE = 10
#: names the block format in every key (v2: incompressible blocks are stored)
_KEY_PREFIX = f"pybk-pgzip-block-v2\0{zlib.ZLIB_RUNTIME_VERSION}\0".encode()
#: the incompressibility test: samples per block, their size, the gain that counts as one
_SAMPLES, _SAMPLE = 4, 16 << 10
_GAIN = 0.98


class BlockReuse(Protocol):
    """Deflated blocks of earlier streams, by :func:`block_key`."""

    def find(self, key: bytes) -> bytes | None:
        """The deflated bytes of the block ``key`` names, or None."""


def block_key(chunk: bytes, level: int, dictionary: bytes, last: bool) -> bytes:
    """What a block's deflated bytes depend on, hashed: the zlib version, level, whether it
    ends the stream, the window it is primed with and the block itself."""
    h = hashlib.sha256(_KEY_PREFIX)
    h.update(struct.pack("<BBI", level, last, len(dictionary)))
    h.update(dictionary)
    h.update(chunk)
    return h.digest()


def incompressible(chunk: bytes) -> bool:
    """Whether deflate cannot shrink ``chunk``: none of four 16 KiB samples spread over it
    shrinks by 2 % at level 1 (blocks under 64 KiB are always compressed)."""
    size = len(chunk)
    if size < _SAMPLES * _SAMPLE:
        return False
    step = (size - _SAMPLE) // (_SAMPLES - 1)
    for i in range(_SAMPLES):
        sample = chunk[i * step:i * step + _SAMPLE]
        if len(zlib.compress(sample, 1)) < _SAMPLE * _GAIN:
            return False
    return True


def _deflate(chunk: bytes, level: int, dictionary: bytes, last: bool) -> bytes:
    if level and incompressible(chunk):
        level = 0  # stored blocks: the window is not used
    if dictionary and level:
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=dictionary)
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(chunk) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _block(chunk: bytes, level: int, dictionary: bytes, last: bool,
           reuse: BlockReuse | None) -> tuple[bytes | None, bytes]:
    """``(key, deflated bytes)`` of one block (key None without ``reuse``)."""
    if reuse is None:
        return None, _deflate(chunk, level, dictionary, last)
    key = block_key(chunk, level, dictionary, last)
    found = reuse.find(key)
    return key, found if found is not None else _deflate(chunk, level, dictionary, last)


class ParallelGzipWriter:
    """A write-only binary stream compressing into ``out``; :meth:`close` finishes the member
    (it does not close ``out``). With ``reuse``, blocks found there are copied, not compressed,
    and :attr:`blocks` lists ``(key, offset, length, crc32)`` of every block's deflated bytes
    (offsets in the member), for the caller to remember once the stream is stored."""

    def __init__(self, out: IO[bytes], level: int = 6, *, block: int = BLOCK,
                 threads: int | None = None, reuse: BlockReuse | None = None):
        self.out = out
        self.level = level
        self.block = block
        self.threads = threads or os.cpu_count() or 1
        self.reuse = reuse
        self.blocks: list[tuple[bytes, int, int, int]] = []
        self._offset = HEADER_SIZE
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._pending: deque[Future[tuple[bytes | None, bytes]] | tuple[bytes | None, bytes]] \
            = deque()
        self._buffer = bytearray()
        self._tail = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        # RFC 1952 header: no name, mtime 0, XFL as gzip writes it, OS unknown
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        out.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes((xfl, 255)))

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._crc = zlib.crc32(view, self._crc)
        self._size += len(view)
        self._buffer += view
        while len(self._buffer) >= self.block:
            chunk = bytes(self._buffer[:self.block])
            del self._buffer[:self.block]
            self._submit(chunk, last=False)
        return len(view)

    def _submit(self, chunk: bytes, *, last: bool) -> None:
        dictionary, self._tail = self._tail, chunk[-WINDOW:]
        if self._pool is None:
            self._pending.append(_block(chunk, self.level, dictionary, last, self.reuse))
        else:
            self._pending.append(self._pool.submit(_block, chunk, self.level, dictionary,
                                                   last, self.reuse))
        while len(self._pending) > 2 * self.threads or (self._pending and last):
            self._drain_one()

    def _drain_one(self) -> None:
        done = self._pending.popleft()
        key, data = done if isinstance(done, tuple) else done.result()
        if key is not None:
            self.blocks.append((key, self._offset, len(data), zlib.crc32(data)))
        self._offset += len(data)
        self.out.write(data)

    def flush(self) -> None:
        """Blocks are written as they complete; nothing to do before :meth:`close`."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(bytes(self._buffer), last=True)
            self._buffer.clear()
            self.out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        finally:
            self._stop_threads()

    def _stop_threads(self) -> None:
        for pending in self._pending:
            if not isinstance(pending, tuple):
                pending.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ParallelGzipWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # an aborted layer: stop the threads, write no trailer
            self._closed = True
            self._stop_threads()
