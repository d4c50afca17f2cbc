"""The LLB Definition: marshalled ops in topological order, per-op metadata and a source map.

``ops`` holds each op's canonical bytes (see :meth:`Op.marshal`); an op's digest is
``sha256:`` of exactly those bytes, and inputs name their parents by it. The last op is the
terminal op: no body, one input pointing at the result.

On disk (``to_bytes``) a definition is one canonical JSON document::

    {"def": ["<op JSON>", …], "metadata": {"<digest>": {<OpMetadata>}, …}, "source": {<Source>}}

Each ``def`` entry is the op's exact bytes as a JSON string, so digests survive a round trip.
"""

from __future__ import annotations

from typing import Any

from pybk.core.errors import InputError
from pybk.core.llb.ops import (
    SCRATCH,
    SKIP_OUTPUT,
    BuildOp,
    DiffOp,
    ExecOp,
    FileAction,
    FileActionCopy,
    FileActionMkDir,
    FileActionMkFile,
    FileActionSymlink,
    FileOp,
    FrozenDict,
    Input,
    MergeOp,
    Op,
    OpMetadata,
    SourceOp,
    _frozen_map,
    _seq,
    decode,
    encode,
)
from pybk.core.model import Model, field
from pybk.core.serialize import canonical_dumps, loads, sha256_digest


def prepare_decoders() -> None:
    """Make the decoders of definitions (ops, their metadata, source maps) now: a process that
    forks a child per build (``pybkd``) makes them once."""
    for cls in (Op, OpMetadata, Source, Definition):
        decode(cls, {})


class Position(Model):
    line: int = 0
    character: int = 0


class Range(Model):
    start: Position | None = None
    end: Position | None = None


class Location(Model):
    """Where an op comes from: ranges in ``Source.infos[source_index]``."""

    source_index: int = 0
    ranges: tuple[Range, ...] = _seq()


class Locations(Model):
    locations: tuple[Location, ...] = _seq()


class SourceInfo(Model):
    """A source file (e.g. the Dockerfile) that ops point into."""

    filename: str = ""
    data: bytes = b""
    language: str = ""


class Source(Model):
    """``locations`` maps op digests to places in ``infos``."""

    locations: FrozenDict[str, Locations] = field(factory=FrozenDict, converter=_frozen_map)
    infos: tuple[SourceInfo, ...] = _seq()


class Definition(Model):
    ops: tuple[bytes, ...] = _seq()
    metadata: FrozenDict[str, OpMetadata] = field(factory=FrozenDict, converter=_frozen_map)
    source: Source | None = None

    # ------------------------------------------------------------------------ serialization

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"def": [op.decode("utf-8") for op in self.ops]}
        if self.metadata:
            doc["metadata"] = {d: encode(md) for d, md in self.metadata.items()}
        if self.source is not None:
            doc["source"] = encode(self.source)
        return canonical_dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes | str, *, filename: str | None = None) -> Definition:
        """Parse :meth:`to_bytes` output. Ops are checked by :meth:`load`, not here."""
        try:
            doc = loads(data)
        except ValueError as exc:
            raise InputError(
                f"LLB definition is not valid JSON: {exc}", filename=filename
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("def"), list):
            raise InputError(
                'LLB definition must be a JSON object with a "def" list of ops', filename=filename
            )
        unknown = set(doc) - {"def", "metadata", "source"}
        if unknown:
            raise InputError(
                f"LLB definition: unknown field {sorted(unknown)[0]!r} (known: def, metadata, source)",
                filename=filename,
            )
        ops = []
        for i, op in enumerate(doc["def"]):
            if not isinstance(op, str):
                raise InputError(f"LLB definition: def[{i}] must be a string", filename=filename)
            ops.append(op.encode("utf-8"))
        raw_md = doc.get("metadata", {})
        if not isinstance(raw_md, dict):
            raise InputError('LLB definition: "metadata" must be an object', filename=filename)
        try:
            metadata = {d: decode(OpMetadata, md, f"metadata[{d}]") for d, md in raw_md.items()}
            source = decode(Source, doc["source"], "source") if "source" in doc else None
        except InputError as exc:
            raise InputError(f"LLB definition: {exc.message}", filename=filename) from None
        return cls(tuple(ops), metadata, source)

    # ------------------------------------------------------------------------------- access

    def digests(self) -> list[str]:
        """The digest of every op, in ``ops`` order."""
        return [sha256_digest(op) for op in self.ops]

    def head_input(self) -> Input:
        """The terminal op's input: the result of the definition."""
        if not self.ops:
            raise InputError("LLB definition is empty")
        terminal = Op.unmarshal(self.ops[-1], where=f"LLB op {len(self.ops) - 1} (terminal)")
        if terminal.op is not None or len(terminal.inputs) != 1:
            raise InputError("LLB definition: the last op must be a terminal op with one input")
        return terminal.inputs[0]

    def head(self) -> str:
        """Digest of the op producing the result."""
        return self.head_input().digest

    def load(self, *, filename: str | None = None) -> dict[str, Op]:
        """Unmarshal and validate every op; the dict is keyed by digest in ``ops`` order.

        Raises :class:`InputError` naming the op (and ``filename``, when given) for malformed
        ops, dangling or out-of-range inputs, cycles and a missing terminal op.
        """
        try:
            return self._load()
        except InputError as exc:
            if filename is None:
                raise
            raise InputError(exc.message, filename=filename) from None

    def _load(self) -> dict[str, Op]:
        if len(self.ops) < 2:
            raise InputError(
                "invalid LLB definition: it needs at least 2 ops (an op and the terminal op), "
                f"got {len(self.ops)}"
            )
        loaded: dict[str, Op] = {}
        names: dict[str, str] = {}
        last = len(self.ops) - 1
        for i, data in enumerate(self.ops):
            digest = sha256_digest(data)
            name = f"LLB op {i} ({digest})"
            op = Op.unmarshal(data, where=name)
            if i == last:
                if op.op is not None or len(op.inputs) != 1:
                    raise InputError(
                        f"{name}: the last op must be the terminal op (no operation, one input)"
                    )
            elif op.op is None:
                raise InputError(f"{name}: has no operation (only the last op may be terminal)")
            loaded.setdefault(digest, op)
            names.setdefault(digest, name)
        for digest, op in loaded.items():
            _check_op(names[digest], op, loaded)
        _check_acyclic({d: [i.digest for i in op.inputs] for d, op in loaded.items()}, names)
        return loaded


