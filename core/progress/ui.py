"""Progress renderers: ``plain``, ``tty``, ``rawjson``, ``quiet`` and ``auto``.

Every renderer is a callable taking :class:`pybk.core.progress.events.SolveStatus` updates, plus
``close()`` which flushes and prints the logs of failed steps. ``plain`` prints BuildKit's
text format::

    #1 docker-image://127.0.0.1:5000/busybox:latest
    #1 resolve 127.0.0.1:5000/busybox:latest done
    #1 DONE 0.1s

    #2 /bin/sh -c echo hello
    #2 0.052 hello
    #2 DONE 0.2s

``rawjson`` prints one BuildKit ``SolveStatus`` JSON object per line; ``tty`` is a live view
drawn with rich (imported only when used).
"""

from __future__ import annotations

import abc
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from pybk.core.errors import UsageError
from pybk.core.progress.events import SolveStatus, Vertex, VertexStatus

MODES = ("auto", "tty", "plain", "rawjson", "quiet")

#: how long a step may hold the output before a waiting step gets its turn (BuildKit: 10 s)
MAX_DELAY = 10.0
#: a status line is reprinted only after this much time or progress (BuildKit's values)
MIN_TIME_DELTA = 5.0
MIN_PROGRESS_DELTA = 0.05
#: lines of a failed step's log repeated at the end
ERROR_LOG_LINES = 10


def format_bytes(n: int) -> str:
    """Decimal units like BuildKit's progress: ``38B``, ``22.79kB``, ``3.40MB``."""
    if n < 1000:
        return f"{n}B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.2f}{unit}"
    raise AssertionError("unreachable")


def _log_stamp(seconds: float) -> str:
    prec = 3 if seconds < 10 else 2 if seconds < 100 else 1
    return f"{seconds:.{prec}f}"


def is_canceled(error: str) -> bool:
    return error.endswith("context canceled") or error.endswith("canceled")


class Renderer(abc.ABC):
    """Base: a sink for progress updates with a final ``close``."""

    @abc.abstractmethod
    def __call__(self, status: SolveStatus) -> None:
        ...

    def close(self) -> None:  # noqa: B027 - a no-op default
        """Flush pending output; renderers that show logs repeat failed steps' logs."""


class QuietRenderer(Renderer):
    """Prints nothing."""

    def __call__(self, status: SolveStatus) -> None:
        pass


class RawJSONRenderer(Renderer):
    """One JSON ``SolveStatus`` per line, unbuffered."""

    def __init__(self, out: IO[str]):
        self.out = out

    def __call__(self, status: SolveStatus) -> None:
        import json

        self.out.write(json.dumps(status.to_json(), separators=(",", ":")) + "\n")
        self.out.flush()


class _Step:
    """What a text renderer knows about one vertex."""

    def __init__(self, vertex: Vertex):
        self.vertex = vertex
        self.index = 0
        self.statuses: dict[str, VertexStatus] = {}
        self.status_updates: list[str] = []
        self.printed_status: dict[str, tuple[int, float]] = {}
        self.lines: list[str] = []  # complete log lines not printed yet
        self.partial = ""  # an unterminated log line
        self.partial_stamp = ""
        self.tail: deque[str] = deque(maxlen=ERROR_LOG_LINES)
        self.pending_since: float | None = None
        self.last_update = 0.0
        self.miss_shown = False

    @property
    def active(self) -> bool:
        return self.vertex.started is not None and self.vertex.completed is None


class _Trace:
    """Accumulates updates into per-vertex state, numbering vertices as they appear."""

    def __init__(self) -> None:
        self.steps: dict[str, _Step] = {}
        self.order: list[_Step] = []
        self.pending: dict[str, None] = {}

    def update(self, status: SolveStatus) -> None:
        now = time.monotonic()
        for v in status.vertexes:
            step = self.steps.get(v.digest)
            if step is None:
                step = self.steps[v.digest] = _Step(v)
            if v.started is not None and step.index == 0:
                self.order.append(step)
                step.index = len(self.order)
            if v.started is not None or step.vertex.started is None:
                step.vertex = v
            if v.started is not None:
                self._touch(step, now)
        for s in status.statuses:
            step = self.steps.get(s.vertex)
            if step is None:
                continue
            step.statuses[s.id] = s
            if s.id not in step.status_updates:
                step.status_updates.append(s.id)
            self._touch(step, now)
        for entry in status.logs:
            step = self.steps.get(entry.vertex)
            if step is None:
                continue
            since = entry.timestamp - (step.vertex.started or entry.timestamp)
            text = entry.data.decode("utf-8", "replace")
            parts = text.split("\n")
            for i, part in enumerate(parts):
                if i == len(parts) - 1:
                    if part:
                        if not step.partial:
                            step.partial_stamp = _log_stamp(since)
                        step.partial += part
                    continue
                if i == 0 and step.partial:
                    line = f"{step.partial_stamp} {step.partial}{part}"
                    step.partial = ""
                else:
                    line = f"{_log_stamp(since)} {part}"
                step.lines.append(line)
                step.tail.append(line)
            self._touch(step, now)
        for w in status.warnings:
            step = self.steps.get(w.vertex)
            if step is not None:
                self._touch(step, now)

    def _touch(self, step: _Step, now: float) -> None:
        step.last_update = now
        if step.vertex.digest not in self.pending:
            self.pending[step.vertex.digest] = None
            step.pending_since = now


