"""The OCI content store: verified, atomic, thread-safe blob writes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from pybk.core.errors import StoreError
from pybk.core.store.content import BlobNotFoundError, ContentStore, DigestMismatchError


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_read_info_walk_delete(content_store):
    data = b"hello content store"
    digest = content_store.put_bytes(data)
    assert digest == digest_of(data)
    path = content_store.path(digest)
    assert path == content_store.root / "content/blobs/sha256" / digest.split(":")[1]
    assert content_store.has(digest) and path.read_bytes() == data
    assert content_store.info(digest) == len(data)
    with content_store.open(digest) as f:
        assert f.read() == data
    other = content_store.put_bytes(b"x" * 10)
    assert list(content_store.walk()) == sorted([(digest, len(data)), (other, 10)])
    assert content_store.delete(digest) is True
    assert content_store.delete(digest) is False
    assert not content_store.has(digest)
    with pytest.raises(BlobNotFoundError, match=digest):
        content_store.open(digest)
    with pytest.raises(BlobNotFoundError):
        content_store.info(digest)
    assert os.listdir(content_store.ingest_dir) == []


def test_streaming_writer_verifies_expected_digest_and_size(content_store):
    chunks = [os.urandom(1000) for _ in range(5)]
    data = b"".join(chunks)
    with content_store.writer(expected_digest=digest_of(data), expected_size=len(data)) as w:
        for chunk in chunks:
            w.write(chunk)
    assert w.digest == digest_of(data) and w.size == len(data)
    assert content_store.read_bytes(w.digest) == data


@pytest.mark.parametrize("bad", ["digest", "size"])
def test_mismatch_leaves_no_blob_and_no_ingest_file(content_store, bad):
    data = b"the real content"
    expected_digest = digest_of(b"something else") if bad == "digest" else digest_of(data)
    expected_size = len(data) + (1 if bad == "size" else 0)
    with pytest.raises(DigestMismatchError) as info, content_store.writer(
        expected_digest=expected_digest, expected_size=expected_size
    ) as w:
        w.write(data)
    assert expected_digest in str(info.value)
    assert info.value.actual_digest == digest_of(data)
    assert not content_store.has(expected_digest) and not content_store.has(digest_of(data))
    assert list(content_store.walk()) == []
    assert os.listdir(content_store.ingest_dir) == []


def test_exception_inside_writer_discards(content_store):
    with pytest.raises(RuntimeError), content_store.writer() as w:
        w.write(b"partial")
        raise RuntimeError("connection lost")
    assert list(content_store.walk()) == []
    assert os.listdir(content_store.ingest_dir) == []


def test_invalid_digests_are_refused(content_store):
    for bad in ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "G" * 64, "../../etc/passwd", ""]:
        with pytest.raises(StoreError, match="invalid digest"):
            content_store.path(bad)
    with pytest.raises(StoreError):
        content_store.writer(expected_digest="sha256:zz").__enter__()


def test_killed_writer_never_leaves_a_partial_blob(tmp_path):
    root = tmp_path / "store"
    script = (
        "import sys, time\n"
        "from pybk.core.store.content import ContentStore\n"
        f"store = ContentStore({str(root)!r})\n"
        "with store.writer() as w:\n"
        "    w.write(b'x' * 100000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    proc.kill()
    proc.wait()
    store = ContentStore(root)
    assert list(store.walk()) == []
    assert len(os.listdir(store.ingest_dir)) == 1  # the stray temp file, only in ingest/
    assert store.clean_ingest() == 1
    assert os.listdir(store.ingest_dir) == []


def test_concurrent_writers_of_same_and_different_blobs(content_store):
    payloads = [os.urandom(50_000) for _ in range(4)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            with content_store.writer(expected_digest=digest_of(data)) as w:
                for i in range(0, len(data), 4096):
                    w.write(data[i:i + 4096])
                    time.sleep(0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(payloads[i % 4],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(d for d, _ in content_store.walk()) == sorted(digest_of(p) for p in payloads)
    for p in payloads:
        assert content_store.read_bytes(digest_of(p)) == p
    assert os.listdir(content_store.ingest_dir) == []
