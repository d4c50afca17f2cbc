"""Include/exclude filtering of the paths under a copy or walk base.

BuildKit's patternmatcher semantics, from :mod:`pybk.core.fs.patterns`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pybk.core.errors import BuildError

__all__ = ["PathFilter"]


class PathFilter:
    """Include/exclude patterns applied to paths relative to a copy or walk base.

    ``verdict(rel, is_dir)`` answers ``(keep, descend)``: whether the entry itself is selected,
    and for a directory whether its children can contain selected entries at all (so a walk
    may skip it without reading it).
    """

    def __init__(self, include_patterns: Sequence[str] = (), exclude_patterns: Sequence[str] = ()):
        from pybk.core.fs.patterns import PatternError, PatternMatcher

        self._matcher_cls = PatternMatcher
        try:
            self.include = PatternMatcher(list(include_patterns)) if include_patterns else None
            self.exclude = PatternMatcher(list(exclude_patterns)) if exclude_patterns else None
        except PatternError as e:
            raise BuildError(f"invalid pattern: {e}") from None
        self._include_comps = [
            [c for c in p.strip("/").split("/") if c not in ("", ".")]
            for p in (self.include.patterns if self.include is not None else ())
            if not p.startswith("!")
        ]
        self._prefix_matchers: dict[str, Any] = {}

    @classmethod
    def create(cls, include_patterns: Sequence[str] | None, exclude_patterns: Sequence[str] | None
               ) -> PathFilter | None:
        """A filter, or ``None`` when there are no patterns (everything is selected)."""
        if not include_patterns and not exclude_patterns:
            return None
        return cls(include_patterns or (), exclude_patterns or ())

    def verdict(self, rel: str, is_dir: bool) -> tuple[bool, bool]:
        keep = True
        descend = True
        if self.include is not None and not self.include.matches(rel):
            keep = False
            descend = is_dir and self._include_may_contain(rel)
        if self.exclude is not None and self.exclude.matches(rel):
            keep = False
            if descend and is_dir:
                descend = not self.exclude.can_skip_dir(rel)
        return keep, descend and is_dir

    def _include_may_contain(self, rel: str) -> bool:
        depth = rel.count("/") + 1
        for comps in self._include_comps:
            if any("**" in c for c in comps[:depth]):
                return True
            if len(comps) > depth:
                prefix = "/".join(comps[:depth])
                matcher = self._prefix_matchers.get(prefix)
                if matcher is None:
                    matcher = self._prefix_matchers[prefix] = self._matcher_cls([prefix])
                if matcher.matches(rel):
                    return True
        return False
