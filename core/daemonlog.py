"""pybkd's own log: every line the daemon writes about itself goes through here.

``[log] format = "text"`` (the default) writes what pybkd always wrote: ``pybkd: MESSAGE``, and
``WARNING: MESSAGE`` for warnings. ``format = "json"`` writes one JSON object per line, like
buildkitd's logrus JSON formatter: ``{"level": "info", "msg": "...", "time": "RFC3339"}`` plus
any fields given (``client_pid``, ``exit`` …). Levels are ``error``, ``warning``, ``info`` and
``debug``; ``[log] level`` (or ``--debug``) chooses the lowest written (``panic``/``fatal``/
``error`` write errors only, ``warn``/``warning`` warnings and errors, ``info`` the default,
``debug``/``trace`` everything).

The log is written to a copy of the daemon's stderr taken by :func:`configure`, so a forked
child that has put a client's stderr on descriptor 2 still logs to the daemon's. In JSON mode
:func:`configure` also replaces ``sys.stderr`` of the daemon's process by a stream that turns
each line written to it (an error report, a Python warning, a plugin's ``print``) into a JSON
record, so the daemon's output stays one JSON object per line; a child running a command puts
the client's stream there instead.

Only the standard library is imported: the debug endpoint's process uses this module too.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import sys
from typing import Any

ERROR, WARNING, INFO, DEBUG = "error", "warning", "info", "debug"
_RANK = {ERROR: 0, WARNING: 1, INFO: 2, DEBUG: 3}
#: ``[log] level`` values (lower case) to the lowest level written
CONFIG_LEVELS = {"panic": ERROR, "fatal": ERROR, "error": ERROR, "warn": WARNING,
                 "warning": WARNING, "info": INFO, "debug": DEBUG, "trace": DEBUG}
FORMATS = ("text", "json")


class _Log:
    fd = 2
    json = False
    threshold = _RANK[INFO]


_log = _Log()


def configure(*, format: str = "text", level: str | None = "info", fd: int = 2,
              capture_stderr: bool = True) -> None:
    """Log in ``format`` (``"text"`` or ``"json"``) to a copy of descriptor ``fd``, writing
    levels from ``level`` (a ``[log] level`` value, ``None`` meaning ``info``) up. In JSON mode
    with ``capture_stderr``, ``sys.stderr`` becomes a stream that logs each line written to it
    (at ``error`` level for ``error: …`` lines and tracebacks, ``warning`` for ``WARNING: …``,
    else ``info``)."""
    if format not in FORMATS:
        raise ValueError(f"log format {format!r}: use text or json")
    _log.json = format == "json"
    _log.threshold = _RANK[CONFIG_LEVELS.get((level or INFO).lower(), INFO)]
    _log.fd = os.dup(fd)  # not inherited by programs run; kept by forked children
    if _log.json and capture_stderr:
        sys.stderr = _LineLog()


def enabled(level: str) -> bool:
    """Whether a line at ``level`` is written."""
    return _RANK[level] <= _log.threshold


def is_json() -> bool:
    """Whether the log is JSON."""
    return _log.json


def log_fd() -> int:
    """The descriptor the log is written to (to pass to a process that logs here too)."""
    return _log.fd


def format_line(level: str, msg: str, fields: dict[str, Any] | None = None, *,
                json_format: bool | None = None) -> str:
    """One log line (with its newline)."""
    if json_format if json_format is not None else _log.json:
        record: dict[str, Any] = {
            "level": level, "msg": msg,
            "time": datetime.datetime.now().astimezone().isoformat(timespec="microseconds")}
        for key, value in (fields or {}).items():
            record.setdefault(key, value)
        return json.dumps(record, default=str) + "\n"
    if level == WARNING:
        return f"WARNING: {msg}\n"
    return f"pybkd: {msg}\n"


def log(level: str, msg: str, **fields: Any) -> None:
    """Write ``msg`` at ``level`` (with ``fields`` in JSON) if the level is enabled."""
    if not enabled(level):
        return
    data = format_line(level, msg, fields).encode(errors="backslashreplace")
    try:
        while data:
            data = data[os.write(_log.fd, data):]
    except OSError:
        pass  # nobody reads the daemon's output any more: never fail for its log


def error(msg: str, **fields: Any) -> None:
    """Log an error."""
    log(ERROR, msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    """Log a warning."""
    log(WARNING, msg, **fields)


def info(msg: str, **fields: Any) -> None:
    """Log an informational line."""
    log(INFO, msg, **fields)


def debug(msg: str, **fields: Any) -> None:
    """Log a debug line (written with ``--debug`` or ``[log] level = "debug"``)."""
    log(DEBUG, msg, **fields)


def _level_of(line: str) -> str:
    if line.startswith(("WARNING:", "warning:")):
        return WARNING
    if line.startswith(("error:", "Traceback", "  ")) or "Error" in line.split(":", 1)[0]:
        return ERROR
    return INFO


class _LineLog(io.TextIOBase):
    """``sys.stderr`` of a daemon logging JSON: each complete line written becomes a record."""

    def __init__(self) -> None:
        self._pending = ""

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def fileno(self) -> int:
        """The log's descriptor, for code that writes to it directly (those bytes are not
        made JSON)."""
        return _log.fd

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                log(_level_of(line), line.removeprefix("pybkd: "))
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            line, self._pending = self._pending, ""
            log(_level_of(line), line)
