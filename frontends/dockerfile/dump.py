"""BuildKit's AST dump (``parser.Node.Dump``), byte-exact.

One line per instruction: ``(keyword ["--flag" …] "arg" …)``; ONBUILD's trigger is nested as
``(onbuild (run "x"))``. Strings use Go's ``%q`` quoting.
"""

from __future__ import annotations

import unicodedata

from pybk.frontends.dockerfile.parser import Node, parse
from pybk.frontends.dockerfile.shell import go_trim_space

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


def dump_node(node: Node) -> str:
    """Dump one instruction node (without the surrounding parentheses)."""
    parts = [node.keyword.lower()]
    if node.flags:
        parts.append("[" + " ".join(go_quote(flag) for flag in node.flags) + "]")
    if node.trigger is not None:
        parts.append("(" + dump_node(node.trigger) + ")")
    parts.extend(go_quote(arg) for arg in node.args)
    return go_trim_space(" ".join(parts))


def dump_ast(data: bytes) -> str:
    """Parse ``data`` and return BuildKit's dump of it (no trailing newline, like ``Dump()``)."""
    root = parse(data)
    return "\n".join("(" + dump_node(child) + ")" for child in root.children)
