"""The parallel gzip writer: any gzip reader reads it, and its bytes depend only on the data."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import subprocess
import zlib

import pytest

from pybk.core.images.pgzip import ParallelGzipWriter

BLOCK = 64 * 1024  # small blocks: many of them, quickly


def _text(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 8)).hex().encode() for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _compress(data: bytes, *, threads: int, level: int = 6, piece: int = 10_000) -> bytes:
    out = io.BytesIO()
    with ParallelGzipWriter(out, level, block=BLOCK, threads=threads) as writer:
        for i in range(0, len(data), piece):
            writer.write(data[i:i + piece])
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 123])
def test_roundtrip_through_python_and_gzip_tool(size, tmp_path):
    data = _text(size)
    blob = _compress(data, threads=3)
    assert gzip.decompress(blob) == data
    if shutil.which("gzip"):
        path = tmp_path / "blob.gz"
        path.write_bytes(blob)
        tool = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True)
        assert tool.stdout == data


def test_bytes_depend_on_data_level_and_block_only():
    data = _text(7 * BLOCK) + random.Random(3).randbytes(BLOCK)  # text and incompressible
    one, four = _compress(data, threads=1), _compress(data, threads=4, piece=333)
    assert one == four
    assert _compress(data, threads=2, level=1) != one
    assert one[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, OS unknown


def test_ratio_close_to_one_stream():
    data = _text(16 * BLOCK)
    single = gzip.compress(data, compresslevel=6, mtime=0)
    # each block is primed with the 32 KiB before it: barely larger than one stream
    assert len(_compress(data, threads=2)) <= len(single) * 1.01


def test_failure_inside_writes_no_trailer_and_propagates():
    out = io.BytesIO()
    with pytest.raises(RuntimeError), ParallelGzipWriter(out, 6, block=BLOCK, threads=2) as w:
        w.write(_text(3 * BLOCK))
        raise RuntimeError("tar failed")
    with pytest.raises(EOFError):
        gzip.decompress(out.getvalue())


class _Blocks:
    """A BlockReuse over the streams written before: key → deflated bytes."""

    def __init__(self):
        self.known: dict[bytes, bytes] = {}
        self.hits = 0

    def find(self, key):
        found = self.known.get(key)
        self.hits += found is not None
        return found

    def learn(self, writer, blob: bytes):
        for key, offset, length, crc in writer.blocks:
            data = blob[offset:offset + length]
            assert zlib.crc32(data) == crc
            self.known[key] = data


def _compress_reusing(data: bytes, reuse, *, threads: int = 2) -> tuple[bytes, ParallelGzipWriter]:
    out = io.BytesIO()
    with ParallelGzipWriter(out, 6, block=BLOCK, threads=threads, reuse=reuse) as writer:
        for i in range(0, len(data), 5_000):
            writer.write(data[i:i + 5_000])
    return out.getvalue(), writer


@pytest.mark.parametrize("threads", [1, 3])
def test_reused_blocks_give_the_same_bytes_as_compressing(threads):
    rng = random.Random(11)
    first = _text(4 * BLOCK) + rng.randbytes(3 * BLOCK) + _text(BLOCK // 2, seed=3)
    blocks = _Blocks()
    blob, writer = _compress_reusing(first, blocks, threads=threads)
    assert blob == _compress(first, threads=1)  # looking blocks up changes nothing
    assert blocks.hits == 0 and len(writer.blocks) == 8
    blocks.learn(writer, blob)
    # one byte changed near the end of the sixth block; then the same data again
    changed = first[:6 * BLOCK - 100] + b"!" + first[6 * BLOCK - 99:]
    again, writer = _compress_reusing(changed, blocks, threads=threads)
    assert again == _compress(changed, threads=1)
    assert gzip.decompress(again) == changed
    # blocks 1-5 and 8 are reused; 7 is unchanged but primed with the end of the changed 6th
    assert blocks.hits == 6
    blocks.learn(writer, again)
    blocks.hits = 0
    assert _compress_reusing(first, blocks, threads=threads)[0] == blob
    assert blocks.hits == 8


def test_block_keys_depend_on_level_window_and_end():
    from pybk.core.images.pgzip import block_key

    chunk = _text(1000)
    keys = {block_key(chunk, 6, b"", False), block_key(chunk, 1, b"", False),
            block_key(chunk, 6, b"x", False), block_key(chunk, 6, b"", True),
            block_key(chunk + b"y", 6, b"", False), block_key(chunk[1:], 6, chunk[:1], False)}
    assert len(keys) == 6


def test_incompressible_blocks_are_stored_and_the_rest_compressed():
    """Random data is written as deflate's stored blocks (no match search), text next to it is
    still compressed; both read back, and the size stays what level 6 gives such data."""
    from pybk.core.images.pgzip import incompressible

    noise = random.Random(5).randbytes(4 * BLOCK)
    text = _text(4 * BLOCK)
    assert incompressible(noise[:BLOCK]) and not incompressible(text[:BLOCK])
    # a block that is mostly random but has text in one sample is compressed normally
    mixed = noise[:BLOCK - 20_000] + text[:20_000]
    assert not incompressible(mixed)
    blob = _compress(noise + text, threads=2)
    assert gzip.decompress(blob) == noise + text
    deflate = zlib.decompressobj(-zlib.MAX_WBITS)
    assert deflate.decompress(blob[10:])[:len(noise)] == noise
    # stored: the random part costs its size plus 5 bytes per 64 KiB stored block
    assert len(_compress(noise, threads=2)) <= len(noise) + 5 * (len(noise) // 65535 + 2) + 64
    assert len(_compress(text, threads=2)) < len(text) * 0.7  # text still deflated
    # level 6 on the same noise is no smaller
    assert len(gzip.compress(noise, 6, mtime=0)) >= len(_compress(noise, threads=2)) - 64