class PlainRenderer(Renderer):
    """BuildKit's plain text output: one block per step, ``#N`` prefixed lines.

    While a step is printing, other steps' output is held back until it completes, goes
    quiet, or a waiting step has waited ``MAX_DELAY``; leaving an unfinished step prints
    ``#N ...`` and it continues later in a new block.
    """

    def __init__(self, out: IO[str]):
        self.out = out
        self.trace = _Trace()
        self.current: _Step | None = None
        self.printed_any = False
        self._lock = threading.Lock()

    def __call__(self, status: SolveStatus) -> None:
        with self._lock:
            self.trace.update(status)
            self._print()
            self.out.flush()

    def close(self) -> None:
        with self._lock:
            self._print(final=True)
            self._print_error_logs()
            self.out.flush()

    # -- printing --------------------------------------------------------------------

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")

    def _print_step(self, step: _Step, *, flush_partial: bool = False) -> None:
        if step is not self.current:
            if self.current is not None:
                self._flush_partial(self.current)
                self._write(f"#{self.current.index} ...")
            if self.printed_any:
                self._write("")
            self.printed_any = True
            self._write(f"#{step.index} {step.vertex.name}")
        if step.vertex.cache_miss and not step.miss_shown:
            step.miss_shown = True
            self._write(f"#{step.index} CACHE MISS: {step.vertex.cache_miss}")
        for sid in step.status_updates:
            self._print_status(step, step.statuses[sid])
        step.status_updates = []
        for line in step.lines:
            self._write(f"#{step.index} {line}")
        step.lines = []
        self.current = step
        v = step.vertex
        if flush_partial or v.completed is not None:
            self._flush_partial(step)
        if v.completed is not None:
            self.current = None
            if v.error:
                if is_canceled(v.error):
                    self._write(f"#{step.index} CANCELED")
                else:
                    self._write(f"#{step.index} ERROR: {v.error}")
            elif v.cached:
                self._write(f"#{step.index} CACHED")
            else:
                took = f" {v.completed - v.started:.1f}s" if v.started is not None else ""
                self._write(f"#{step.index} DONE{took}")
        self.trace.pending.pop(v.digest, None)
        step.pending_since = None

    def _flush_partial(self, step: _Step) -> None:
        if step.partial:
            line = f"{step.partial_stamp} {step.partial}"
            self._write(f"#{step.index} {line}")
            step.tail.append(line)
            step.partial = ""

    def _print_status(self, step: _Step, s: VertexStatus) -> None:
        last = step.printed_status.get(s.id)
        if last is not None and s.completed is None:
            delta = (s.current - last[0]) / s.total if s.total > 0 else 0.0
            if delta < MIN_PROGRESS_DELTA and s.timestamp - last[1] < MIN_TIME_DELTA:
                return
        step.printed_status[s.id] = (s.current, s.timestamp)
        size = ""
        if s.total:
            size = f" {format_bytes(s.current)} / {format_bytes(s.total)}"
        elif s.current:
            size = f" {format_bytes(s.current)}"
        took = ""
        end = s.completed if s.completed is not None else s.timestamp
        if s.started is not None and end - s.started > 0.01:
            took = f" {end - s.started:.1f}s"
        if s.completed is not None:
            took += " done"
        self._write(f"#{step.index} {s.id}{size}{took}")

    def _print(self, *, final: bool = False) -> None:
        trace = self.trace
        pending = [trace.steps[d] for d in trace.pending if trace.steps[d].index]
        done = sorted((s for s in pending if s.vertex.completed is not None),
                      key=lambda s: (s is not self.current, s.vertex.completed))
        for step in done:
            self._print_step(step)
        rest = [s for s in pending if s.vertex.completed is None]
        current = self.current
        if current is not None and current.vertex.completed is not None:
            current = None
        if not rest:
            if current is None and not final:
                for step in trace.order:
                    if step.active:
                        self._print_step(step)
                        break
            return
        if current is not None and current in rest:
            self._print_step(current)
            rest.remove(current)
        if final:
            for step in sorted(rest, key=lambda s: s.index):
                self._print_step(step, flush_partial=True)
            return
        if not rest:
            return
        now = time.monotonic()
        oldest = min(rest, key=lambda s: s.pending_since or now)
        if (current is None
                or now - (oldest.pending_since or now) > MAX_DELAY
                or now - current.last_update > MAX_DELAY / 2):
            self._print_step(oldest)

    def _print_error_logs(self) -> None:
        for step in self.trace.order:
            v = step.vertex
            if v.error and not is_canceled(v.error):
                self._write("------")
                self._write(f" > {v.name}:")
                for line in step.tail:
                    self._write(line)
                self._write("------")


