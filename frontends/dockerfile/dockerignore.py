"""``.dockerignore`` files (moby ``patternmatcher/ignorefile``).

``<Dockerfile>.dockerignore`` next to the Dockerfile replaces the context root's
``.dockerignore`` when it exists.
"""

from __future__ import annotations

import os

from pybk.core.errors import InputError
from pybk.core.fs.patterns import PatternError, PatternMatcher, clean_path


def read_patterns(data: bytes | str, filename: str = ".dockerignore") -> list[str]:
    """The patterns of an ignore file: BOM stripped, ``#`` comment lines (column 0) and blank
    lines skipped, lines trimmed, paths cleaned, one leading ``/`` removed, ``!`` kept.

    A malformed pattern (an unterminated ``[``, ``!`` alone) is an InputError naming
    ``filename`` and the line."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    text = text.removeprefix("\ufeff")
    patterns: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
        try:
            PatternMatcher(patterns[-1:])
        except PatternError as exc:
            raise InputError(str(exc), filename=filename, line=number,
                             source_line=line.strip()) from None
    return patterns


def ignore_file_for(context_dir: str, dockerfile_path: str | None = None) -> str | None:
    """The ignore file that applies: ``<dockerfile>.dockerignore`` if present, else the
    context's ``.dockerignore``, else None."""
    if dockerfile_path:
        specific = dockerfile_path + ".dockerignore"
        if os.path.isfile(specific):
            return specific
    root = os.path.join(context_dir, ".dockerignore")
    return root if os.path.isfile(root) else None


def load_patterns(context_dir: str, dockerfile_path: str | None = None) -> list[str]:
    """The exclude patterns for a build context (empty when there is no ignore file)."""
    path = ignore_file_for(context_dir, dockerfile_path)
    if path is None:
        return []
    with open(path, "rb") as handle:
        return read_patterns(handle.read(), path)


def load_matcher(context_dir: str, dockerfile_path: str | None = None) -> PatternMatcher:
    """A :class:`PatternMatcher` for the context's ignore file."""
    return PatternMatcher(load_patterns(context_dir, dockerfile_path))
