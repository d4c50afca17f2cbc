"""A build record as Chrome trace-event JSON (``pybk history trace``), which Perfetto
(ui.perfetto.dev) and ``chrome://tracing`` load.

The build is one complete event (``"ph": "X"``) on track 0; each step is a complete event on
the first track (``tid`` 1, 2 …) where it overlaps no other step, so steps that ran at the same
time sit on tracks side by side and each nests inside the build's span. Times are
microseconds since the epoch (``ts``) and durations in microseconds (``dur``). A step's
``args`` hold its digest, ``cached``, why it missed the cache (``cache_miss``) and its error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PID = 1


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def trace_events(record: Any, details: Mapping[str, Any]) -> dict[str, Any]:
    """``{"traceEvents": […], "displayTimeUnit": "ms"}`` of ``record`` (a
    :class:`~pybk.core.history.store.BuildRecord`) and its details."""
    start = record.created_at
    end = max(record.completed_at or start, start)
    steps = [s for s in details.get("steps", ()) if s.get("started") is not None]
    for s in steps:  # the build's span holds every step
        start = min(start, s["started"])
        end = max(end, s.get("completed") or s["started"])
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "pybk build"}},
        {"name": "thread_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": "build"}},
        {"name": record.name or record.ref, "cat": "build", "ph": "X", "pid": PID, "tid": 0,
         "ts": _us(start), "dur": max(_us(end) - _us(start), 0),
         "args": {"ref": record.ref, "status": record.status,
                  "total_steps": record.num_total_steps,
                  "cached_steps": record.num_cached_steps,
                  **({"error": record.error.get("message", "")} if record.error else {})}}]
    lanes: list[int] = []  # per track: when its last step ended (µs)
    for s in sorted(steps, key=lambda s: s["started"]):
        ts = _us(s["started"])
        stop = max(_us(s.get("completed") or end), ts)
        lane = next((i for i, free in enumerate(lanes) if free <= ts), None)
        if lane is None:
            lanes.append(0)
            lane = len(lanes) - 1
            events.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": lane + 1,
                           "args": {"name": f"steps {lane + 1}"}})
        lanes[lane] = stop
        args: dict[str, Any] = {"digest": s.get("digest", ""), "cached": bool(s.get("cached"))}
        if s.get("number"):
            args["step"] = s["number"]
        if not s.get("cached") and s.get("cache_miss"):
            args["cache_miss"] = s["cache_miss"]
        if s.get("error"):
            args["error"] = s["error"]
        events.append({"name": s.get("name", ""), "cat": "cached" if s.get("cached") else "step",
                       "ph": "X", "pid": PID, "tid": lane + 1, "ts": ts, "dur": stop - ts,
                       "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