class TTYRenderer(Renderer):
    """A live view (rich): one line per step with its timer, statuses with transfer sizes."""

    def __init__(self, out: IO[str], *, phase: str = "Building"):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out, highlight=False)
        self.trace = _Trace()
        self.phase = phase
        self.start = time.time()
        self._lock = threading.Lock()
        self._closing = False
        self.live = Live(console=self.console, refresh_per_second=8, transient=False,
                         get_renderable=self._renderable)
        self.live.start()

    def __call__(self, status: SolveStatus) -> None:
        with self._lock:
            self.trace.update(status)
            self.trace.pending.clear()

    def _renderable(self) -> Any:
        from rich.text import Text

        with self._lock:
            return self._render(Text, final=self._closing)

    def _render(self, text_cls: Any, *, final: bool) -> Any:
        now = time.time()
        steps = self.trace.order
        completed = sum(1 for s in steps if s.vertex.completed is not None)
        head = f"[+] {self.phase} {now - self.start:.1f}s ({completed}/{len(steps)})"
        if final and steps and completed == len(steps):
            head += " FINISHED"
        out = text_cls(head + "\n")
        width = max(self.console.width, 40)
        for step in steps:
            v = step.vertex
            end = v.completed if v.completed is not None else now
            took = end - v.started if v.started is not None else 0.0
            name = v.name
            style = ""
            if v.error:
                name, style = (("CANCELED " + name, "yellow") if is_canceled(v.error)
                               else ("ERROR " + name, "red"))
            elif v.cached:
                name, style = "CACHED " + name, "blue"
            elif v.completed is not None:
                style = "blue"
            out.append(self._line(name, f"{took:.1f}s", width), style=style)
            if v.cache_miss and not v.cached:
                out.append(f" => => cache miss: {v.cache_miss}"[: width - 1] + "\n", style="dim")
            for s in step.statuses.values():
                size = ""
                if s.total:
                    size = f" {format_bytes(s.current)} / {format_bytes(s.total)}"
                elif s.current:
                    size = f" {format_bytes(s.current)}"
                s_end = s.completed if s.completed is not None else now
                s_took = s_end - s.started if s.started is not None else 0.0
                out.append(self._line("=> " + s.id + size, f"{s_took:.1f}s", width))
            if v.completed is None and step.tail:
                for line in list(step.tail)[-6:]:
                    out.append(f" => => # {line}"[: width - 1] + "\n", style="dim")
        return out

    @staticmethod
    def _line(name: str, timer: str, width: int) -> str:
        left = width - len(timer) - 5
        return f" => {name[:left]:<{left}} {timer}\n"

    def close(self) -> None:

        with self._lock:
            self._closing = True
        self.live.refresh()
        self.live.stop()
        for step in self.trace.order:
            v = step.vertex
            if v.error and not is_canceled(v.error):
                self.console.print("------", highlight=False)
                self.console.print(f" > {v.name}:", highlight=False, markup=False)
                for line in step.tail:
                    self.console.print(line, highlight=False, markup=False)
                self.console.print("------", highlight=False)


def make_renderer(mode: str = "auto", out: IO[str] | None = None) -> Renderer:
    """The renderer for ``--progress MODE``, writing to ``out`` (default: stderr)."""
    out = out if out is not None else sys.stderr
    if mode not in MODES:
        raise UsageError(f"invalid progress mode {mode!r} (expected one of: {', '.join(MODES)})",
                         flag="--progress")
    if mode == "quiet":
        return QuietRenderer()
    if mode == "rawjson":
        return RawJSONRenderer(out)
    if mode in ("auto", "tty"):
        isatty = getattr(out, "isatty", None)
        if isatty is not None and isatty():
            return TTYRenderer(out)
        if mode == "tty":
            raise UsageError("output is not a terminal", flag="--progress=tty")
    return PlainRenderer(out)


def progress_sinks(progress: Any) -> tuple[list[Renderer], list[Callable[[SolveStatus], None]]]:
    """``(renderers to close at the end, plain callables)`` for a ``progress`` argument: a
    ``--progress`` mode (``none`` is ``quiet``; the renderer writes to stderr), a callable
    receiving each :class:`~pybk.core.progress.events.SolveStatus`, a list of callables, or None
    for no output."""
    if progress is None:
        return [], []
    if isinstance(progress, str):
        return [make_renderer("quiet" if progress == "none" else progress, sys.stderr)], []
    if callable(progress):
        return [], [progress]
    return [], list(progress)
