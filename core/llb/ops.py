"""LLB operations: frozen attrs mirrors of BuildKit's ``ops.proto`` messages.

Field names are the proto field names in snake_case and mean the same thing. Defaults are the
proto zero values, except where BuildKit's client always writes a sentinel (``timestamp=-1``
"not set", ``FileActionCopy.mode=-1`` "keep"), which we take as the default instead.

Each message marshals to a JSON object (:func:`encode`) that leaves out default-valued fields,
like protobuf; ``oneof`` members appear as a key named after the chosen member (``"exec"``,
``"copy"``, ``"by_id"``…). :func:`decode` is the strict inverse: unknown keys, wrong types and
unknown enum values raise :class:`~pybk.core.errors.InputError` naming the offending path.
"""

from __future__ import annotations

import base64
import binascii
import enum
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pybk.core.errors import InputError
from pybk.core.llb.fastcodec import decoder
from pybk.core.model import Factory, Model, field, fields, has
from pybk.core.platform import host_platform as oci_host_platform
from pybk.core.serialize import canonical_dumps, loads, sha256_digest

SKIP_OUTPUT = -1
"""``Mount.output`` / ``FileAction.output``: the result is not an output of the op."""

SCRATCH = -1
"""An input index of -1: an empty directory instead of an op input."""

LLB_BUILDER = -1
"""``BuildOp.builder`` value: the input holds an LLB definition."""

LLB_DEFINITION_FILENAME = "buildkit.llb.definition"


