"""Recording a build for the history: a progress sink that keeps each step's final state,
statuses and the tail of its logs, and writes one record when the build ends.

Bounds: the last :data:`STEP_LOG_LIMIT` bytes (64 KiB) of each step's output, at most
:data:`RECORD_LOG_LIMIT` bytes (1 MiB) of logs per record (the steps that ended last keep
theirs first), at most :data:`WARNING_LIMIT` warnings. A secret's value (``--secret``, as read
by the build) is replaced by ``****`` wherever it appears in a recorded log or error message;
secrets themselves are never recorded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from pybk.core.history.store import BuildRecord, HistoryStore, new_ref
from pybk.core.progress.events import SolveStatus, Vertex, VertexLog, VertexStatus, VertexWarning

STEP_LOG_LIMIT = 64 * 1024
RECORD_LOG_LIMIT = 1024 * 1024
WARNING_LIMIT = 256
#: what a secret's value is replaced with
REDACTED = "****"
#: bytes kept beyond a step's limit, so a secret cut by the limit is still found
_SLACK = 4096


class _Step:
    __slots__ = ("vertex", "statuses", "logs", "size", "dropped")

    def __init__(self, vertex: Vertex):
        self.vertex = vertex
        self.statuses: dict[str, VertexStatus] = {}
        self.logs: deque[VertexLog] = deque()
        self.size = 0
        self.dropped = 0


class Recorder:
    """Collects one build's record; call it with each progress update (a progress sink), then
    :meth:`finish` once."""

    def __init__(self, root: str, *, max_age: float, max_entries: int,
                 secrets: Mapping[str, bytes] | None = None):
        self.store = HistoryStore(root)
        self.max_age = max_age
        self.max_entries = max_entries
        self.secrets = secrets
        self.ref = new_ref()
        self.created_at = time.time()
        self.frontend = ""
        self.frontend_attrs: dict[str, str] = {}
        self.context = ""
        self.dockerfile = ""
        self.exporters: list[dict[str, Any]] = []
        self.provenance: list[dict[str, Any]] = []
        self._steps: dict[str, _Step] = {}
        self._warnings: list[VertexWarning] = []
        self._num_warnings = 0
        self._lock = threading.Lock()
        self._done = False
        #: cache insight: each keyed step's key inputs, why each step that ran did, the order
        #: steps started in (their ``#N``), the previous build compared with
        self.compare_ref: str | None = None
        self._keyed: dict[str, Any] = {}
        self._reasons: dict[str, str] = {}
        self._numbers: dict[str, int] = {}
        self._comparison: Any = False
        #: the record's details once written (:meth:`finish`)
        self.details: dict[str, Any] | None = None

    # -- the progress sink -------------------------------------------------------------------

    def __call__(self, status: SolveStatus) -> None:
        with self._lock:
            for vertex in status.vertexes:
                step = self._steps.get(vertex.digest)
                if step is None:
                    self._steps[vertex.digest] = _Step(vertex)
                elif vertex.started is not None or step.vertex.started is None:
                    step.vertex = vertex
                if vertex.started is not None and vertex.digest not in self._numbers:
                    self._numbers[vertex.digest] = len(self._numbers) + 1
            for st in status.statuses:
                step = self._steps.get(st.vertex)
                if step is not None:
                    step.statuses[st.id] = st
            for entry in status.logs:
                step = self._steps.get(entry.vertex)
                if step is not None:
                    self._log(step, entry)
            for warning in status.warnings:
                self._num_warnings += 1
                if len(self._warnings) < WARNING_LIMIT:
                    self._warnings.append(warning)

    @staticmethod
    def _log(step: _Step, entry: VertexLog) -> None:
        step.logs.append(entry)
        step.size += len(entry.data)
        while step.size - len(step.logs[0].data) >= STEP_LOG_LIMIT + _SLACK:
            gone = step.logs.popleft()
            step.size -= len(gone.data)
            step.dropped += len(gone.data)

    # -- cache insight (the scheduler's ``insight``) --------------------------------------------

    def cache_inputs(self, vertex: Any, info: dict[str, Any]) -> None:
        """A step's cache key inputs (:func:`pybk.core.solver.cachekey.key_inputs`)."""
        with self._lock:
            self._keyed[vertex.digest] = {
                "name": vertex.name, "inputs": [i.digest for i in vertex.inputs], "info": info,
                "ignore_cache": bool(vertex.ignore_cache)}

    def cache_miss(self, vertex: Any, info: dict[str, Any], ran: Any) -> str:
        """Why ``vertex`` runs instead of being found in the cache (shown under the step);
        empty when there is no previous build to compare with (the record says so)."""
        from pybk.core.history.explain import NO_PREVIOUS, explain_miss

        comparison = self._previous()
        with self._lock:
            steps = dict(self._keyed)
            numbers = dict(self._numbers)
        reason = redact(explain_miss(comparison, vertex.digest, steps, ran,
                                     lambda d: numbers.get(d, 0)), self._secret_values())
        self._reasons[vertex.digest] = reason
        return "" if reason == NO_PREVIOUS else reason

    def _previous(self) -> Any:
        """The previous build of the same name, target and platforms (or ``compare_ref``),
        as a :class:`~pybk.core.history.explain.Comparison`; None if there is none. Read once,
        when the first step misses."""
        if self._comparison is not False:
            return self._comparison
        from pybk.core.history.explain import Comparison

        self._comparison = None
        ref = self.compare_ref
        if ref is None:
            me = self._summary()
            for record in self.store.records():
                if (record.ref != self.ref and record.name == me.name
                        and record.target == me.target and record.platforms == me.platforms):
                    ref = record.ref
                    break
        if ref is not None:
            try:
                record, details = self.store.load(ref)
            except Exception:  # noqa: BLE001 - an unreadable record explains nothing
                return None
            self._comparison = Comparison(ref, list(details.get("steps", ())),
                                          previous_attrs=record.frontend_attrs,
                                          attrs=self.frontend_attrs)
        return self._comparison

    def cache_report(self) -> dict[str, Any] | None:
        """The written record's steps' cache states
        (:func:`pybk.core.history.explain.cache_report`); None before :meth:`finish`."""
        from pybk.core.history.explain import cache_report

        if self.details is None:
            return None
        return cache_report(self.details["steps"], self.details.get("cache_compared"))

    def _summary(self) -> BuildRecord:
        attrs = self.frontend_attrs
        return BuildRecord(ref=self.ref, frontend_attrs=dict(attrs), context=self.context,
                           dockerfile=self.dockerfile, target=attrs.get("target", ""),
                           platforms=tuple(p for p in attrs.get("platform", "").split(",")
                                           if p))

    # -- what the engine says ----------------------------------------------------------------

    def frontend_warnings(self, messages: Any) -> None:
        """The frontend's warnings (build checks: ``WARNING: …`` lines), counted and kept as
        the progress's warnings are."""
        with self._lock:
            for message in messages:
                self._num_warnings += 1
                if len(self._warnings) < WARNING_LIMIT:
                    self._warnings.append(VertexWarning(vertex="", short=str(message).encode()))

    def outputs(self, specs: Any, responses: Any) -> None:
        """Each output's type, attributes and its exporter's response."""
        for i, spec in enumerate(specs):
            attrs = spec.get("attrs", {}) if isinstance(spec, Mapping) else getattr(
                spec, "attrs", {})
            kind = spec.get("type") if isinstance(spec, Mapping) else getattr(spec, "type", "")
            response = responses[i] if i < len(responses) else {}
            self.exporters.append({
                "type": kind, "attrs": {k: str(v) for k, v in dict(attrs).items()
                                        if not _credential(k)},
                "response": {k: v for k, v in dict(response).items() if isinstance(v, str)}})

    def add_provenance(self, provenance: Any, result: Any) -> None:
        """The provenance predicate of each platform's result (``provenance``: the build's
        :class:`pybk.core.engine.provenance.Provenance`)."""
        results = getattr(result, "results", None)
        items = dict(results) if isinstance(results, Mapping) else {"": result}
        for platform, one in items.items():
            try:
                predicate = provenance.predicate(one)
            except Exception:  # noqa: BLE001 - the record must not fail the build
                continue
            self.provenance.append({"platform": platform,
                                    "predicateType": provenance.predicate_type,
                                    "predicate": predicate})

    # -- the end -----------------------------------------------------------------------------

    def finish(self, error: BaseException | None = None, *, location: Any = None) -> None:
        """Write the record: completed, or failed with ``error`` (``location``: the failed
        step's ``(filename, first line, last line, excerpt)`` when known); once."""
        if self._done:
            return
        self._done = True
        with self._lock:
            steps = list(self._steps.values())
            keyed = dict(self._keyed)
            warnings = list(self._warnings)
            num_warnings = self._num_warnings
        secrets = self._secret_values()
        rendered, kept, dropped = _render_steps(steps, secrets)
        self._add_cache(rendered, keyed, secrets)
        status, err = "completed", None
        if error is not None:
            status, err = _describe(error, location, secrets)
        # a secret's value given as a build argument too is not kept there either
        attrs = {k: redact(v, secrets) for k, v in self.frontend_attrs.items()}
        record = BuildRecord(
            ref=self.ref, frontend=self.frontend, frontend_attrs=dict(attrs),
            context=self.context, dockerfile=self.dockerfile, target=attrs.get("target", ""),
            platforms=tuple(p for p in attrs.get("platform", "").split(",") if p),
            created_at=self.created_at, completed_at=time.time(), status=status, error=err,
            num_total_steps=len(steps),
            num_completed_steps=sum(1 for s in steps if s.vertex.completed is not None
                                    and not s.vertex.error),
            num_cached_steps=sum(1 for s in steps if s.vertex.cached),
            num_warnings=num_warnings, exporters=tuple(self.exporters),
            provenance=tuple(dict.fromkeys(p["predicateType"] for p in self.provenance)),
            log_bytes=kept, log_bytes_dropped=dropped)
        self.details = details = {"steps": rendered,
                   "warnings": [_warning_json(w, secrets) for w in warnings],
                   "provenance": self.provenance}
        if self._comparison:
            details["cache_compared"] = self._comparison.ref
        self.store.add(record, details, max_age=self.max_age, max_entries=self.max_entries)

    def _add_cache(self, rendered: list[dict[str, Any]], keyed: Mapping[str, Any],
                   secrets: list[str]) -> None:
        """Each keyed step's key inputs (``"cache"``) and, for a step that ran, why
        (``"cache_miss"``); the previous build compared with (``"cache_compared"``)."""
        for step in rendered:
            if step["digest"] in self._numbers:
                step["number"] = self._numbers[step["digest"]]
            got = keyed.get(step["digest"])
            if got is None:
                continue
            info = dict(got["info"])
            if "env" in info:
                info["env"] = [redact(e, secrets) for e in info["env"]]
            step["cache"] = info
            reason = self._reasons.get(step["digest"])
            if reason:
                step["cache_miss"] = redact(reason, secrets)

    def _secret_values(self) -> list[str]:
        """The secrets this build read (a remote build's: only those fetched so far: a secret
        no step asked for cannot be in a log)."""
        if not self.secrets:
            return []
        fetched = getattr(self.secrets, "fetched", None)
        values = fetched() if callable(fetched) else dict(self.secrets)
        out: set[str] = set()
        for raw in values.values():
            text = bytes(raw).decode("utf-8", "replace")
            out.update(v for v in (text, text.strip()) if v)
        return sorted(out, key=len, reverse=True)


