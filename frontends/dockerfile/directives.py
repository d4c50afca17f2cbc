"""Parser directives: ``# syntax=``, ``# escape=`` and ``# check=`` (BuildKit ``directives.go``).

Directives are read only from the leading block of the file: the first line that is not a
directive (a blank line, an ordinary comment, an instruction, an unknown directive name) ends
the block for good. Names are case-insensitive; repeating one is an error; ``escape`` must be
``\\`` or a backtick.
"""

from __future__ import annotations

import json
import re

import attrs

VALID_DIRECTIVES = frozenset({"syntax", "escape", "check"})
DEFAULT_ESCAPE = "\\"

# Go's ``\s`` is ASCII [\t\n\f\r ] (no \v).
_DIRECTIVE = re.compile(
    r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z"
)
_SLASH_DIRECTIVE = re.compile(
    r"//[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z"
)


@attrs.frozen
class Directives:
    """The directives found at the top of a Dockerfile (``lines`` maps name → 1-based line)."""

    syntax: str | None = None
    escape: str = DEFAULT_ESCAPE
    check: str | None = None
    lines: dict[str, int] = attrs.field(factory=dict)


class DirectiveScanner:
    """Feeds physical lines (newline and leading blanks removed) through the directive rules."""

    def __init__(self) -> None:
        self.escape = DEFAULT_ESCAPE
        self.done = False
        self._values: dict[str, str] = {}
        self._lines: dict[str, int] = {}
        self._count = 0

    def feed(self, token: str) -> None:
        """Look at the next line; raise ``ValueError`` for a repeated or invalid directive."""
        self._count += 1
        if self.done:
            return
        match = _DIRECTIVE.match(token)
        if match is None:
            self.done = True
            return
        name = match.group(1).lower()
        if name not in VALID_DIRECTIVES:
            self.done = True
            return
        if name in self._values:
            raise ValueError(f"only one {name} parser directive can be used")
        value = match.group(2)
        if name == "escape" and value not in ("`", "\\"):
            raise ValueError(f"invalid escape token '{value}' does not match ` or \\")
        if name == "escape":
            self.escape = value
        self._values[name] = value
        self._lines[name] = self._count

    def result(self) -> Directives:
        return Directives(
            syntax=self._values.get("syntax"),
            escape=self.escape,
            check=self._values.get("check"),
            lines=dict(self._lines),
        )


def parse_directives(data: bytes) -> Directives:
    """Only the directives of a Dockerfile, without parsing its instructions."""
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    scanner = DirectiveScanner()
    for raw in text.split("\n"):
        token = raw.rstrip("\r\n").lstrip("\t\n\v\f\r \x85\xa0")
        scanner.feed(token)
        if scanner.done:
            break
    return scanner.result()


@attrs.frozen
class SyntaxDirective:
    """The frontend a file asks for: ``ref`` is the image reference (first word of the value),
    ``cmdline`` the whole value, ``line`` its 1-based line."""

    ref: str
    cmdline: str
    line: int


def detect_syntax(data: bytes) -> SyntaxDirective | None:
    """Find the ``syntax`` directive as BuildKit's frontend selection does.

    Accepts ``# syntax=…``, ``// syntax=…`` and a JSON document ``{"syntax": "…"}``; a leading
    BOM and a ``#!`` shebang line are skipped.
    """
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    first_line = 1
    if text.startswith("#!"):
        text = text.partition("\n")[2]
        first_line = 2
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("syntax"), str):
        value = document["syntax"]
        return SyntaxDirective(value.split(" ", 1)[0], value, first_line)
    for pattern in (_SLASH_DIRECTIVE, _DIRECTIVE):
        seen: set[str] = set()
        for offset, raw in enumerate(text.split("\n")):
            match = pattern.match(raw.rstrip("\r\n").lstrip("\t\v\f\r "))
            if match is None:
                break
            name = match.group(1).lower()
            if name not in VALID_DIRECTIVES or name in seen:
                break
            seen.add(name)
            if name == "syntax":
                value = match.group(2)
                return SyntaxDirective(value.split(" ", 1)[0], value, first_line + offset)
    return None
