"""Instruction flags (``--name[=value]``) as BuildKit's ``bflag`` parses them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pybk.core.didyoumean import did_you_mean
from pybk.frontends.dockerfile.errors import InstructionError

#: the kinds of flag: ``--x`` / ``--x=true``, one value, a value per repetition
BOOL, STRING, STRINGS = "bool", "string", "strings"


def parse_flags(words: Sequence[str], spec: Mapping[str, str]) -> dict[str, object]:
    """Apply BuildKit's flag rules; returns name → bool / str / list[str] for given flags."""
    values: dict[str, object] = {}
    for word in words:
        if not word.startswith("--"):
            raise InstructionError(f"arg should start with -- : {word}")
        if word == "--":
            break
        name, has_value, value = word[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise InstructionError(f"unknown flag: {name}" + did_you_mean(name, sorted(spec)))
        if name in values and kind != STRINGS:
            raise InstructionError(f"duplicate flag specified: {name}")
        if kind == BOOL:
            if not has_value:
                values[name] = True
                continue
            lowered = value.lower()
            if lowered not in ("true", "false"):
                raise InstructionError(f"expecting boolean value for flag {name}, not: {value}")
            values[name] = lowered == "true"
        elif not has_value:
            raise InstructionError(f"missing a value on flag: {name}")
        elif kind == STRING:
            values[name] = value
        else:
            values.setdefault(name, []).append(value)  # type: ignore[union-attr]
    return values
