"""The OCI content store: verified blobs at ``<root>/content/blobs/<algorithm>/<hex>``.

Writes stream into ``<root>/content/ingest/`` and are renamed into place only once digest and
size verify, after an fsync; a failed or killed write leaves at most a stray ingest file (removed
by ``clean_ingest``), never a partial blob. All methods are safe to call from several threads:
every writer owns its temporary file and the final rename is atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pybk.core.errors import StoreError
from pybk.core.store.locks import pid_alive

_DIGEST = re.compile(r"(sha256|sha512):([0-9a-f]+)")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_CHUNK = 1 << 20


class BlobNotFoundError(StoreError):
    """The store holds no blob with this digest."""

    def __init__(self, digest: str):
        self.digest = digest
        super().__init__(f"blob {digest} not found in the content store")


class DigestMismatchError(StoreError):
    """Written content does not match the digest or size it was announced with."""

    def __init__(self, message: str, *, expected_digest: str | None, actual_digest: str,
                 expected_size: int | None, actual_size: int):
        self.expected_digest = expected_digest
        self.actual_digest = actual_digest
        self.expected_size = expected_size
        self.actual_size = actual_size
        super().__init__(message)


def split_digest(digest: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a well-formed digest; StoreError otherwise."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None or len(match.group(2)) != _HEX_LENGTH[match.group(1)]:
        raise StoreError(f"invalid digest {digest!r}: expected sha256:<64 hex> or sha512:<128 hex>")
    return match.group(1), match.group(2)


class BlobWriter:
    """A blob being written; use through ``ContentStore.writer``."""

    def __init__(self, fileobj: BinaryIO, algorithm: str):
        self._file = fileobj
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self.size = 0
        self.digest: str | None = None  # set once committed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def copy_from(self, source: BinaryIO) -> int:
        """Stream everything from ``source``; returns the number of bytes copied."""
        copied = 0
        while chunk := source.read(_CHUNK):
            copied += self.write(chunk)
        return copied

    @property
    def current_digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"


class ContentStore:
    """Content-addressed blob storage under ``<root>/content``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.blobs_dir = self.root / "content" / "blobs"
        self.ingest_dir = self.root / "content" / "ingest"

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it is present)."""
        algorithm, hexpart = split_digest(digest)
        return self.blobs_dir / algorithm / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def info(self, digest: str) -> int:
        """Size in bytes of a present blob."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store ``data``; returns its digest."""
        with self.writer(expected_digest=expected_digest, expected_size=len(data)) as w:
            w.write(data)
        return w.current_digest

    @contextlib.contextmanager
    def writer(self, expected_digest: str | None = None,
               expected_size: int | None = None) -> Iterator[BlobWriter]:
        """Stream a blob in; it is committed when the block ends without an exception.

        DigestMismatchError when the content does not match ``expected_digest`` or
        ``expected_size``; nothing is left under ``blobs/`` in that case.
        """
        algorithm = split_digest(expected_digest)[0] if expected_digest else "sha256"
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ingest_dir / f"{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                writer = BlobWriter(f, algorithm)
                yield writer
                f.flush()
                actual = writer.current_digest
                if expected_size is not None and writer.size != expected_size:
                    raise DigestMismatchError(
                        f"blob {expected_digest or actual}: size {writer.size} does not match the"
                        f" expected size {expected_size}",
                        expected_digest=expected_digest, actual_digest=actual,
                        expected_size=expected_size, actual_size=writer.size,
                    )
                if expected_digest is not None and actual != expected_digest:
                    raise DigestMismatchError(
                        f"blob {expected_digest}: content has digest {actual}",
                        expected_digest=expected_digest, actual_digest=actual,
                        expected_size=expected_size, actual_size=writer.size,
                    )
                os.fsync(f.fileno())
            final = self.path(actual)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            writer.digest = actual
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def delete(self, digest: str) -> bool:
        """Remove a blob; returns whether it was present."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    def walk(self) -> Iterator[tuple[str, int]]:
        """``(digest, size)`` of every blob, sorted by digest."""
        for algorithm in sorted(_HEX_LENGTH):
            directory = self.blobs_dir / algorithm
            if not directory.is_dir():
                continue
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False) and len(entry.name) == _HEX_LENGTH[algorithm]:
                    yield f"{algorithm}:{entry.name}", entry.stat(follow_symlinks=False).st_size

    def clean_ingest(self) -> int:
        """Remove leftovers of interrupted writes by dead processes; returns how many."""
        removed = 0
        if not self.ingest_dir.is_dir():
            return 0
        for entry in os.scandir(self.ingest_dir):
            pid = entry.name.partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                continue
            if pid.isdigit() and int(pid) == os.getpid():
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

