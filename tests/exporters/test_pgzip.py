"""The parallel gzip writer: any gzip reader reads it, and its bytes depend only on the data."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import subprocess

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
