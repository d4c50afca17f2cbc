"""GC filters: containerd's filter syntax, as ``[[worker.oci.gcpolicy]] filters`` use it."""

from __future__ import annotations

import re

from pybk.core.model import Model

__all__ = ["FILTER_FIELDS", "RECORD_TYPES", "Selector", "check_filter", "parse_filter"]


RECORD_TYPES = ("regular", "source.local", "exec.cachemount", "source.git.checkout",
                "frontend", "internal")
#: fields a cache record exposes to filters
FILTER_FIELDS = ("id", "parents", "description", "inuse", "mutable", "immutable", "type",
                 "shared", "private")


class Selector(Model):
    """One ``field==value`` term of a filter; ``operator`` is ``==``, ``!=``, ``~=`` or ``""``
    (presence)."""

    fieldpath: tuple[str, ...]
    operator: str
    value: str = ""


_FIELD_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_QUOTES = '"/|'


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    out, i = [], pos + 1
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", quote: quote, '"': '"'}
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt not in escapes:
                if quote == '"':
                    raise ValueError(f"illegal escape \\{nxt} at position {i + 1}")
                out.append(c)
                i += 1
                continue
            out.append(escapes[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    raise ValueError(f"quoted text starting at position {pos + 1} is not terminated")


def parse_filter(text: str) -> list[Selector]:
    """The selectors of one filter string (all must match); ValueError when malformed.

    Grammar (containerd): ``selector ("," selector)*``; ``selector := fieldpath [op value]``;
    ``fieldpath := field ("." field)*``; ``op := "==" | "!=" | "~="``; values and fields may be
    quoted with ``"``, ``/`` or ``|``.
    """
    pos, n = 0, len(text)
    selectors: list[Selector] = []

    def skip_space() -> None:
        nonlocal pos
        while pos < n and text[pos].isspace():
            pos += 1

    def field() -> str:
        nonlocal pos
        skip_space()
        if pos < n and text[pos] in _QUOTES:
            value, pos = _read_quoted(text, pos)
            return value
        m = _FIELD_CHARS.match(text, pos)
        if m is None:
            got = f'"{text[pos]}"' if pos < n else "end of filter"
            raise ValueError(f"expected a field name at position {pos + 1}, got {got}")
        pos = m.end()
        return m.group()

    if text.strip() == "":
        return []
    while True:
        path = [field()]
        while pos < n and text[pos] == ".":
            pos += 1
            path.append(field())
        skip_space()
        if pos >= n or text[pos] == ",":
            selectors.append(Selector(tuple(path), ""))
        else:
            start = pos
            while pos < n and text[pos] in "=!~":
                pos += 1
            op = text[start:pos]
            if op not in ("==", "!=", "~="):
                shown = f'"{op}"' if op else f'"{text[start]}"'
                raise ValueError(f'expected an operator ("==", "!=" or "~=") at position '
                                 f"{start + 1}, got {shown}")
            skip_space()
            if pos < n and text[pos] in _QUOTES:
                value, pos = _read_quoted(text, pos)
            else:
                vstart = pos
                if pos < n and text[pos] in ".,":
                    raise ValueError(f"expected a value at position {pos + 1}")
                while pos < n and text[pos] != "," and not text[pos].isspace():
                    pos += 1
                value = text[vstart:pos]
                if not value:
                    raise ValueError(f"expected a value after {op} at position {pos + 1}")
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f'invalid regular expression "{value}": {exc}') from None
            selectors.append(Selector(tuple(path), op, value))
        skip_space()
        if pos >= n:
            return selectors
        if text[pos] != ",":
            raise ValueError(f'unexpected "{text[pos]}" at position {pos + 1}')
        pos += 1


def check_filter(text: str) -> None:
    try:
        parse_filter(text)
    except ValueError as exc:
        raise ValueError(f'invalid filter "{text}": {exc}') from None