class FrozenDict(dict):
    """A hashable, read-only ``dict`` (the value type of map fields)."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _readonly(self, *args: Any, **kwargs: Any) -> typing.NoReturn:
        raise TypeError("FrozenDict is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))


def _frozen_map(value: Mapping | None) -> FrozenDict:
    return value if isinstance(value, FrozenDict) else FrozenDict(value or {})


def _tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else tuple(value or ())


def _seq(**kw: Any) -> Any:
    return field(factory=tuple, converter=_tuple, **kw)


def _map(**kw: Any) -> Any:
    return field(factory=FrozenDict, converter=_frozen_map, **kw)


def _enum(default: enum.IntEnum) -> Any:
    return field(default=default, converter=type(default))


def _oneof(members: dict[str, str], default: Any = None) -> Any:
    """A field holding one of several message types; ``members`` maps JSON key → class name."""
    return field(default=default, metadata={"oneof": members})


# --------------------------------------------------------------------------------------- enums


class MountType(enum.IntEnum):
    BIND = 0
    SECRET = 1
    SSH = 2
    CACHE = 3
    TMPFS = 4


class MountContentCache(enum.IntEnum):
    DEFAULT = 0
    ON = 1
    OFF = 2


class NetMode(enum.IntEnum):
    UNSET = 0
    HOST = 1
    NONE = 2


class SecurityMode(enum.IntEnum):
    SANDBOX = 0
    INSECURE = 1


class CacheSharingOpt(enum.IntEnum):
    SHARED = 0
    PRIVATE = 1
    LOCKED = 2


# ----------------------------------------------------------------------------- envelope parts


class Input(Model):
    """A reference to output ``index`` of the op whose marshalled bytes hash to ``digest``."""

    digest: str = ""
    index: int = 0


class Platform(Model):
    """BuildKit's ``pb.Platform`` message: the platform as it is written into LLB (and hashed).
    Parsing, normalising and matching platforms is :mod:`pybk.core.platform`'s."""

    architecture: str = ""
    os: str = ""
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = _seq()

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """``os/arch[/variant]`` (as in ``--platform linux/arm64/v8``)."""
        parts = spec.strip().split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise InputError(f"invalid platform {spec!r}: expected os/arch[/variant]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    """The platform of this machine (:func:`pybk.core.platform.host_platform`) as an LLB
    message."""
    host = oci_host_platform()
    return Platform(architecture=host.architecture, os=host.os, variant=host.variant or "")


class WorkerConstraints(Model):
    filter: tuple[str, ...] = _seq()


# ------------------------------------------------------------------------------------ SourceOp


class SourceOp(Model):
    """Fetch a source: ``docker-image://…``, ``local://…``, ``git://…``, ``https://…``, …"""

    identifier: str = ""
    attrs: FrozenDict[str, str] = _map()


# -------------------------------------------------------------------------------------- ExecOp


class ProxyEnv(Model):
    http_proxy: str = ""
    https_proxy: str = ""
    ftp_proxy: str = ""
    no_proxy: str = ""
    all_proxy: str = ""


class HostIP(Model):
    host: str = ""
    ip: str = ""


class Ulimit(Model):
    name: str = ""
    soft: int = 0
    hard: int = 0


class Meta(Model):
    args: tuple[str, ...] = _seq()
    env: tuple[str, ...] = _seq()
    cwd: str = ""
    user: str = ""
    proxy_env: ProxyEnv | None = None
    extra_hosts: tuple[HostIP, ...] = _seq()
    hostname: str = ""
    ulimit: tuple[Ulimit, ...] = _seq()
    cgroup_parent: str = ""
    remove_mount_stubs_recursive: bool = False
    valid_exit_codes: tuple[int, ...] = _seq()


class TmpfsOpt(Model):
    size: int = 0


class CacheOpt(Model):
    id: str = ""
    sharing: CacheSharingOpt = _enum(CacheSharingOpt.SHARED)


class SecretOpt(Model):
    id: str = ""
    uid: int = 0
    gid: int = 0
    mode: int = 0
    optional: bool = False


class SSHOpt(Model):
    id: str = ""
    uid: int = 0
    gid: int = 0
    mode: int = 0
    optional: bool = False


class Mount(Model):
    """``input`` indexes ``Op.inputs`` (or is ``SCRATCH``); ``output`` numbers the op's outputs
    (or is ``SKIP_OUTPUT``)."""

    input: int = 0
    selector: str = ""
    dest: str = ""
    output: int = 0
    readonly: bool = False
    mount_type: MountType = _enum(MountType.BIND)
    tmpfs_opt: TmpfsOpt | None = None
    cache_opt: CacheOpt | None = None
    secret_opt: SecretOpt | None = None
    ssh_opt: SSHOpt | None = None
    result_id: str = ""
    content_cache: MountContentCache = _enum(MountContentCache.DEFAULT)

    @property
    def cache_id(self) -> str:
        """The id of a cache mount: its ``cache_opt.id``, else its target."""
        co = self.cache_opt
        return co.id if co is not None and co.id else self.dest


class SecretEnv(Model):
    """Expose secret ``id`` as environment variable ``name``."""

    id: str = ""
    name: str = ""
    optional: bool = False


class CDIDevice(Model):
    name: str = ""
    optional: bool = False


class ExecOp(Model):
    meta: Meta | None = None
    mounts: tuple[Mount, ...] = _seq()
    network: NetMode = _enum(NetMode.UNSET)
    security: SecurityMode = _enum(SecurityMode.SANDBOX)
    secretenv: tuple[SecretEnv, ...] = _seq()
    cdi_devices: tuple[CDIDevice, ...] = _seq()


# -------------------------------------------------------------------------------------- FileOp


class NamedUserOpt(Model):
    """A user or group name, resolved against ``/etc/passwd``/``/etc/group`` of input ``input``."""

    name: str = ""
    input: int = 0


class UserOpt(Model):
    """``user`` is a :class:`NamedUserOpt` (JSON key ``by_name``) or a numeric id (``by_id``)."""

    user: NamedUserOpt | int | None = _oneof({"by_name": "NamedUserOpt", "by_id": "int"})

    @property
    def by_name(self) -> NamedUserOpt | None:
        return self.user if isinstance(self.user, NamedUserOpt) else None

    @property
    def by_id(self) -> int | None:
        return self.user if isinstance(self.user, int) else None


class ChownOpt(Model):
    user: UserOpt | None = None
    group: UserOpt | None = None


class FileActionCopy(Model):
    src: str = ""
    dest: str = ""
    owner: ChownOpt | None = None
    mode: int = -1
    follow_symlink: bool = False
    dir_copy_contents: bool = False
    attempt_unpack_docker_compatibility: bool = False
    create_dest_path: bool = False
    allow_wildcard: bool = False
    allow_empty_wildcard: bool = False
    timestamp: int = -1
    include_patterns: tuple[str, ...] = _seq()
    exclude_patterns: tuple[str, ...] = _seq()
    always_replace_existing_dest_paths: bool = False
    mode_str: str = ""
    required_paths: tuple[str, ...] = _seq()


class FileActionMkFile(Model):
    path: str = ""
    mode: int = 0
    data: bytes = b""
    owner: ChownOpt | None = None
    timestamp: int = -1


class FileActionMkDir(Model):
    path: str = ""
    mode: int = 0
    make_parents: bool = False
    owner: ChownOpt | None = None
    timestamp: int = -1


class FileActionRm(Model):
    path: str = ""
    allow_not_found: bool = False
    allow_wildcard: bool = False


class FileActionSymlink(Model):
    oldpath: str = ""
    newpath: str = ""
    owner: ChownOpt | None = None
    timestamp: int = -1


_FILE_ACTIONS = {
    "copy": "FileActionCopy",
    "mkfile": "FileActionMkFile",
    "mkdir": "FileActionMkDir",
    "rm": "FileActionRm",
    "symlink": "FileActionSymlink",
}


class FileAction(Model):
    """One step of a FileOp.

    ``input``/``secondary_input`` below ``len(op.inputs)`` are op inputs; ``len(op.inputs) + k``
    is the result of action ``k``; ``SCRATCH`` is an empty directory. ``output`` numbers the
    op's outputs or is ``SKIP_OUTPUT``.
    """

    input: int = 0
    secondary_input: int = 0
    output: int = 0
    action: (
        FileActionCopy
        | FileActionMkFile
        | FileActionMkDir
        | FileActionRm
        | FileActionSymlink
        | None
    ) = _oneof(_FILE_ACTIONS)


class FileOp(Model):
    actions: tuple[FileAction, ...] = _seq()


# ------------------------------------------------------------------ MergeOp, DiffOp, BuildOp, …


class MergeInput(Model):
    input: int = 0


class MergeOp(Model):
    """Layer the inputs in order; later inputs win."""

    inputs: tuple[MergeInput, ...] = _seq()


class LowerDiffInput(Model):
    input: int = 0


class UpperDiffInput(Model):
    input: int = 0


class DiffOp(Model):
    """The changes that turn ``lower`` into ``upper``."""

    lower: LowerDiffInput | None = None
    upper: UpperDiffInput | None = None


class BuildInput(Model):
    input: int = 0


class BuildOp(Model):
    """Nested build (experimental). ``def_`` (JSON key ``def``) is a marshalled Definition."""

    builder: int = 0
    inputs: FrozenDict[str, BuildInput] = _map()
    def_: bytes = field(default=b"", metadata={"json": "def"})
    attrs: FrozenDict[str, str] = _map()


class PassthroughOp(Model):
    id: str = ""
    outputs: tuple[int, ...] = _seq()


_OP_KINDS = {
    "exec": "ExecOp",
    "source": "SourceOp",
    "file": "FileOp",
    "build": "BuildOp",
    "merge": "MergeOp",
    "diff": "DiffOp",
    "passthrough": "PassthroughOp",
}

OpBody = SourceOp | ExecOp | FileOp | MergeOp | DiffOp | BuildOp | PassthroughOp


class Op(Model):
    """The envelope: inputs, the op body (``None`` for a definition's terminal op), platform."""

    inputs: tuple[Input, ...] = _seq()
    op: OpBody | None = _oneof(_OP_KINDS)
    platform: Platform | None = None
    constraints: WorkerConstraints | None = None

    @property
    def kind(self) -> str | None:
        """``"exec"``, ``"source"``, ``"file"``, ``"build"``, ``"merge"``, ``"diff"``,
        ``"passthrough"``, or ``None`` for a terminal op."""
        return None if self.op is None else _KIND_OF[type(self.op)]

    def marshal(self) -> bytes:
        """Canonical bytes: sorted-key JSON without default-valued fields."""
        return canonical_dumps(encode(self))

    @property
    def digest(self) -> str:
        return sha256_digest(self.marshal())

    @classmethod
    def unmarshal(cls, data: bytes, *, where: str | None = None) -> Op:
        """Parse canonical (or any JSON) op bytes; ``where`` prefixes error messages."""
        try:
            try:
                obj = loads(data)
            except ValueError as exc:
                raise InputError(f"op: not valid JSON: {exc}") from None
            return decode(cls, obj, "op")
        except InputError as exc:
            if where is None:
                raise
            raise InputError(f"{where}: {exc.message}") from None

    def output_indices(self) -> frozenset[int]:
        """The output indices other ops may reference through ``Input.index``."""
        body = self.op
        if isinstance(body, ExecOp):
            return frozenset(m.output for m in body.mounts if m.output != SKIP_OUTPUT)
        if isinstance(body, FileOp):
            return frozenset(a.output for a in body.actions if a.output != SKIP_OUTPUT)
        if isinstance(body, PassthroughOp):
            return frozenset(body.outputs)
        if body is None:
            return frozenset()
        return frozenset({0})


class ExportCache(Model):
    value: bool = False


class ProgressGroup(Model):
    id: str = ""
    name: str = ""
    weak: bool = False


class LinuxResources(Model):
    """Per-step cgroup limits a client asked for (buildx ``--resource``): memory and swap in
    bytes (``memory_swap`` is memory + swap, -1 unlimited), CPU shares, CFS period and quota
    (microseconds), and cpuset lists (``"0-1"``)."""

    memory: int = 0
    memory_swap: int = 0
    cpu_shares: int = 0
    cpu_period: int = 0
    cpu_quota: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""


class OpMetadata(Model):
    """Per-op data that is not part of the op digest (``Definition.metadata[digest]``)."""

    ignore_cache: bool = False
    description: FrozenDict[str, str] = _map()
    export_cache: ExportCache | None = None
    caps: FrozenDict[str, bool] = _map()
    progress_group: ProgressGroup | None = None
    linux_resources: LinuxResources | None = None


_KIND_OF = {globals()[cls]: key for key, cls in _OP_KINDS.items()}


# --------------------------------------------------------------------------- encode / decode

T = TypeVar("T")

_MISSING = object()


class _FieldSpec(Model):
    name: str
    key: str
    type: Any
    default: Any
    oneof: dict[str, Any] | None


_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}


