"""Path patterns as BuildKit's ``.dockerignore`` matching (moby ``patternmatcher``).

A pattern is a Go ``filepath.Match`` glob (``*``, ``?``, ``[...]``, ``\\`` escapes) extended
with ``**`` (any number of directories). ``!pattern`` re-includes. Patterns are applied in
order and the last one that matches wins; a path also matches when one of its parent
directories matches. Paths are relative, ``/``-separated. Dependency-free; each pattern is
compiled once.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

__all__ = ["PatternError", "PatternMatcher", "clean_path"]


class PatternError(ValueError):
    """A pattern is malformed (``!`` alone, an unterminated ``[`` class, a trailing ``\\``)."""


def clean_path(path: str) -> str:
    """Go ``filepath.Clean`` for ``/``-separated paths (``""`` → ``"."``, ``//a`` → ``/a``)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    cleaned = posixpath.normpath(path)
    if rooted:
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


_EXACT, _PREFIX, _SUFFIX, _REGEX = range(4)
_ESCAPED = frozenset(".+()|{}$")


def _check_syntax(pattern: str) -> None:
    """Reject what Go's ``filepath.Match`` reports as ``ErrBadPattern``."""
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError(f"syntax error in pattern: {pattern}")
            i += 2
            continue
        if ch == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            first = True
            while True:
                if i >= n:
                    raise PatternError(f"syntax error in pattern: {pattern}")
                if pattern[i] == "]" and not first:
                    break
                if pattern[i] == "\\":
                    i += 1
                    if i >= n:
                        raise PatternError(f"syntax error in pattern: {pattern}")
                if pattern[i] in "-]" and first:
                    raise PatternError(f"syntax error in pattern: {pattern}")
                i += 1
                first = False
                if i < n and pattern[i] == "-":
                    i += 1
                    if i >= n or pattern[i] == "]":
                        raise PatternError(f"syntax error in pattern: {pattern}")
                    if pattern[i] == "\\":
                        i += 1
                    i += 1
        i += 1


class _Pattern:
    __slots__ = ("text", "exclusion", "kind", "regex")

    def __init__(self, text: str, exclusion: bool):
        self.text = text
        self.exclusion = exclusion
        self.kind, self.regex = self._compile(text)

    @staticmethod
    def _compile(pattern: str) -> tuple[int, re.Pattern[str] | None]:
        out = ["^"]
        kind = _EXACT
        i, n = 0, len(pattern)
        index = 0
        while i < n:
            ch = pattern[i]
            i += 1
            if ch == "*":
                if i < n and pattern[i] == "*":
                    i += 1
                    if i < n and pattern[i] == "/":
                        i += 1
                    if i >= n:
                        if kind == _EXACT:
                            kind = _PREFIX
                        else:
                            out.append(".*")
                            kind = _REGEX
                    else:
                        out.append("(.*/)?")
                        kind = _REGEX
                    if index == 0:
                        kind = _SUFFIX
                else:
                    out.append("[^/]*")
                    kind = _REGEX
            elif ch == "?":
                out.append("[^/]")
                kind = _REGEX
            elif ch in _ESCAPED:
                out.append("\\" + ch)
            elif ch == "\\":
                if i < n:
                    out.append("\\" + pattern[i])
                    i += 1
                    kind = _REGEX
                else:
                    out.append("\\\\")
            elif ch in "[]":
                out.append(ch)
                kind = _REGEX
            else:
                out.append(ch)
            index += 1
        if kind != _REGEX:
            return kind, None
        out.append("$")
        try:
            return _REGEX, re.compile("".join(out), re.DOTALL)
        except re.error:
            raise PatternError(f"syntax error in pattern: {pattern}") from None

    def match(self, path: str) -> bool:
        kind = self.kind
        if kind == _EXACT:
            return path == self.text
        if kind == _PREFIX:
            return path.startswith(self.text[:-2])
        if kind == _SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix[:1] == "/" and path == suffix[1:]
        return self.regex.match(path) is not None  # type: ignore[union-attr]


class PatternMatcher:
    """Ordered include/exclude patterns (``!`` negates); the last matching pattern wins."""

    def __init__(self, patterns: Sequence[str]):
        self._patterns: list[_Pattern] = []
        self.has_exclusions = False
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = clean_path(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise PatternError('illegal exclusion pattern: "!"')
                text = text[1:]
                self.has_exclusions = True
            _check_syntax(text)
            self._patterns.append(_Pattern(text, exclusion))
        self._reinclude_prefixes = tuple(p.text + "/" for p in self._patterns if p.exclusion)

    @property
    def patterns(self) -> list[str]:
        """The cleaned patterns, ``!`` kept on exclusions."""
        return [("!" if p.exclusion else "") + p.text for p in self._patterns]

    def matches(self, path: str) -> bool:
        """Whether ``path`` (or one of its parent directories) is matched (e.g. ignored)."""
        path = clean_path(path.replace("\\", "/")) if path else "."
        parent = posixpath.dirname(path) or "."
        parent_parts = parent.split("/")
        matched = False
        for pattern in self._patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit and parent != ".":
                for i in range(1, len(parent_parts) + 1):
                    if pattern.match("/".join(parent_parts[:i])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched

    def deciding_pattern(self, path: str) -> str | None:
        """The pattern that makes ``path`` matched (the last matching one, as :meth:`matches`
        decides), or None when ``path`` is not matched."""
        path = clean_path(path.replace("\\", "/")) if path else "."
        parent = posixpath.dirname(path) or "."
        parent_parts = parent.split("/")
        deciding: str | None = None
        for pattern in self._patterns:
            if pattern.exclusion != (deciding is not None):
                continue
            hit = pattern.match(path) or (parent != "." and any(
                pattern.match("/".join(parent_parts[:i]))
                for i in range(1, len(parent_parts) + 1)))
            if hit:
                deciding = None if pattern.exclusion else pattern.text
        return deciding

    def can_skip_dir(self, path: str) -> bool:
        """Whether a walk may skip directory ``path`` entirely: it is matched and no ``!``
        pattern starts inside it (BuildKit's walker rule; wildcard re-includes such as
        ``!**/*.go`` do not keep a matched directory)."""
        if not self.matches(path):
            return False
        prefix = clean_path(path) + "/"
        return not any(p.startswith(prefix) for p in self._reinclude_prefixes)
