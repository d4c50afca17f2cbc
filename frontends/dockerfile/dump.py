"""BuildKit's AST dump (``parser.Node.Dump``), byte-exact.

One line per instruction: ``(keyword ["--flag" …] "arg" …)``; ONBUILD's trigger is nested as
``(onbuild (run "x"))``. Strings use Go's ``%q`` quoting.
"""

from __future__ import annotations

from pybk.core.errors import go_quote
from pybk.frontends.dockerfile.parser import Node, parse
from pybk.frontends.dockerfile.shell import go_trim_space


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
