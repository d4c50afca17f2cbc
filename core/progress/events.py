"""Progress events, shaped like BuildKit's ``SolveStatus``.

A build emits a stream of :class:`SolveStatus` updates: vertex state changes (started,
completed, cached, error, all with timestamps), named statuses with byte counters, step log
chunks and warnings. Renderers (:mod:`pybk.core.progress.ui`), the ``pybk_progress`` hook and
the tests all read the same stream.

Timestamps are ``time.time()`` floats; :meth:`SolveStatus.to_json` writes them as RFC 3339
strings with BuildKit's JSON field names.
"""

from __future__ import annotations

import base64
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from pybk.core.model import Model, evolve

STREAM_STDOUT = 1
STREAM_STDERR = 2

DEFAULT_STEP_LOG_MAX_SIZE = 2 * 1024 * 1024
DEFAULT_STEP_LOG_MAX_SPEED = 200 * 1024


class Vertex(Model):
    """The state of one build step; each update carries the full state."""

    digest: str
    name: str = ""
    inputs: tuple[str, ...] = ()
    started: float | None = None
    completed: float | None = None
    cached: bool = False
    error: str = ""
    progress_group: dict[str, Any] | None = None
    #: why the step runs instead of being found in the cache (pybk's own; empty if unknown)
    cache_miss: str = ""


class VertexStatus(Model):
    """A named sub-task of a vertex (a layer download, a context transfer) with counters."""

    id: str
    vertex: str
    name: str = ""
    total: int = 0
    current: int = 0
    timestamp: float = 0.0
    started: float | None = None
    completed: float | None = None


class VertexLog(Model):
    """A chunk of a step's stdout (stream 1) or stderr (stream 2)."""

    vertex: str
    stream: int
    data: bytes
    timestamp: float


class VertexWarning(Model):
    """A warning attached to a vertex (``short`` is the one-line text)."""

    vertex: str
    short: bytes
    level: int = 1
    detail: tuple[bytes, ...] = ()
    url: str = ""
    source_info: dict[str, Any] | None = None
    range: tuple[dict[str, Any], ...] = ()