def _credential(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in ("secret", "token", "password", "key"))


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _render_steps(steps: list[_Step], secrets: list[str]) -> tuple[list[dict[str, Any]], int,
                                                                   int]:
    """The steps as JSON (in the order they started), their logs redacted and bounded; the
    log bytes kept and dropped."""
    order = sorted(steps, key=lambda s: (s.vertex.started is None, s.vertex.started or 0.0))
    budget = RECORD_LOG_LIMIT
    logs: dict[str, tuple[list[list[Any]], int]] = {}
    kept_total = dropped_total = 0
    # the steps that ended last keep their logs first
    for step in sorted(order, key=lambda s: s.vertex.completed or 0.0, reverse=True):
        kept, dropped = _bounded_logs(step, secrets, min(STEP_LOG_LIMIT, budget))
        size = sum(len(chunk[2].encode()) for chunk in kept)
        budget -= size
        kept_total += size
        dropped_total += dropped
        logs[step.vertex.digest] = (kept, dropped)
    out = []
    for step in order:
        v = step.vertex
        kept, dropped = logs[v.digest]
        duration = (v.completed - v.started) if v.completed is not None and v.started else None
        out.append({
            "digest": v.digest, "name": redact(v.name, secrets), "inputs": list(v.inputs),
            "started": v.started, "completed": v.completed, "cached": v.cached,
            "error": redact(v.error, secrets), "duration": duration,
            "statuses": [{"id": s.id, "name": s.name, "total": s.total, "current": s.current,
                          "timestamp": s.timestamp, "started": s.started,
                          "completed": s.completed} for s in step.statuses.values()],
            "logs": kept, "logs_dropped": dropped})
    return out, kept_total, dropped_total