def _specs(cls: type) -> tuple[_FieldSpec, ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in fields(cls):
            default = f.default
            if isinstance(default, Factory):  # type: ignore[arg-type]
                default = f.converter(default.factory()) if f.converter else default.factory()
            oneof = None
            if "oneof" in f.metadata:
                oneof = {
                    k: (int if v == "int" else globals()[v]) for k, v in f.metadata["oneof"].items()
                }
            out.append(
                _FieldSpec(f.name, f.metadata.get("json", f.name), hints[f.name], default, oneof)
            )
        specs = _SPECS[cls] = tuple(out)
    return specs


def encode(obj: Any) -> Any:
    """The JSON form of a message: default-valued fields left out, bytes as base64."""
    if has(type(obj)):
        out: dict[str, Any] = {}
        for spec in _specs(type(obj)):
            value = getattr(obj, spec.name)
            if spec.oneof is not None:
                if value is not None:
                    key = next(k for k, t in spec.oneof.items() if type(value) is t)
                    out[key] = encode(value)
                continue
            if value is None or (
                value == spec.default and isinstance(value, bool) == isinstance(spec.default, bool)
            ):
                continue
            out[spec.key] = encode(value)
        return out
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, enum.IntEnum):
        return int(obj)
    if isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, tuple):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    raise TypeError(f"cannot encode {type(obj).__name__} in LLB")


