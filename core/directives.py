"""Parser directives at the top of a build file: ``# syntax=``, ``# escape=`` and ``# check=``
(BuildKit ``parser/directives.go``), and pybk's own ``# pybk=`` (extensions the file opts in to,
comma-separated: ``no-cache``).

Directives are read only from the leading block of the file: the first line that is not a
directive (a blank line, an ordinary comment, an instruction, an unknown directive name) ends
the block for good. Names are case-insensitive; repeating one is an error; ``escape`` must be
``\\`` or a backtick.

``# pybk=`` ends the block after itself: BuildKit does not know the name, so for BuildKit the
block ends there; directives after it would be comments to BuildKit, and are to pybk too.

The engine uses :func:`scan_directives` to choose a frontend before any frontend is loaded;
the Dockerfile parser feeds its lines through a :class:`DirectiveScanner`.
"""

from __future__ import annotations

import json
import re

from pybk.core.model import Model, field

VALID_DIRECTIVES = frozenset({"syntax", "escape", "check", "pybk"})
#: the extensions ``# pybk=`` may name
PYBK_EXTENSIONS = ("no-cache",)
DEFAULT_ESCAPE = "\\"
#: what the Dockerfile parser strips from the start of a line before looking at it
LEADING_BLANKS = "\t\n\v\f\r \x85\xa0"


def _directive_pattern(comment: str) -> re.Pattern[str]:
    # Go's ``\s`` is ASCII [\t\n\f\r ] (no \v).
    return re.compile(
        re.escape(comment)
        + r"[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z"
    )


_PATTERNS = {comment: _directive_pattern(comment) for comment in ("#", "//")}


class Directives(Model):
    """The directives found at the top of a Dockerfile (``lines`` maps name → 1-based line)."""

    syntax: str | None = None
    escape: str = DEFAULT_ESCAPE
    check: str | None = None
    pybk: str | None = None
    lines: dict[str, int] = field(factory=dict)

    @property
    def extensions(self) -> frozenset[str]:
        """The pybk extensions the file opts in to (``# pybk=no-cache``)."""
        return frozenset(w.strip().lower() for w in (self.pybk or "").split(",") if w.strip())


class DirectiveScanner:
    """Looks at physical lines one by one with BuildKit's directive rules (``DirectiveParser``).

    ``comment`` is the prefix a directive starts with (``#``, or ``//`` when detecting the
    syntax of other file types).
    """

    def __init__(self, comment: str = "#") -> None:
        self.escape = DEFAULT_ESCAPE
        self.done = False
        self._pattern = _PATTERNS[comment]
        self._values: dict[str, str] = {}
        self._lines: dict[str, int] = {}
        self._count = 0

    def parse_line(self, line: str) -> tuple[str, str] | None:
        """``(name, value)`` when ``line`` is the next directive of the block, else None (and
        the block is over). Raises ``ValueError`` for a repeated directive."""
        self._count += 1
        if self.done:
            return None
        match = self._pattern.match(line)
        name = match.group(1).lower() if match else ""
        if name not in VALID_DIRECTIVES:
            self.done = True
            return None
        if name in self._values:
            raise ValueError(f"only one {name} parser directive can be used")
        value = match.group(2)  # type: ignore[union-attr]
        self._values[name] = value
        self._lines[name] = self._count
        if name == "pybk":
            self.done = True  # BuildKit's block ends at a name it does not know
        return name, value

    def feed(self, token: str) -> None:
        """The Dockerfile parser's step (a line with its leading blanks removed): also checks
        and applies ``escape``. Raises ``ValueError`` for a repeated or invalid directive."""
        directive = self.parse_line(token)
        if directive is not None and directive[0] == "pybk":
            unknown = sorted(set(Directives(pybk=directive[1]).extensions)
                             - set(PYBK_EXTENSIONS))
            if unknown:
                raise ValueError(f"unknown pybk extension {unknown[0]!r} (known: "
                                 + ", ".join(PYBK_EXTENSIONS) + ")")
        if directive is None or directive[0] != "escape":
            return
        if directive[1] not in ("`", "\\"):
            raise ValueError(f"invalid escape token '{directive[1]}' does not match ` or \\")
        self.escape = directive[1]

    def result(self) -> Directives:
        return Directives(
            syntax=self._values.get("syntax"),
            escape=self.escape,
            check=self._values.get("check"),
            pybk=self._values.get("pybk"),
            lines=dict(self._lines),
        )


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    """Lines as Go's ``bufio.ScanLines`` yields them (a trailing ``\\r`` dropped)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def parse_directives(data: bytes) -> Directives:
    """Only the directives of a Dockerfile, without parsing its instructions (as the parser
    reads them: leading blanks ignored). Raises ``ValueError`` as :meth:`DirectiveScanner.feed`."""
    scanner = DirectiveScanner()
    for line in _lines(_text(data)):
        scanner.feed(line.rstrip("\r").lstrip(LEADING_BLANKS))
        if scanner.done:
            break
    return scanner.result()


class SyntaxDirective(Model):
    """The frontend a file asks for: ``ref`` is the image reference (first word of the value),
    ``cmdline`` the whole value, ``line`` its 1-based line."""

    ref: str
    cmdline: str
    line: int


def _find(key: str, lines: list[str], comment: str) -> tuple[str, int] | None:
    scanner = DirectiveScanner(comment)
    for offset, line in enumerate(lines):
        try:
            directive = scanner.parse_line(line)
        except ValueError:
            return None
        if directive is None:
            return None
        if directive[0] == key:
            return directive[1], offset
    return None


def detect_syntax(data: bytes) -> SyntaxDirective | None:
    """Find the ``syntax`` directive as BuildKit's frontend selection does (``DetectSyntax``).

    Looks for ``# syntax=…``, then ``// syntax=…``, then a JSON document ``{"syntax": "…"}``;
    a leading BOM and a ``#!`` shebang line are skipped.
    """
    text = _text(data)
    first_line = 1
    if text.startswith("#!"):
        text = text.partition("\n")[2]
        first_line = 2
    lines = _lines(text)
    for comment in ("#", "//"):
        found = _find("syntax", lines, comment)
        if found is not None:
            value, offset = found
            return SyntaxDirective(value.split(" ", 1)[0], value, first_line + offset)
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if (isinstance(document, dict) and isinstance(document.get("syntax"), str)
            and all(isinstance(value, str) for value in document.values())):
        value = document["syntax"]
        return SyntaxDirective(value, value, first_line)
    return None


def scan_directives(data: bytes) -> dict[str, str]:
    """The directives a frontend is chosen by, as ``{name: value}``.

    The leading block's directives as the Dockerfile parser reads them (a repeated one ends the
    block here instead of failing), with ``syntax`` as :func:`detect_syntax` finds it.
    """
    found: dict[str, str] = {}
    scanner = DirectiveScanner()
    for line in _lines(_text(data)):
        try:
            directive = scanner.parse_line(line.lstrip(LEADING_BLANKS))
        except ValueError:
            break
        if directive is None:
            break
        found[directive[0]] = directive[1]
    found.pop("syntax", None)
    syntax = detect_syntax(data)
    if syntax is not None:
        found["syntax"] = syntax.cmdline
    return found
