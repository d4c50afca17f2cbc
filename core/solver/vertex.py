"""Vertices: the ops of a loaded Definition with their names and per-op options."""

from __future__ import annotations

from typing import Any

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
    Input,
    MergeOp,
    Op,
    OpMetadata,
    SourceOp,
)
from pybk.core.model import Model


class Vertex(Model):
    """One op of the graph: digest, op, display name and per-op metadata."""

    digest: str
    op: Op
    name: str
    ignore_cache: bool = False
    progress_group: dict | None = None
    #: per-step cgroup limits from the op's metadata (a :class:`~pybk.core.llb.ops.LinuxResources`)
    linux_resources: Any = None
    #: Dockerfile (or other source) locations, for error messages
    locations: tuple = ()

    @property
    def inputs(self) -> tuple[Input, ...]:
        return self.op.inputs


class Graph(Model):
    """A loaded definition: vertices by digest (inputs first) and the result input."""

    vertices: dict[str, Vertex]
    head: Input
    definition: Definition

    def ancestors(self, digest: str) -> list[str]:
        """``digest`` and every vertex it depends on, inputs first."""
        seen: dict[str, None] = {}

        def visit(d: str) -> None:
            if d in seen:
                return
            for inp in self.vertices[d].inputs:
                visit(inp.digest)
            seen[d] = None

        visit(digest)
        return list(seen)


def default_name(op: Op) -> str:
    """The vertex name BuildKit derives when no ``llb.customname`` is given."""
    body = op.op
    if isinstance(body, SourceOp):
        return body.identifier
    if isinstance(body, ExecOp):
        return " ".join(body.meta.args) if body.meta else "exec"
    if isinstance(body, FileOp):
        return ", ".join(_file_action_name(a.action) for a in body.actions)
    if isinstance(body, MergeOp):
        return "merge"
    if isinstance(body, DiffOp):
        return "diff"
    return op.kind or "op"


def _file_action_name(action: object) -> str:
    if isinstance(action, FileActionCopy):
        return f"copy {action.src} {action.dest}"
    if isinstance(action, FileActionMkFile):
        return f"mkfile {action.path}"
    if isinstance(action, FileActionMkDir):
        return f"mkdir {action.path}"
    if isinstance(action, FileActionRm):
        return f"rm {action.path}"
    if isinstance(action, FileActionSymlink):
        return f"symlink {action.oldpath} -> {action.newpath}"
    return "file"


def load_graph(definition: Definition, *, no_cache: bool = False) -> Graph:
    """Validate and load ``definition``; ``no_cache`` sets ``ignore_cache`` on every vertex."""
    ops = definition.load()
    head = definition.head_input()
    vertices: dict[str, Vertex] = {}
    locations = definition.source.locations if definition.source is not None else {}
    for digest, op in ops.items():
        if op.op is None:
            continue
        md = definition.metadata.get(digest) or OpMetadata()
        pg = md.progress_group
        loc = locations.get(digest)
        vertices[digest] = Vertex(
            digest=digest,
            op=op,
            name=md.description.get("llb.customname") or default_name(op),
            ignore_cache=no_cache or md.ignore_cache,
            progress_group=({"id": pg.id, "name": pg.name, "weak": pg.weak} if pg else None),
            linux_resources=md.linux_resources,
            locations=tuple(loc.locations) if loc is not None else (),
        )
    return Graph(vertices=vertices, head=head, definition=definition)
