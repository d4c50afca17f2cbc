"""What the hostile corpus found, as fast unit tests (no build)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from pybk.core.errors import BuildError, PybkError
from pybk.core.fs import diskguard
from pybk.core.fs.archive import apply_layer
from pybk.core.fs.unpack import unpack_archive

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as hostile  # noqa: E402


def _case(name: str, **kw) -> hostile.Case:
    return {c.name: c for c in hostile.corpus("/nonexistent-canary", **kw)}[name]


@pytest.mark.parametrize("name", ["truncated-header", "truncated-data", "huge-declared-size"])
def test_add_of_a_damaged_tar_is_a_build_error(name, tmp_path):
    # was: tarfile.ReadError ("unexpected end of data") escaping as a traceback
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.tar").write_bytes(_case(name).data)
    (tmp_path / "dst").mkdir()
    with pytest.raises(BuildError, match=r"failed to unpack /x.tar: corrupt archive"):
        unpack_archive(str(tmp_path / "src"), "/x.tar", str(tmp_path / "dst"), "/", None, None)


@pytest.fixture
def tight_disk(tmp_path, monkeypatch):
    free, _ = diskguard.reserve(str(tmp_path))
    monkeypatch.setattr(diskguard, "MIN_FREE_BYTES", max(free - (48 << 20), 0))
    monkeypatch.setattr(diskguard, "MIN_FREE_RATIO", 0.0)
    monkeypatch.setattr(diskguard, "CHECK_EVERY", 4 << 20)


@pytest.mark.parametrize("name", ["gzip-bomb", "zstd-bomb", "sparse-bomb"])
def test_bombs_stop_before_the_disk_fills(name, tmp_path, tight_disk):
    # was: written in full (a 1 TiB sparse entry, or any bomb, until the disk was full)
    case = _case(name, bomb_size=128 * hostile.MiB)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.tar").write_bytes(case.data)
    (tmp_path / "dst").mkdir()
    with pytest.raises(diskguard.DiskSpaceError, match="stopped unpacking"):
        unpack_archive(str(tmp_path / "src"), "/x.tar", str(tmp_path / "dst"), "/", None, None)
    with pytest.raises(PybkError, match="stopped unpacking"):
        apply_layer(io.BytesIO(case.data), tmp_path / "layer")


def test_copy_bounded_copies_when_there_is_room(tmp_path):
    out = io.BytesIO()
    assert diskguard.copy_bounded(io.BytesIO(b"x" * 3_000_000), out, str(tmp_path), "t") == \
        3_000_000


def test_a_layer_must_match_its_diff_id(tmp_path):
    # was: not checked — a layer whose config names another layer's diff id was unpacked
    # and recorded under that chain id (an unpacked-layer cache poisoning)
    import hashlib

    data = _case("gzip-good").data
    import gzip

    right = "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert apply_layer(io.BytesIO(data), tmp_path / "a", diff_id=right) > 0
    with pytest.raises(PybkError, match=r"\(diff_id\) digest is"):
        apply_layer(io.BytesIO(data), tmp_path / "b", diff_id="sha256:" + "1" * 64)