def decode(cls: type[T], data: Any, where: str = "") -> T:
    """Build message ``cls`` from its JSON form; raise :class:`InputError` on anything unexpected."""
    try:  # the same checks without naming places; the checked decoder says what is wrong
        return decoder(cls, _specs, FrozenDict)(data)  # type: ignore[no-any-return]
    except Exception:  # noqa: S110 - decoded again below, which raises the InputError
        pass
    return _decode_value(cls, data, where or cls.__name__)


def _decode_message(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object for {cls.__name__}, got {_kind(data)}")
    specs = _specs(cls)
    known: dict[str, _FieldSpec] = {}
    for spec in specs:
        if spec.oneof is not None:
            for key in spec.oneof:
                known[key] = spec
        else:
            known[spec.key] = spec
    kwargs: dict[str, Any] = {}
    for key, raw in data.items():
        spec = known.get(key)
        if spec is None:
            expected = ", ".join(sorted(known))
            raise InputError(
                f"{where}: unknown field {key!r} in {cls.__name__} (known: {expected})"
            )
        path = f"{where}.{key}"
        if spec.oneof is not None:
            if spec.name in kwargs:
                others = [k for k in spec.oneof if k in data]
                raise InputError(f"{where}: more than one of {', '.join(others)} is set")
            kwargs[spec.name] = _decode_value(spec.oneof[key], raw, path)
        else:
            kwargs[spec.name] = _decode_value(spec.type, raw, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pragma: no cover - converters accept all decoded data
        raise InputError(f"{where}: {exc}") from None


def _decode_value(tp: Any, raw: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, _UNION_TYPE):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None:
            return None
        if len(members) != 1:  # pragma: no cover - oneofs are decoded by key
            raise TypeError(f"ambiguous union {tp}")
        return _decode_value(members[0], raw, where)
    if origin is tuple:
        if not isinstance(raw, list):
            raise InputError(f"{where}: expected a list, got {_kind(raw)}")
        item = typing.get_args(tp)[0]
        return tuple(_decode_value(item, v, f"{where}[{i}]") for i, v in enumerate(raw))
    if origin is FrozenDict:
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected an object, got {_kind(raw)}")
        item = typing.get_args(tp)[1]
        return FrozenDict({k: _decode_value(item, v, f"{where}.{k}") for k, v in raw.items()})
    if has(tp):
        return _decode_message(tp, raw, where)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise InputError(f"{where}: expected an integer, got {_kind(raw)}")
        try:
            return tp(raw)
        except ValueError:
            names = ", ".join(f"{m.name}={m.value}" for m in tp)
            raise InputError(f"{where}: unknown {tp.__name__} value {raw} ({names})") from None
    if tp is bool:
        if not isinstance(raw, bool):
            raise InputError(f"{where}: expected true or false, got {_kind(raw)}")
        return raw
    if tp is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise InputError(f"{where}: expected an integer, got {_kind(raw)}")
        return raw
    if tp is str:
        if not isinstance(raw, str):
            raise InputError(f"{where}: expected a string, got {_kind(raw)}")
        return raw
    if tp is bytes:
        if not isinstance(raw, str):
            raise InputError(f"{where}: expected base64 text, got {_kind(raw)}")
        try:
            return base64.b64decode(raw.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InputError(f"{where}: invalid base64") from None
    raise TypeError(f"cannot decode {tp!r}")  # pragma: no cover - all field types handled


_UNION_TYPE = type(int | None)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
