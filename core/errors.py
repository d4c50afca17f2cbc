"""One exception tree for everything pybk reports to a user.

User mistakes (bad flags, bad config, bad Dockerfiles) are shown without a traceback and exit
with code 2; a build that ran and failed exits with 1.
"""

from __future__ import annotations

import unicodedata
from typing import Any


class PybkError(Exception):
    """Base of every error pybk raises on purpose."""

    exit_code = 2

    def render(self) -> str:
        """The text shown to the user (no traceback)."""
        return str(self)


class UsageError(PybkError):
    """A command-line flag or argument is malformed."""

    def __init__(self, message: str, *, flag: str | None = None):
        self.flag = flag
        super().__init__(f"{flag}: {message}" if flag else message)


class ConfigError(PybkError):
    """A configuration file has one or more problems; all are reported at once."""

    def __init__(self, messages: list[str], *, path: str | None = None):
        self.messages = list(messages)
        self.path = path
        head = f"invalid config {path}" if path else "invalid config"
        super().__init__(head + ":\n" + "\n".join(f"  {m}" for m in self.messages))


class PluginError(PybkError):
    """Loading or looking up a plugin failed."""


class PluginLoadError(PluginError):
    """A plugin module could not be imported or registered."""


class PluginValidationError(PluginError):
    """A plugin class lacks ``name`` or ``Options``."""


class UnknownPluginError(PluginError):
    """A name was asked for that no plugin registered."""


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name."""


class InputError(PybkError):
    """A build input (Dockerfile, YAML, LLB, tarball, registry answer) is malformed.

    ``filename``/``line``/``column`` locate it when known; ``source_line`` is shown with a caret.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = None,
        line: int | None = None,
        column: int | None = None,
        source_line: str | None = None,
    ):
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(message)

    def __str__(self) -> str:
        where = ""
        if self.filename is not None or self.line is not None:
            where = f"{self.filename or '<input>'}"
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = where + self.message
        if self.source_line is not None:
            text += f"\n  {self.source_line}"
            if self.column is not None:
                text += "\n  " + " " * max(self.column - 1, 0) + "^"
        return text


class BuildError(PybkError):
    """A build ran and failed (a RUN exited non-zero, a source could not be fetched, …)."""

    exit_code = 1


class SolveError(BuildError):
    """A vertex of the build graph failed; ``vertex`` names it when known."""

    def __init__(self, message: str, *, vertex: str | None = None):
        self.vertex = vertex
        super().__init__(message)


class RegistryError(BuildError):
    """A registry answered with an error or with content that does not verify."""


class StoreError(PybkError):
    """The local store is unusable (locked, corrupt, out of space)."""

    exit_code = 1


class NotAvailableError(PybkError):
    """A capability is not available in this build of pybk or on this machine."""

    exit_code = 1


# -- message text ------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def _go_printable(ch: str) -> bool:
    if ch == " ":
        return True
    return unicodedata.category(ch)[0] in "LMNPS"


def go_quote(text: str) -> str:
    """Go ``strconv.Quote``. Undecodable bytes (surrogate escapes) are written as ``\\xHH``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    out = ['"']
    for ch in text:
        code = ord(ch)
        simple = _SIMPLE_ESCAPES.get(ch)
        if simple is not None:
            out.append(simple)
        elif 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by the surrogateescape decoding
            out.append(f"\\x{code - 0xDC00:02x}")
        elif _go_printable(ch):
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


class ProcessFailedError(BuildError):
    """A build process exited with a status it was not allowed to."""

    def __init__(self, command: str, status: int):
        self.command = command
        self.status = status
        super().__init__(
            f"process {go_quote(command)} did not complete successfully: exit code: {status}")


class StepLimitError(ProcessFailedError):
    """A build process was stopped by a resource limit (memory, processes, disk space);
    ``reason`` says which, and the message ends with it. ``completed``: the process exited
    as allowed, but what it left cannot be kept (it filled the disk)."""

    def __init__(self, command: str, status: int, reason: str, *, completed: bool = False):
        self.reason = reason
        super().__init__(command, status)
        head = f"process {go_quote(command)} completed, but" if completed else \
            f"{self.args[0]}:"
        self.args = (f"{head} {reason}",)


def exit_error(process: Any, code: int) -> ProcessFailedError:
    """BuildKit's error for a failed process: ``process "/bin/sh -c …" did not complete …``."""
    args = getattr(process, "args", process)
    return ProcessFailedError(" ".join(args), code)
