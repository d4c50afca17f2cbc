"""The build history on disk: one file per build under ``ROOT/history/`` (``pybk history``).

Each record is ``ROOT/history/REF.json``, written once when its build ends (a temporary file
renamed into place, 0600 in a 0700 directory, like the rest of the store; the file's mtime is
the build's end), in two lines of JSON:

1. the summary (:class:`BuildRecord`): what ``pybk history ls`` reads, a few hundred bytes;
2. the details: the steps with their bounded logs and statuses, the warnings, the provenance.

Retention is BuildKit's rule (``[history] maxEntries`` / ``maxAge``): a record is deleted when
it is beyond the newest ``maxEntries`` *and* ended more than ``maxAge`` ago; applied each time
a record is added and by the automatic GC (:func:`prune`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pybk.core.errors import StoreError, UsageError
from pybk.core.fs.files import private_dir, private_file
from pybk.core.model import Model, asdict, field, fields

#: the directory of the records, in the store root
DIRNAME = "history"
_SUFFIX = ".json"
#: the record format (the first line's ``version``)
VERSION = 1


def new_ref() -> str:
    """A random build id (25 lowercase base-36 characters, like BuildKit's)."""
    n = int.from_bytes(os.urandom(16), "big")
    digits = []
    for _ in range(25):
        n, d = divmod(n, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[d])
    return "".join(digits)


class BuildRecord(Model, kw_only=True):
    """The summary of one build (the first line of its file)."""

    version: int = VERSION
    ref: str
    frontend: str = ""
    #: the frontend's options as BuildKit records them (build-arg:K, target, platform …);
    #: secrets are never among them
    frontend_attrs: dict[str, str] = field(factory=dict)
    #: the client's context directory and build file (for the record's name)
    context: str = ""
    dockerfile: str = ""
    target: str = ""
    platforms: tuple[str, ...] = ()
    created_at: float = 0.0
    completed_at: float = 0.0
    #: "completed", "error" or "canceled"
    status: str = "completed"
    #: {"message", "exit_code", "filename", "line", "end_line", "vertex", "source"} or None
    error: dict[str, Any] | None = None
    num_total_steps: int = 0
    num_completed_steps: int = 0
    num_cached_steps: int = 0
    num_warnings: int = 0
    #: each output: {"type", "attrs", "response"} (the exporter's response: digests, name …)
    exporters: tuple[dict[str, Any], ...] = ()
    #: the predicate types of the provenance made (empty: none)
    provenance: tuple[str, ...] = ()
    #: log bytes recorded, and those left out by the bounds
    log_bytes: int = 0
    log_bytes_dropped: int = 0

    @property
    def duration(self) -> float:
        return max(self.completed_at - self.created_at, 0.0)

    @property
    def name(self) -> str:
        """buildx's name of a build: the context's base name (with the build file when it is
        not the default), then `` (TARGET)``."""
        explicit = self.frontend_attrs.get("build-arg:BUILDKIT_BUILD_NAME")
        if explicit:
            return explicit
        name = os.path.basename(self.context.rstrip("/")) if self.context else ""
        if self.dockerfile and os.path.basename(self.dockerfile) != "Dockerfile":
            rel = self.dockerfile
            if self.context and rel.startswith(self.context.rstrip("/") + "/"):
                rel = rel[len(self.context.rstrip("/")) + 1:]
            name = f"{name}/{rel}" if name else rel
        if self.target:
            name = f"{name} ({self.target})" if name else self.target
        return name

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("platforms", "exporters", "provenance"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


class HistoryStore:
    """The records of one store root."""

    def __init__(self, root: str | os.PathLike[str]):
        self.dir = os.path.join(os.fspath(root), DIRNAME)

    def _path(self, ref: str) -> str:
        return os.path.join(self.dir, ref + _SUFFIX)

    # -- writing -----------------------------------------------------------------------------

    def add(self, record: BuildRecord, details: Mapping[str, Any], *, max_age: float,
            max_entries: int) -> None:
        """Write ``record`` and its details (one atomic write), then apply the retention."""
        private_dir(self.dir)
        data = (json.dumps(asdict(record), separators=(",", ":")) + "\n"
                + json.dumps(dict(details), separators=(",", ":")) + "\n").encode()
        tmp = os.path.join(self.dir, f".{record.ref}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            private_file(tmp, data)
            end = record.completed_at or time.time()
            os.utime(tmp, (end, end))
            os.rename(tmp, self._path(record.ref))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.prune(max_age=max_age, max_entries=max_entries)

    def prune(self, *, max_age: float, max_entries: int, now: float | None = None) -> list[str]:
        """BuildKit's retention: delete the records beyond the newest ``max_entries`` (by end
        time) that also ended more than ``max_age`` seconds ago; the refs deleted."""
        ended = sorted(self._ended(), key=lambda item: item[1], reverse=True)
        now = time.time() if now is None else now
        self._remove_stale_temporaries(now - 3600)
        if len(ended) <= max_entries:
            return []
        limit = now - max_age
        gone = [ref for ref, end in ended[max(max_entries, 0):] if end < limit]
        self.remove(gone)
        return gone

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        """The history directory's entries (none when it does not exist yet)."""
        try:
            entries = os.scandir(self.dir)
        except FileNotFoundError:
            return
        with entries:
            yield from entries

    def _remove_stale_temporaries(self, before: float) -> None:
        """Temporary files of writers that died (killed outright), older than ``before``."""
        for entry in self._entries():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < before:
                        os.unlink(entry.path)

    def remove(self, refs: Iterable[str]) -> None:
        for ref in refs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(ref))

    # -- reading -----------------------------------------------------------------------------

    def _ended(self) -> Iterator[tuple[str, float]]:
        """``(ref, end time)`` of every record (from the files' mtimes: no file is read)."""
        for entry in self._entries():
            if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    yield entry.name[:-len(_SUFFIX)], entry.stat().st_mtime

    def records(self) -> list[BuildRecord]:
        """Every record's summary, newest first."""
        out = []
        for ref, _ in self._ended():
            with contextlib.suppress(FileNotFoundError, ValueError):
                out.append(self._summary(ref))
        return sorted(out, key=lambda r: r.created_at, reverse=True)

    def _summary(self, ref: str) -> BuildRecord:
        with open(self._path(ref), "rb") as f:
            return BuildRecord.from_json(json.loads(f.readline()))

    def load(self, ref: str) -> tuple[BuildRecord, dict[str, Any]]:
        """The summary and the details of the record ``ref`` (a full ref)."""
        try:
            with open(self._path(ref), "rb") as f:
                summary = BuildRecord.from_json(json.loads(f.readline()))
                details = json.loads(f.readline() or b"{}")
        except FileNotFoundError:
            raise UsageError(f"no build record found for ref {ref!r}") from None
        except (ValueError, TypeError) as exc:
            raise StoreError(f"the build record {ref} is unreadable: {exc}") from None
        return summary, details

    def resolve(self, spec: str) -> str:
        """The full ref ``spec`` names: a ref, a unique prefix of one, ``^N`` (the Nth build
        before the newest: ``^0`` is the newest) or ``latest``. A usage error names what is
        wrong otherwise."""
        if not spec:
            raise UsageError("a build ref must not be empty")
        if spec == "latest" or spec.startswith("^"):
            offset = 0
            if spec != "latest":
                try:
                    offset = int(spec[1:])
                except ValueError:
                    raise UsageError(f"invalid offset {spec!r} (^N, N a number)") from None
            newest = self.records()
            if offset < 0 or offset >= len(newest):
                raise UsageError(f"no build record at offset {spec!r} ({len(newest)} "
                                 "record(s) in the history)" if newest
                                 else "no build records in the history")
            return newest[offset].ref
        refs = [ref for ref, _ in self._ended()]
        if spec in refs:
            return spec
        matches = [ref for ref in refs if ref.startswith(spec.lower())]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UsageError(f"no build record found for ref {spec!r}")
        raise UsageError(f"ref {spec!r} is ambiguous: it starts {len(matches)} build records "
                         f"({', '.join(sorted(matches)[:5])}{' …' if len(matches) > 5 else ''})")