def _bounded_logs(step: _Step, secrets: list[str], limit: int) -> tuple[list[list[Any]], int]:
    """``([[stream, timestamp, text], …], bytes dropped)``: the last ``limit`` bytes of the
    step's output, with secrets redacted (also one split between two chunks)."""
    chunks = list(step.logs)
    texts = [redact(c.data.decode("utf-8", "replace"), secrets) for c in chunks]
    if secrets:
        for stream in {c.stream for c in chunks}:
            idx = [i for i, c in enumerate(chunks) if c.stream == stream]
            joined = "".join(texts[i] for i in idx)
            if any(value in joined for value in secrets):
                # a secret split between chunks: the stream's text goes whole, redacted, into
                # its last chunk
                for i in idx:
                    texts[i] = ""
                texts[idx[-1]] = redact(joined, secrets)
    items = [(c, t) for c, t in zip(chunks, texts, strict=True) if t]
    out: list[list[Any]] = []
    size, dropped, i = 0, step.dropped, len(items)
    while i > 0:
        chunk, text = items[i - 1]
        i -= 1
        data = text.encode()
        if size + len(data) > limit:
            room = max(limit - size, 0)
            dropped += len(data) - room
            if room:
                out.append([chunk.stream, chunk.timestamp, data[-room:].decode("utf-8", "ignore")])
            break
        out.append([chunk.stream, chunk.timestamp, text])
        size += len(data)
    dropped += sum(len(t.encode()) for _, t in items[:i])
    out.reverse()
    return out, dropped


