"""The graph a :class:`~pybk.core.llb.state.State` points into, and its marshalling.

Vertices are ops whose inputs are outputs of other vertices, compared by identity; marshalling
walks them inputs-first into a :class:`~pybk.core.llb.definition.Definition` (identical ops
written once, metadata merged, source locations and capabilities collected).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.errors import InputError
from pybk.core.llb.definition import Definition, Location, Locations, Range, Source, SourceInfo
from pybk.core.llb.ops import (
    DiffOp,
    ExecOp,
    ExportCache,
    FileOp,
    Input,
    LinuxResources,
    MergeOp,
    MountType,
    NetMode,
    Op,
    OpBody,
    OpMetadata,
    Platform,
    ProgressGroup,
    SecurityMode,
    SourceOp,
    WorkerConstraints,
)
from pybk.core.model import Model, field
from pybk.core.serialize import sha256_digest

__all__ = ["CUSTOM_NAME_KEY", "Marshaller", "Output", "SourceLocation", "Vertex", "new_vertex"]

CUSTOM_NAME_KEY = "llb.customname"


class SourceLocation(Model):
    """Where an op comes from in a source file (e.g. a Dockerfile), for error display."""

    info: SourceInfo
    ranges: tuple[Range, ...] = field(converter=tuple, factory=tuple)


class Vertex(Model, eq=False):
    """An op whose inputs are outputs of other vertices; compared by identity."""

    body: OpBody
    inputs: tuple[Output, ...]
    platform: Platform | None  # None: the platform given to marshal()
    platform_specific: bool
    constraints: WorkerConstraints | None
    metadata: OpMetadata
    locations: tuple[SourceLocation, ...]


class Output(Model):
    vertex: Vertex
    index: int


class VertexOptions(Model):
    """Per-op options every builder accepts as keywords."""

    custom_name: str | None = None
    description: Mapping[str, str] | None = None
    ignore_cache: bool = False
    progress_group: ProgressGroup | None = None
    export_cache: bool | None = None
    location: SourceLocation | None = None
    constraints: WorkerConstraints | None = None
    linux_resources: LinuxResources | None = None

    def metadata(self) -> OpMetadata:
        description = dict(self.description or {})
        if self.custom_name is not None:
            description[CUSTOM_NAME_KEY] = self.custom_name
        return OpMetadata(
            ignore_cache=self.ignore_cache,
            description=description,
            export_cache=None if self.export_cache is None else ExportCache(self.export_cache),
            progress_group=self.progress_group,
            linux_resources=self.linux_resources,
        )


def new_vertex(
    body: OpBody,
    inputs: Sequence[Output],
    options: dict[str, Any],
    *,
    platform: Platform | None,
    platform_specific: bool = True,
) -> Vertex:
    opts = VertexOptions(**options)
    return Vertex(
        body=body,
        inputs=tuple(inputs),
        platform=platform,
        platform_specific=platform_specific,
        constraints=opts.constraints,
        metadata=opts.metadata(),
        locations=(opts.location,) if opts.location else (),
    )


# -------------------------------------------------------------------------------- marshalling


_SOURCE_CAPS = {
    "docker-image": "source.image",
    "local": "source.local",
    "git": "source.git",
    "http": "source.http",
    "https": "source.http",
    "oci-layout": "source.ocilayout",
}

_MOUNT_CAPS = {
    MountType.BIND: "exec.mount.bind",
    MountType.CACHE: "exec.mount.cache",
    MountType.TMPFS: "exec.mount.tmpfs",
    MountType.SECRET: "exec.mount.secret",
    MountType.SSH: "exec.mount.ssh",
}


def _caps(op: Op, md: OpMetadata) -> set[str]:
    """LLB capability IDs an op needs (BuildKit's ``solver/pb/caps.go`` names)."""
    caps: set[str] = set()
    body = op.op
    if isinstance(body, SourceOp):
        scheme = body.identifier.split("://", 1)[0]
        if scheme in _SOURCE_CAPS:
            caps.add(_SOURCE_CAPS[scheme])
    elif isinstance(body, ExecOp):
        caps.add("exec.meta.base")
        caps.update(_MOUNT_CAPS[m.mount_type] for m in body.mounts)
        if any(
            m.mount_type == MountType.CACHE and m.cache_opt and m.cache_opt.sharing
            for m in body.mounts
        ):
            caps.add("exec.mount.cache.sharing")
        if body.network != NetMode.UNSET:
            caps.add("exec.meta.network")
        if body.security != SecurityMode.SANDBOX:
            caps.add("exec.meta.security")
        if body.secretenv:
            caps.add("exec.secretenv")
        if body.meta and body.meta.valid_exit_codes:
            caps.add("exec.validexitcode")
    elif isinstance(body, FileOp):
        caps.add("file.base")
    elif isinstance(body, MergeOp):
        caps.add("mergeop")
    elif isinstance(body, DiffOp):
        caps.add("diffop")
    if op.platform is not None:
        caps.add("platform")
    if op.constraints is not None:
        caps.add("constraints")
    if md.ignore_cache:
        caps.add("meta.ignorecache")
    if md.description:
        caps.add("meta.description")
    if md.export_cache is not None:
        caps.add("meta.exportcache")
    return caps


def _merge_metadata(old: OpMetadata, new: OpMetadata) -> OpMetadata:
    return OpMetadata(
        ignore_cache=old.ignore_cache or new.ignore_cache,
        description={**new.description, **old.description},
        export_cache=old.export_cache or new.export_cache,
        caps={**old.caps, **new.caps},
        progress_group=old.progress_group or new.progress_group,
        linux_resources=old.linux_resources or new.linux_resources,
    )


def _marshal_error(vertex: Vertex, exc: TypeError) -> InputError:
    """An op that cannot be encoded: a string holds bytes that are not UTF-8 (LLB strings,
    like BuildKit's protobuf strings, must be UTF-8); named at its source line when known."""
    reason = "is not valid UTF-8" if "UTF-8" in str(exc) else f"cannot be encoded ({exc})"
    for loc in vertex.locations:
        if loc.ranges:
            start = loc.ranges[0].start
            return InputError(f"the instruction {reason}", filename=loc.info.filename or None,
                              line=start.line or None)
    return InputError(f"an LLB op {reason}")


class Marshaller:
    def __init__(self, default_platform: Platform):
        self.default_platform = default_platform
        self.ops: dict[str, bytes] = {}
        self.metadata: dict[str, OpMetadata] = {}
        self.locations: dict[str, list[Location]] = {}
        self.infos: list[SourceInfo] = []
        self.caps: set[str] = set()
        self.digest_of: dict[int, str] = {}

    def run(self, head: Output) -> Definition:
        # Iterative post-order walk: long Dockerfiles make deep graphs.
        stack: list[tuple[Vertex, bool]] = [(head.vertex, False)]
        while stack:
            vertex, expanded = stack.pop()
            if id(vertex) in self.digest_of:
                continue
            if expanded:
                self._emit(vertex)
                continue
            stack.append((vertex, True))
            for out in reversed(vertex.inputs):
                if id(out.vertex) not in self.digest_of:
                    stack.append((out.vertex, False))
        terminal = Op(inputs=(Input(self.digest_of[id(head.vertex)], head.index),))
        terminal_bytes = terminal.marshal()
        terminal_digest = sha256_digest(terminal_bytes)
        self.ops.setdefault(terminal_digest, terminal_bytes)
        self.metadata[terminal_digest] = OpMetadata(caps={c: True for c in sorted(self.caps)})
        source = None
        if self.infos:
            source = Source(
                {d: Locations(tuple(locs)) for d, locs in self.locations.items()}, tuple(self.infos)
            )
        return Definition(tuple(self.ops.values()), self.metadata, source)

    def _emit(self, vertex: Vertex) -> None:
        platform = vertex.platform or self.default_platform if vertex.platform_specific else None
        op = Op(
            inputs=tuple(Input(self.digest_of[id(o.vertex)], o.index) for o in vertex.inputs),
            op=vertex.body,
            platform=platform,
            constraints=vertex.constraints,
        )
        try:
            data = op.marshal()
        except TypeError as exc:  # orjson: a str holding surrogate escapes (invalid UTF-8 input)
            raise _marshal_error(vertex, exc) from None
        digest = sha256_digest(data)
        self.digest_of[id(vertex)] = digest
        self.ops.setdefault(digest, data)
        self.caps |= _caps(op, vertex.metadata)
        if vertex.metadata != OpMetadata():
            old = self.metadata.get(digest)
            self.metadata[digest] = (
                vertex.metadata if old is None else _merge_metadata(old, vertex.metadata)
            )
        for loc in vertex.locations:
            if loc.info not in self.infos:
                self.infos.append(loc.info)
            location = Location(self.infos.index(loc.info), loc.ranges)
            entries = self.locations.setdefault(digest, [])
            if location not in entries:
                entries.append(location)
