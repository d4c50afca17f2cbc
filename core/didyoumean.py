"""The one place pybk guesses what a user meant to type ("did you mean …?").

The rule is BuildKit's (``suggest.Search``): the candidate at the smallest Levenshtein distance,
if that distance is small for the word's length. A candidate equal to the word except for case
is always offered when matching ignores case.
"""

from __future__ import annotations

from collections.abc import Iterable


def levenshtein(a: str, b: str) -> int:
    """The edit distance between ``a`` and ``b`` (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def closest(word: str, candidates: Iterable[str], *, case_sensitive: bool = True,
            loose: bool = False) -> str | None:
    """The candidate ``word`` was most likely a typo of, or None.

    ``loose`` also accepts what BuildKit's rule finds too far for a short word (``rnu`` for
    ``run``, ``maximum`` for ``max``): the closest candidate by similarity ratio (difflib's,
    at least 0.6). Messages that must match BuildKit's byte for byte leave it off.
    """
    candidates = list(candidates)
    match = _levenshtein_rule(word, candidates, case_sensitive)
    if match is None and loose:
        import difflib

        lowered = {c.lower(): c for c in candidates}
        close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        match = lowered[close[0]] if close else None
    return match


def _levenshtein_rule(word: str, candidates: list[str], case_sensitive: bool) -> str | None:
    best, best_distance = None, None
    probe = word if case_sensitive else word.lower()
    for option in candidates:
        distance = levenshtein(probe, option if case_sensitive else option.lower())
        if best_distance is None or distance < best_distance:
            best, best_distance = option, distance
    if best is None or best_distance is None:
        return None
    if best_distance == 0 and not case_sensitive and best != word:
        return best
    if 0 < best_distance <= max(2, len(word) // 3) and best_distance < len(word) - 1:
        return best
    return None


def did_you_mean(word: str, candidates: Iterable[str], *, case_sensitive: bool = True,
                 loose: bool = False, quote: str = "") -> str:
    """`` (did you mean X?)`` for the closest candidate (wrapped in ``quote``), or ``""``."""
    match = closest(word, candidates, case_sensitive=case_sensitive, loose=loose)
    return f" (did you mean {quote}{match}{quote}?)" if match else ""
