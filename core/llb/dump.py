"""Print a Definition like ``buildctl debug dump-llb`` (JSON lines) or as a Graphviz graph;
both read a definition or those JSON lines (``pybk build --print-llb``)."""

from __future__ import annotations

import orjson

from pybk.core.errors import InputError
from pybk.core.llb.definition import Definition
from pybk.core.llb.ops import (
    DiffOp,
    ExecOp,
    FileActionCopy,
    FileActionMkDir,
    FileActionMkFile,
    FileActionRm,
    FileActionSymlink,
    FileOp,
    MergeOp,
    Op,
    OpMetadata,
    SourceOp,
    decode,
    encode,
)
from pybk.core.serialize import canonical_dumps, loads, sha256_digest


def _definition(data: bytes | str | Definition) -> Definition:
    """A definition from :meth:`Definition.to_bytes` output or from :func:`dump_llb`'s JSON
    lines (what ``pybk build --print-llb`` prints)."""
    if isinstance(data, Definition):
        return data
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if text.lstrip().startswith('{"Op"'):
        return _from_lines(text)
    return Definition.from_bytes(data)


def _from_lines(text: str) -> Definition:
    ops: list[bytes] = []
    metadata: dict[str, OpMetadata] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = loads(line)
        except ValueError as exc:
            raise InputError(f"line {number}: not valid JSON: {exc}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("Op"), dict):
            raise InputError(f'line {number}: expected an object with an "Op" (dump-llb\'s '
                             "format)")
        raw = canonical_dumps(entry["Op"])
        digest = sha256_digest(raw)
        if entry.get("Digest", digest) != digest:
            raise InputError(f"line {number}: the op hashes to {digest}, the line says "
                             f"{entry['Digest']}")
        ops.append(raw)
        if entry.get("OpMetadata"):
            metadata[digest] = decode(OpMetadata, entry["OpMetadata"], f"line {number}")
    return Definition(ops=tuple(ops), metadata=metadata)


def dump_llb(data: bytes | str | Definition) -> str:
    """One JSON object per op, in definition order: ``{"Op", "Digest", "OpMetadata"}``.

    The definition is validated first (:meth:`Definition.load`), so malformed input raises
    :class:`~pybk.core.errors.InputError`.
    """
    definition = _definition(data)
    definition.load()
    lines = []
    for raw, digest in zip(definition.ops, definition.digests(), strict=True):
        md = definition.metadata.get(digest)
        entry = {"Op": loads(raw), "Digest": digest, "OpMetadata": encode(md) if md else None}
        lines.append(orjson.dumps(entry).decode())
    return "\n".join(lines) + "\n"


def describe(op: Op) -> str:
    """A one-line, human-readable summary of an op (used as a graph label)."""
    body = op.op
    if isinstance(body, SourceOp):
        return body.identifier
    if isinstance(body, ExecOp):
        return " ".join(body.meta.args) if body.meta else "exec"
    if isinstance(body, FileOp):
        parts = []
        for action in body.actions:
            a = action.action
            if isinstance(a, FileActionCopy):
                parts.append(f"copy {a.src} {a.dest}")
            elif isinstance(a, FileActionMkFile):
                parts.append(f"mkfile {a.path}")
            elif isinstance(a, FileActionMkDir):
                parts.append(f"mkdir {a.path}")
            elif isinstance(a, FileActionRm):
                parts.append(f"rm {a.path}")
            elif isinstance(a, FileActionSymlink):
                parts.append(f"symlink {a.oldpath} -> {a.newpath}")
        return "; ".join(parts)
    if isinstance(body, MergeOp):
        return f"merge of {len(body.inputs)}"
    if isinstance(body, DiffOp):
        return "diff"
    return op.kind or "result"


def dump_dot(data: bytes | str | Definition) -> str:
    """A Graphviz ``digraph``: one node per op, an edge from each input to its consumer."""
    ops = _definition(data).load()
    out = ["digraph llb {", "  rankdir=BT;", '  node [shape=box, fontname="monospace"];']
    for digest, op in ops.items():
        name = op.kind or "result"
        label = f"{name}\\n{_escape(describe(op))}" if op.op is not None else name
        out.append(f'  "{digest}" [label="{label}\\n{digest[7:19]}"];')
        for inp in op.inputs:
            edge = f' [label="{inp.index}"]' if inp.index else ""
            out.append(f'  "{inp.digest}" -> "{digest}"{edge};')
    out.append("}")
    return "\n".join(out) + "\n"


def _escape(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            .replace("\r", ""))