def _check_inputs(name: str, op: Op, loaded: dict[str, Op]) -> None:
    """Each input names an op of the definition and one of its outputs."""
    for n, inp in enumerate(op.inputs):
        parent = loaded.get(inp.digest)
        if parent is None:
            raise InputError(
                f"{name}: input {n} refers to {inp.digest!r}, which is not in the definition"
            )
        if inp.index not in parent.output_indices():
            valid = sorted(parent.output_indices())
            raise InputError(
                f"{name}: input {n} asks for output {inp.index} of {inp.digest}, "
                f"which has outputs {valid}"
            )


def _check_op(name: str, op: Op, loaded: dict[str, Op]) -> None:
    _check_inputs(name, op, loaded)
    n_inputs = len(op.inputs)
    body = op.op

    def check_index(what: str, index: int, limit: int = n_inputs, scratch: bool = True) -> None:
        if (scratch and index == SCRATCH) or 0 <= index < limit:
            return
        allowed = f"0..{limit - 1}" if limit else "none"
        raise InputError(
            f"{name}: {what} refers to input {index}, out of range "
            f"(op has {n_inputs} inputs; allowed {allowed}{' or -1' if scratch else ''})"
        )

    if isinstance(body, SourceOp):
        if n_inputs:
            raise InputError(f"{name}: a source op takes no inputs, got {n_inputs}")
        if not body.identifier:
            raise InputError(f"{name}: source op has an empty identifier")
    elif isinstance(body, ExecOp):
        _check_exec(name, body, check_index)
    elif isinstance(body, FileOp):
        if not body.actions:
            raise InputError(f"{name}: file op has no actions")
        outputs: set[int] = set()
        for k, action in enumerate(body.actions):
            _check_file_action(name, k, action, n_inputs, check_index)
            if action.output != SKIP_OUTPUT:
                if action.output < 0 or action.output in outputs:
                    raise InputError(f"{name}: file action {k} has invalid output {action.output}")
                outputs.add(action.output)
    elif isinstance(body, MergeOp):
        if not body.inputs:
            raise InputError(f"{name}: merge op has no inputs")
        for k, mi in enumerate(body.inputs):
            check_index(f"merge input {k}", mi.input, scratch=False)
    elif isinstance(body, DiffOp):
        if body.lower is not None:
            check_index("diff lower", body.lower.input)
        if body.upper is not None:
            check_index("diff upper", body.upper.input)
    elif isinstance(body, BuildOp):
        for key, bi in body.inputs.items():
            check_index(f"build input {key!r}", bi.input, scratch=False)


def _check_exec(name: str, body: ExecOp, check_index: Any) -> None:
    if body.meta is None or not body.meta.args:
        raise InputError(f"{name}: exec op has no args")
    outputs: set[int] = set()
    for k, m in enumerate(body.mounts):
        check_index(f"mount {k} ({m.dest!r})", m.input)
        if m.output != SKIP_OUTPUT:
            if m.output < 0 or m.output in outputs:
                raise InputError(f"{name}: mount {k} ({m.dest!r}) has invalid output {m.output}")
            outputs.add(m.output)
    if not any(m.dest == "/" for m in body.mounts):
        raise InputError(f"{name}: exec op has no root mount ('/')")


def _check_file_action(
    name: str, k: int, action: FileAction, n_inputs: int, check_index: Any
) -> None:
    if action.action is None:
        raise InputError(
            f"{name}: file action {k} has no action (copy, mkfile, mkdir, rm, symlink)"
        )
    # Action k may use op inputs and the results of actions 0..k-1.
    limit = n_inputs + k
    check_index(f"file action {k} input", action.input, limit)
    if isinstance(action.action, FileActionCopy):
        check_index(f"file action {k} secondary input", action.secondary_input, limit)
    body = action.action
    owner = getattr(body, "owner", None)
    if (
        isinstance(body, (FileActionCopy, FileActionMkFile, FileActionMkDir, FileActionSymlink))
        and owner
    ):
        for which in ("user", "group"):
            opt = getattr(owner, which)
            if opt is not None and opt.by_name is not None:
                check_index(f"file action {k} {which} name lookup", opt.by_name.input, limit)


def _check_acyclic(graph: dict[str, list[str]], names: dict[str, str]) -> None:
    """Raise :class:`InputError` naming an op on a cycle of ``graph`` (digest → input digests)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in graph:
        if state.get(root):
            continue
        stack = [(root, iter(graph[root]))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                raise InputError(
                    f"{names.get(child, child)}: the definition has a cycle through this op"
                )
            elif not state.get(child) and child in graph:
                state[child] = 1
                stack.append((child, iter(graph[child])))
