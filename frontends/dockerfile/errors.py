"""Errors raised while reading a Dockerfile."""

from __future__ import annotations

from pybk.core.errors import InputError


class DockerfileParseError(InputError):
    """A Dockerfile (or one of its instructions) is malformed.

    Carries the file name, the 1-based physical line (and column when known) and the offending
    line, so the CLI can show ``Dockerfile:3: unknown flag: mout`` without a traceback.
    ``end_line`` is the last physical line of the instruction when it spans several.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = "Dockerfile",
        line: int | None = None,
        end_line: int | None = None,
        column: int | None = None,
        source_line: str | None = None,
    ):
        self.end_line = end_line if end_line is not None else line
        super().__init__(
            message, filename=filename, line=line, column=column, source_line=source_line
        )


class InstructionError(Exception):
    """An instruction (or one of its values) is invalid; the parser locates it as a
    :class:`DockerfileParseError`."""