def _describe(error: BaseException, location: Any, secrets: list[str]) -> tuple[str, dict]:
    """``(status, error record)`` for the exception a build ended with."""
    import asyncio

    if isinstance(error, KeyboardInterrupt | asyncio.CancelledError):
        return "canceled", {"message": "context canceled", "exit_code": 130}
    message = str(error).split("\n", 1)[0] if location is not None else str(error)
    err: dict[str, Any] = {"message": redact(message, secrets),
                           "exit_code": getattr(error, "exit_code", 1)}
    vertex = getattr(error, "vertex", None)
    if vertex:
        err["vertex"] = vertex
    if location is not None:
        filename, first, last, excerpt = location
        err.update(filename=filename, line=first, end_line=last,
                   source=redact(excerpt, secrets))
    elif getattr(error, "line", None) is not None:
        err.update(filename=getattr(error, "filename", None) or "", line=error.line,  # type: ignore[attr-defined]
                   end_line=error.line)  # type: ignore[attr-defined]
        if getattr(error, "message", None):
            err["message"] = redact(error.message, secrets)  # type: ignore[attr-defined]
    return "error", err


def _warning_json(w: VertexWarning, secrets: list[str]) -> dict[str, Any]:
    return {"vertex": w.vertex, "level": w.level,
            "short": redact(w.short.decode("utf-8", "replace"), secrets),
            "detail": [redact(d.decode("utf-8", "replace"), secrets) for d in w.detail],
            "url": w.url}


def replay(details: Mapping[str, Any]) -> list[SolveStatus]:
    """The progress updates that show a record's steps again, step after step (what ``pybk
    history logs`` renders with a progress renderer)."""
    updates: list[SolveStatus] = []
    warnings: dict[str, list[dict[str, Any]]] = {}
    for w in details.get("warnings", ()):
        warnings.setdefault(w.get("vertex", ""), []).append(w)
    for step in details.get("steps", ()):
        if step.get("started") is None:
            continue
        final = Vertex(digest=step["digest"], name=step.get("name", ""),
                       inputs=tuple(step.get("inputs", ())), started=step["started"],
                       completed=step.get("completed"), cached=bool(step.get("cached")),
                       error=step.get("error", ""))
        updates.append(SolveStatus(vertexes=(Vertex(
            digest=final.digest, name=final.name, inputs=final.inputs, started=final.started,
            cache_miss="" if final.cached else step.get("cache_miss", "")),)))
        statuses = tuple(VertexStatus(
            id=s["id"], vertex=final.digest, name=s.get("name", ""), total=s.get("total", 0),
            current=s.get("current", 0), timestamp=s.get("timestamp", 0.0),
            started=s.get("started"), completed=s.get("completed"))
            for s in step.get("statuses", ()))
        if statuses:
            updates.append(SolveStatus(statuses=statuses))
        logs = []
        if step.get("logs_dropped"):
            logs.append(VertexLog(vertex=final.digest, stream=1, timestamp=final.started,
                                  data=f"[history: the first {step['logs_dropped']} bytes of "
                                       "this step's output were not kept]\n".encode()))
        logs.extend(VertexLog(vertex=final.digest, stream=stream, timestamp=ts,
                              data=text.encode()) for stream, ts, text in step.get("logs", ()))
        if logs:
            updates.append(SolveStatus(logs=tuple(logs)))
        found = warnings.get(final.digest, ())
        if found:
            updates.append(SolveStatus(warnings=tuple(VertexWarning(
                vertex=final.digest, short=w.get("short", "").encode(),
                level=w.get("level", 1), detail=tuple(d.encode() for d in w.get("detail", ())),
                url=w.get("url", "")) for w in found)))
        updates.append(SolveStatus(vertexes=(final,)))
    return updates