class SolveStatus(Model):
    """One progress update; any of the four lists may be empty."""

    vertexes: tuple[Vertex, ...] = ()
    statuses: tuple[VertexStatus, ...] = ()
    logs: tuple[VertexLog, ...] = ()
    warnings: tuple[VertexWarning, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """BuildKit's JSON encoding of ``client.SolveStatus`` (empty fields omitted)."""
        out: dict[str, Any] = {}
        if self.vertexes:
            out["vertexes"] = [_vertex_json(v) for v in self.vertexes]
        if self.statuses:
            out["statuses"] = [_status_json(s) for s in self.statuses]
        if self.logs:
            out["logs"] = [_log_json(entry) for entry in self.logs]
        if self.warnings:
            out["warnings"] = [_warning_json(w) for w in self.warnings]
        return out


def format_time(ts: float) -> str:
    """RFC 3339 with nanosecond precision in UTC, like Go's ``time.Time`` JSON."""
    whole = math.floor(ts)
    nanos = int(round((ts - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f".{nanos:09d}".rstrip("0").rstrip(".")
    return f"{stamp}{frac}Z"


def _omit_empty(d: dict[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    keep = set(keep)
    return {k: v for k, v in d.items() if k in keep or v not in (None, "", 0, False, [], {})}


def _vertex_json(v: Vertex) -> dict[str, Any]:
    return _omit_empty({
        "digest": v.digest,
        "inputs": list(v.inputs),
        "name": v.name,
        "started": format_time(v.started) if v.started is not None else None,
        "completed": format_time(v.completed) if v.completed is not None else None,
        "cached": v.cached,
        "error": v.error,
        "progressGroup": v.progress_group,
        "cacheMiss": v.cache_miss,
    })


def _status_json(s: VertexStatus) -> dict[str, Any]:
    return _omit_empty({
        "id": s.id,
        "vertex": s.vertex,
        "name": s.name,
        "total": s.total,
        "current": s.current,
        "timestamp": format_time(s.timestamp),
        "started": format_time(s.started) if s.started is not None else None,
        "completed": format_time(s.completed) if s.completed is not None else None,
    }, keep=("id", "current", "timestamp"))


def _log_json(entry: VertexLog) -> dict[str, Any]:
    return _omit_empty({
        "vertex": entry.vertex,
        "stream": entry.stream,
        "data": base64.b64encode(entry.data).decode("ascii"),
        "timestamp": format_time(entry.timestamp),
    }, keep=("data", "timestamp"))


def _warning_json(w: VertexWarning) -> dict[str, Any]:
    return _omit_empty({
        "vertex": w.vertex,
        "level": w.level,
        "short": base64.b64encode(w.short).decode("ascii"),
        "detail": [base64.b64encode(d).decode("ascii") for d in w.detail],
        "url": w.url,
        "sourceInfo": w.source_info,
        "range": list(w.range),
    })


def parse_time(value: str | None) -> float | None:
    """The inverse of :func:`format_time` (None stays None)."""
    if not value:
        return None
    stamp, _, frac = value.rstrip("Z").partition(".")
    whole = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return whole + (int(frac.ljust(9, "0")[:9]) / 1e9 if frac else 0.0)


def status_from_json(d: dict[str, Any]) -> SolveStatus:
    """The inverse of :meth:`SolveStatus.to_json`: a status streamed by a remote daemon, to
    render on the client."""
    b64 = base64.b64decode
    return SolveStatus(
        vertexes=tuple(Vertex(
            digest=v["digest"], name=v.get("name", ""), inputs=tuple(v.get("inputs", ())),
            started=parse_time(v.get("started")), completed=parse_time(v.get("completed")),
            cached=bool(v.get("cached")), error=v.get("error", ""),
            progress_group=v.get("progressGroup"), cache_miss=v.get("cacheMiss", ""))
            for v in d.get("vertexes", ())),
        statuses=tuple(VertexStatus(
            id=s["id"], vertex=s.get("vertex", ""), name=s.get("name", ""),
            total=s.get("total", 0), current=s.get("current", 0),
            timestamp=parse_time(s.get("timestamp")) or 0.0,
            started=parse_time(s.get("started")), completed=parse_time(s.get("completed")))
            for s in d.get("statuses", ())),
        logs=tuple(VertexLog(
            vertex=entry.get("vertex", ""), stream=entry.get("stream", 0),
            data=b64(entry.get("data", "")), timestamp=parse_time(entry.get("timestamp")) or 0.0)
            for entry in d.get("logs", ())),
        warnings=tuple(VertexWarning(
            vertex=w.get("vertex", ""), short=b64(w.get("short", "")), level=w.get("level", 1),
            detail=tuple(b64(x) for x in w.get("detail", ())), url=w.get("url", ""),
            source_info=w.get("sourceInfo"), range=tuple(w.get("range", ())))
            for w in d.get("warnings", ())))


Sink = Callable[[SolveStatus], None]


class Progress:
    """Fans progress updates out to sinks; safe to call from threads and the event loop.

    Sinks run synchronously, in order, under a lock, so every sink sees the same sequence.
    """

    def __init__(self, *sinks: Sink):
        self._sinks: list[Sink] = list(sinks)
        self._lock = threading.Lock()

    def emit(self, status: SolveStatus) -> None:
        with self._lock:
            for sink in self._sinks:
                sink(status)

    def vertex(self, digest: str, name: str, inputs: Iterable[str] = (),
               progress_group: dict[str, Any] | None = None) -> VertexProgress:
        """A handle reporting the life of one vertex."""
        return VertexProgress(self, Vertex(digest=digest, name=name, inputs=tuple(inputs),
                                           progress_group=progress_group))


class VertexProgress:
    """Reports one vertex: start, statuses, logs, warnings, then exactly one end state."""

    def __init__(self, progress: Progress, vertex: Vertex):
        self._progress = progress
        self.state = vertex
        self._statuses: dict[str, VertexStatus] = {}

    @property
    def digest(self) -> str:
        return self.state.digest

    def _update(self, **changes: Any) -> None:
        self.state = evolve(self.state, **changes)
        self._progress.emit(SolveStatus(vertexes=(self.state,)))

    def announce(self) -> None:
        """Make the vertex known before it starts (BuildKit sends such initial vertexes)."""
        self._progress.emit(SolveStatus(vertexes=(self.state,)))

    def start(self, *, cache_miss: str = "") -> None:
        """The step starts; ``cache_miss``: why it runs instead of being found in the cache."""
        self._update(started=time.time(), completed=None, error="",
                     cache_miss=cache_miss or self.state.cache_miss)

    def cached(self) -> None:
        now = time.time()
        self._update(started=self.state.started or now, completed=now, cached=True)

    def done(self) -> None:
        now = time.time()
        self._update(started=self.state.started or now, completed=now)

    def error(self, message: str) -> None:
        now = time.time()
        self._update(started=self.state.started or now, completed=now, error=message)

    def status(self, id: str, *, current: int = 0, total: int = 0, done: bool = False,
               name: str = "") -> None:
        """Create or update the named status; ``done`` completes it."""
        now = time.time()
        prev = self._statuses.get(id)
        started = prev.started if prev is not None else now
        st = VertexStatus(id=id, vertex=self.digest, name=name, total=total, current=current,
                          timestamp=now, started=started, completed=now if done else None)
        self._statuses[id] = st
        self._progress.emit(SolveStatus(statuses=(st,)))

    def log(self, stream: int, data: bytes) -> None:
        if data:
            self._progress.emit(SolveStatus(logs=(VertexLog(
                vertex=self.digest, stream=stream, data=bytes(data), timestamp=time.time()),)))

    def warn(self, short: str, *, detail: Iterable[str] = (), url: str = "",
             level: int = 1) -> None:
        self._progress.emit(SolveStatus(warnings=(VertexWarning(
            vertex=self.digest, short=short.encode(), level=level,
            detail=tuple(d.encode() for d in detail), url=url),)))


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    return -1 if value < 0 else value


def _format_limit(n: int) -> str:
    """``2MiB``, ``200KiB``: binary units without trailing zeros (BuildKit's ``%#g``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:g}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


class StepLogLimiter:
    """BuildKit's per-step log limits: ``BUILDKIT_STEP_LOG_MAX_SIZE`` bytes in total and
    ``BUILDKIT_STEP_LOG_MAX_SPEED`` bytes per second of step time; ``-1`` disables either.

    Output past the limit is dropped and a ``[output clipped, log limit … reached]`` line is
    logged once per clipping episode.
    """

    def __init__(self, vertex: VertexProgress, stream: int, *, max_size: int | None = None,
                 max_speed: int | None = None, clock: Callable[[], float] = time.monotonic):
        self._vertex = vertex
        self._stream = stream
        self._max_size = (max_size if max_size is not None
                          else _env_limit("BUILDKIT_STEP_LOG_MAX_SIZE", DEFAULT_STEP_LOG_MAX_SIZE))
        self._max_speed = (max_speed if max_speed is not None
                           else _env_limit("BUILDKIT_STEP_LOG_MAX_SPEED",
                                           DEFAULT_STEP_LOG_MAX_SPEED))
        self._clock = clock
        self._created = clock()
        self._size = 0
        self._clipping = False
        self._lock = threading.Lock()

    def _allowed(self, n: int) -> tuple[int, bool]:
        limit, by_speed = -1, False
        if self._max_speed >= 0:
            elapsed = max(self._clock() - self._created, 1e-9)
            limit, by_speed = math.ceil(elapsed) * self._max_speed, True
        if self._max_size >= 0 and (limit < 0 or self._max_size <= limit):
            limit, by_speed = self._max_size, False
        old = self._size
        self._size += n
        if limit < 0 or self._size <= limit:
            return n, by_speed
        return max(limit - old, 0), by_speed

    def write(self, data: bytes) -> None:
        with self._lock:
            keep, by_speed = self._allowed(len(data))
            chunk = bytes(data[:keep])
            if self._clipping and keep == len(data):
                self._clipping = False
            if not self._clipping and keep != len(data):
                what = (f"{_format_limit(self._max_speed)}/s" if by_speed
                        else _format_limit(self._max_size))
                chunk += f"\n[output clipped, log limit {what} reached]\n".encode()
                self._clipping = True
        self._vertex.log(self._stream, chunk)


class EventRecorder:
    """A sink that keeps every update (for a caller that reads the build's progress afterwards)."""

    def __init__(self) -> None:
        self.updates: list[SolveStatus] = []

    def __call__(self, status: SolveStatus) -> None:
        self.updates.append(status)

    def vertexes(self) -> list[Vertex]:
        return [v for u in self.updates for v in u.vertexes]

    def final_vertexes(self) -> dict[str, Vertex]:
        """The last state of every vertex, by digest."""
        out: dict[str, Vertex] = {}
        for v in self.vertexes():
            out[v.digest] = v
        return out

    def statuses(self) -> list[VertexStatus]:
        return [s for u in self.updates for s in u.statuses]

    def logs(self, digest: str | None = None) -> bytes:
        return b"".join(entry.data for u in self.updates for entry in u.logs
                        if digest is None or entry.vertex == digest)
