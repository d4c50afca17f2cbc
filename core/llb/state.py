"""An immutable builder for LLB graphs, in the manner of BuildKit's ``client/llb``.

A :class:`State` is a reference to one output of a (lazily marshalled) op plus the values later
``run`` calls use: environment, working directory, user, hostname, platform, network and
security mode. Every method returns a new State; nothing is mutated::

    from pybk.core import llb

    base = llb.image("alpine:3.19").env("APP", "/app").dir("/app")
    built = base.run("make", mounts=[llb.mount("/src", llb.local("context"), readonly=True)])
    out = llb.scratch().file(llb.copy(built.root(), "/app/bin", "/bin/"))
    definition = out.marshal()

Image config metadata (ENV, CMD… of a base image) is not part of State; frontends carry it.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from pybk.core.errors import InputError
from pybk.core.llb.definition import Definition, Location, Locations, Range, Source, SourceInfo
from pybk.core.llb.ops import (
    SCRATCH,
    SKIP_OUTPUT,
    CacheOpt,
    CacheSharingOpt,
    CDIDevice,
    ChownOpt,
    DiffOp,
    ExecOp,
    ExportCache,
    FileAction,
    FileActionCopy,
    FileActionMkDir,
    FileActionMkFile,
    FileActionRm,
    FileActionSymlink,
    FileOp,
    FrozenDict,
    HostIP,
    Input,
    LowerDiffInput,
    MergeInput,
    MergeOp,
    Meta,
    Mount,
    MountContentCache,
    MountType,
    NamedUserOpt,
    NetMode,
    Op,
    OpBody,
    OpMetadata,
    Platform,
    ProgressGroup,
    ProxyEnv,
    SecretEnv,
    SecretOpt,
    SecurityMode,
    SourceOp,
    SSHOpt,
    TmpfsOpt,
    Ulimit,
    UpperDiffInput,
    UserOpt,
    WorkerConstraints,
    host_platform,
)
from pybk.core.serialize import canonical_dumps, sha256_digest

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH given to ``run`` when the State's environment has none (as BuildKit does)."""

CUSTOM_NAME_KEY = "llb.customname"


# ------------------------------------------------------------------------------ graph nodes


@attrs.frozen
class SourceLocation:
    """Where an op comes from in a source file (e.g. a Dockerfile), for error display."""

    info: SourceInfo
    ranges: tuple[Range, ...] = attrs.field(converter=tuple, factory=tuple)


@attrs.frozen(eq=False)
class _Vertex:
    """An op whose inputs are outputs of other vertices; compared by identity."""

    body: OpBody
    inputs: tuple[_Output, ...]
    platform: Platform | None  # None: the platform given to marshal()
    platform_specific: bool
    constraints: WorkerConstraints | None
    metadata: OpMetadata
    locations: tuple[SourceLocation, ...]


@attrs.frozen
class _Output:
    vertex: _Vertex
    index: int


@attrs.frozen
class _VertexOptions:
    """Per-op options every builder accepts as keywords."""

    custom_name: str | None = None
    description: Mapping[str, str] | None = None
    ignore_cache: bool = False
    progress_group: ProgressGroup | None = None
    export_cache: bool | None = None
    location: SourceLocation | None = None
    constraints: WorkerConstraints | None = None

    def metadata(self) -> OpMetadata:
        description = dict(self.description or {})
        if self.custom_name is not None:
            description[CUSTOM_NAME_KEY] = self.custom_name
        return OpMetadata(
            ignore_cache=self.ignore_cache,
            description=description,
            export_cache=None if self.export_cache is None else ExportCache(self.export_cache),
            progress_group=self.progress_group,
        )


def _vertex(
    body: OpBody,
    inputs: Sequence[_Output],
    options: dict[str, Any],
    *,
    platform: Platform | None,
    platform_specific: bool = True,
) -> _Vertex:
    opts = _VertexOptions(**options)
    return _Vertex(
        body=body,
        inputs=tuple(inputs),
        platform=platform,
        platform_specific=platform_specific,
        constraints=opts.constraints,
        metadata=opts.metadata(),
        locations=(opts.location,) if opts.location else (),
    )


class _Inputs:
    """Collects distinct op inputs and answers their indices."""

    def __init__(self) -> None:
        self.outputs: list[_Output] = []

    def index(self, state: State | None) -> int:
        if state is None or state._output is None:
            return SCRATCH
        out = state._output
        if out not in self.outputs:
            self.outputs.append(out)
        return self.outputs.index(out)


# ------------------------------------------------------------------------------------ State


@attrs.frozen
class _StateMeta:
    env: tuple[tuple[str, str], ...] = ()
    dir: str = "/"
    user: str = ""
    hostname: str = ""
    platform: Platform | None = None
    network: NetMode = NetMode.UNSET
    security: SecurityMode = SecurityMode.SANDBOX
    extra_hosts: tuple[HostIP, ...] = ()
    ulimits: tuple[Ulimit, ...] = ()
    cgroup_parent: str = ""


@attrs.frozen
class State:
    """One output of an LLB op (or scratch) plus the values applied to later ``run`` calls."""

    _output: _Output | None = None
    _meta: _StateMeta = _StateMeta()

    # ------------------------------------------------------------------------ state values

    def _with(self, **changes: Any) -> State:
        return State(self._output, attrs.evolve(self._meta, **changes))

    @property
    def is_scratch(self) -> bool:
        return self._output is None

    def env(self, key: str, value: str) -> State:
        """Set (or replace) an environment variable for later ``run`` calls."""
        if not key or "=" in key:
            raise ValueError(f"invalid environment variable name {key!r}")
        env = list(self._meta.env)
        for i, (k, _) in enumerate(env):
            if k == key:
                env[i] = (key, value)
                break
        else:
            env.append((key, value))
        return self._with(env=tuple(env))

    def unset_env(self, key: str) -> State:
        return self._with(env=tuple((k, v) for k, v in self._meta.env if k != key))

    def get_env(self, key: str, default: str | None = None) -> str | None:
        return dict(self._meta.env).get(key, default)

    def env_list(self) -> tuple[str, ...]:
        """``KEY=value`` strings in the order they were first set."""
        return tuple(f"{k}={v}" for k, v in self._meta.env)

    def dir(self, path: str) -> State:
        """Set the working directory; a relative path is joined to the current one."""
        if not posixpath.isabs(path):
            path = posixpath.normpath(posixpath.join(self._meta.dir, path))
        return self._with(dir=path)

    def get_dir(self) -> str:
        return self._meta.dir

    @property
    def cwd(self) -> str:
        return self._meta.dir

    def user(self, user: str) -> State:
        """``name``, ``uid``, ``name:group`` or ``uid:gid`` for later ``run`` calls."""
        return self._with(user=user)

    def get_user(self) -> str:
        return self._meta.user

    def hostname(self, hostname: str) -> State:
        return self._with(hostname=hostname)

    def get_hostname(self) -> str:
        return self._meta.hostname

    def platform(self, platform: Platform | str) -> State:
        """The platform of ops created from this State (default: the one given to marshal)."""
        return self._with(platform=_platform(platform))

    def get_platform(self) -> Platform | None:
        return self._meta.platform

    def network(self, mode: NetMode) -> State:
        return self._with(network=NetMode(mode))

    def get_network(self) -> NetMode:
        return self._meta.network

    def security(self, mode: SecurityMode) -> State:
        return self._with(security=SecurityMode(mode))

    def get_security(self) -> SecurityMode:
        return self._meta.security

    def add_extra_host(self, host: str, ip: str) -> State:
        return self._with(extra_hosts=(*self._meta.extra_hosts, HostIP(host, ip)))

    def add_ulimit(self, name: str, soft: int, hard: int) -> State:
        return self._with(ulimits=(*self._meta.ulimits, Ulimit(name, soft, hard)))

    def cgroup_parent(self, parent: str) -> State:
        return self._with(cgroup_parent=parent)

    def with_custom_name(self, name: str) -> State:
        """The same output, shown under ``name`` in progress (op metadata, not the digest)."""
        if self._output is None:
            return self
        vertex = self._output.vertex
        description = {**vertex.metadata.description, CUSTOM_NAME_KEY: name}
        renamed = attrs.evolve(
            vertex, metadata=attrs.evolve(vertex.metadata, description=description)
        )
        return State(_Output(renamed, self._output.index), self._meta)

    # -------------------------------------------------------------------------------- ops

    def run(
        self,
        args: str | Sequence[str],
        *,
        mounts: Iterable[MountSpec] = (),
        network: NetMode | None = None,
        security: SecurityMode | None = None,
        secret_env: Iterable[SecretEnv] = (),
        proxy_env: ProxyEnv | None = None,
        valid_exit_codes: Iterable[int] = (),
        cdi_devices: Iterable[CDIDevice] = (),
        **options: Any,
    ) -> ExecState:
        """Run ``args`` (a list, or a string for ``/bin/sh -c``) with this State as root.

        ``options``: ``custom_name``, ``description``, ``ignore_cache``, ``progress_group``,
        ``export_cache``, ``location``, ``constraints``.
        """
        argv = ["/bin/sh", "-c", args] if isinstance(args, str) else list(args)
        if not argv:
            raise ValueError("run needs at least one argument")
        env = dict(self._meta.env)
        env_list = list(self.env_list())
        if "PATH" not in env:
            env_list.append(f"PATH={DEFAULT_PATH}")
        meta = Meta(
            args=argv,
            env=env_list,
            cwd=self._meta.dir,
            user=self._meta.user,
            proxy_env=proxy_env,
            extra_hosts=self._meta.extra_hosts,
            hostname=self._meta.hostname,
            ulimit=self._meta.ulimits,
            cgroup_parent=self._meta.cgroup_parent,
            valid_exit_codes=tuple(valid_exit_codes),
        )
        specs = sorted(mounts, key=lambda m: m.dest)
        dests = [m.dest for m in specs]
        if "/" in dests or len(set(dests)) != len(dests):
            raise ValueError(f"mount destinations must be distinct and not '/': {dests}")
        inputs = _Inputs()
        pb_mounts = [Mount(input=inputs.index(self), dest="/", output=0)]
        outputs = {"/": 0}
        for spec in specs:
            produces = spec.mount_type == MountType.BIND and not spec.readonly
            output = len(outputs) if produces else SKIP_OUTPUT
            if produces:
                outputs[spec.dest] = output
            pb_mounts.append(spec._to_mount(inputs.index(spec.source), output))
        body = ExecOp(
            meta=meta,
            mounts=pb_mounts,
            network=self._meta.network if network is None else network,
            security=self._meta.security if security is None else security,
            secretenv=tuple(secret_env),
            cdi_devices=tuple(cdi_devices),
        )
        vertex = _vertex(body, inputs.outputs, options, platform=self._meta.platform)
        return ExecState(_Output(vertex, 0), self._meta, outputs=FrozenDict(outputs))

    def file(self, chain: FileChain, **options: Any) -> State:
        """Apply a chain of file actions (``copy(...).mkdir(...)``) to this State."""
        if not chain.actions:
            raise ValueError("file needs at least one action")
        inputs = _Inputs()
        base = inputs.index(self)
        sources = [
            inputs.index(a.source) if a.source is not None else SCRATCH for a in chain.actions
        ]
        n = len(inputs.outputs)
        actions = []
        for k, pending in enumerate(chain.actions):
            current = base if k == 0 else n + k - 1
            secondary = sources[k] if isinstance(pending.action, FileActionCopy) else SCRATCH
            action = _resolve_action(pending, current, self)
            output = 0 if k == len(chain.actions) - 1 else SKIP_OUTPUT
            actions.append(
                FileAction(input=current, secondary_input=secondary, output=output, action=action)
            )
        vertex = _vertex(FileOp(actions), inputs.outputs, options, platform=self._meta.platform)
        return State(_Output(vertex, 0), self._meta)

    # ---------------------------------------------------------------------------- marshal

    def marshal(self, platform: Platform | str | None = None) -> Definition:
        """The Definition of everything this State depends on.

        ``platform`` (default: this machine's) is used by ops created without one. Identical
        ops are written once; ops come inputs-first and end with the terminal op. Scratch
        marshals to an empty Definition (no ops): an empty result.
        """
        if self._output is None:
            return Definition()
        return _Marshaller(_platform(platform) if platform else host_platform()).run(self._output)


@attrs.frozen
class ExecState(State):
    """The root output of a ``run``; other writable mounts via :meth:`get_mount`."""

    outputs: FrozenDict = attrs.field(factory=FrozenDict, kw_only=True)

    def root(self) -> State:
        return State(self._output, self._meta)

    def get_mount(self, dest: str) -> State:
        """The contents of the writable bind mount at ``dest`` after the command ran."""
        if dest not in self.outputs:
            have = ", ".join(sorted(d for d in self.outputs if d != "/")) or "none"
            raise ValueError(f"no writable mount at {dest!r} (writable mounts: {have})")
        assert self._output is not None
        return State(_Output(self._output.vertex, self.outputs[dest]), self._meta)


def _platform(value: Platform | str | None) -> Platform | None:
    if value is None or isinstance(value, Platform):
        return value
    return Platform.parse(value)


# ---------------------------------------------------------------------------------- sources


def scratch() -> State:
    """An empty filesystem."""
    return State()


def _source(
    identifier: str,
    attrs_: Mapping[str, str],
    options: dict[str, Any],
    *,
    platform: Platform | None = None,
    platform_specific: bool = False,
) -> State:
    body = SourceOp(identifier, {k: v for k, v in attrs_.items() if v is not None})
    vertex = _vertex(body, (), options, platform=platform, platform_specific=platform_specific)
    return State(_Output(vertex, 0), _StateMeta(platform=platform))


_DOMAIN_RE = re.compile(r"^(localhost|[^/]*[.:][^/]*)$")
_REF_RE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}))?$"
)


def normalize_image_ref(ref: str) -> str:
    """Docker's normal form: ``alpine`` → ``docker.io/library/alpine:latest``."""
    domain, _, rest = ref.partition("/")
    if not rest or not _DOMAIN_RE.match(domain):
        domain, rest = "docker.io", ref
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in rest:
        rest = "library/" + rest
    match = _REF_RE.match(rest)
    if not match:
        raise InputError(f"invalid image reference {ref!r}")
    if not match.group("tag") and not match.group("digest"):
        rest = match.group("name") + ":latest"
    return f"{domain}/{rest}"


def image(
    ref: str,
    platform: Platform | str | None = None,
    resolve_mode: str | None = None,
    *,
    layer_limit: int | None = None,
    checksum: str | None = None,
    record_type: str | None = None,
    **options: Any,
) -> State:
    """``docker-image://`` source. ``resolve_mode``: ``default``, ``pull`` or ``local``."""
    if resolve_mode not in (None, "default", "pull", "local"):
        raise ValueError(f"invalid resolve mode {resolve_mode!r} (default, pull, local)")
    attrs_ = {
        "image.resolvemode": resolve_mode if resolve_mode not in (None, "default") else None,
        "image.layerlimit": str(layer_limit) if layer_limit is not None else None,
        "image.checksum": checksum,
        "image.recordtype": record_type,
    }
    return _source(
        "docker-image://" + normalize_image_ref(ref),
        attrs_,
        options,
        platform=_platform(platform),
        platform_specific=True,
    )


def oci_layout(
    ref: str,
    *,
    store_id: str | None = None,
    session_id: str | None = None,
    layer_limit: int | None = None,
    platform: Platform | str | None = None,
    **options: Any,
) -> State:
    """``oci-layout://<ref>@<digest>`` source from a client-side OCI layout store."""
    attrs_ = {
        "oci.store": store_id,
        "oci.session": session_id,
        "oci.layerlimit": str(layer_limit) if layer_limit is not None else None,
    }
    return _source(
        "oci-layout://" + ref, attrs_, options, platform=_platform(platform), platform_specific=True
    )


def _json_list(values: Iterable[str] | None) -> str | None:
    values = list(values or ())
    return canonical_dumps(values).decode() if values else None


def local(
    name: str,
    *,
    include_patterns: Iterable[str] | None = None,
    exclude_patterns: Iterable[str] | None = None,
    follow_paths: Iterable[str] | None = None,
    shared_key_hint: str | None = None,
    session_id: str | None = None,
    differ: str | None = None,
    **options: Any,
) -> State:
    """``local://<name>``: a directory sent by the client (the build context, a named local)."""
    attrs_ = {
        "local.includepattern": _json_list(include_patterns),
        "local.excludepatterns": _json_list(exclude_patterns),
        "local.followpaths": _json_list(follow_paths),
        "local.sharedkeyhint": shared_key_hint,
        "local.session": session_id,
        "local.differ": differ,
    }
    return _source("local://" + name, attrs_, options)


_SCP_RE = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>[^/].*)$")


def git(
    url: str,
    ref: str | None = None,
    keep_git_dir: bool = False,
    *,
    subdir: str | None = None,
    checksum: str | None = None,
    auth_header_secret: str | None = None,
    auth_token_secret: str | None = None,
    known_ssh_hosts: str | None = None,
    mount_ssh_sock: str | None = None,
    skip_submodules: bool = False,
    **options: Any,
) -> State:
    """``git://<host>/<path>[#ref[:subdir]]``; ``git.fullurl`` keeps the URL's transport."""
    full_url = None
    remote = url
    scheme, sep, rest = url.partition("://")
    is_http = False
    if sep:
        full_url = url
        remote = rest.split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
        is_http = scheme in ("http", "https")
    elif m := _SCP_RE.match(url):
        full_url = url
        remote = f"{m.group('host')}/{m.group('path')}"
    identifier = "git://" + remote
    if ref or subdir:
        identifier += "#" + (ref or "")
        if subdir:
            identifier += ":" + subdir
    attrs_: dict[str, str | None] = {
        "git.fullurl": full_url,
        "git.keepgitdir": "true" if keep_git_dir else None,
        "git.checksum": checksum,
        "git.knownsshhosts": known_ssh_hosts,
        "git.mountsshsock": mount_ssh_sock,
        "git.skipsubmodules": "true" if skip_submodules else None,
    }
    if is_http:
        attrs_["git.authheadersecret"] = auth_header_secret or "GIT_AUTH_HEADER"
        attrs_["git.authtokensecret"] = auth_token_secret or "GIT_AUTH_TOKEN"
    return _source(identifier, attrs_, options)


def http(
    url: str,
    checksum: str | None = None,
    filename: str | None = None,
    perm: int | None = None,
    *,
    uid: int | None = None,
    gid: int | None = None,
    auth_header_secret: str | None = None,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> State:
    """``http(s)://`` source: one file (``filename``, mode ``perm``) in an otherwise empty tree."""
    attrs_: dict[str, str | None] = {
        "http.checksum": checksum,
        "http.filename": filename,
        "http.perm": str(perm) if perm is not None else None,
        "http.uid": str(uid) if uid is not None else None,
        "http.gid": str(gid) if gid is not None else None,
        "http.authheadersecret": auth_header_secret,
    }
    for key, value in (headers or {}).items():
        attrs_[f"http.header.{key}"] = value
    return _source(url, attrs_, options)


def merge(states: Iterable[State], **options: Any) -> State:
    """Layer ``states`` in order (later wins). Scratch inputs are dropped; zero inputs is
    scratch and one input is returned as it is."""
    states = list(states)
    real = [s for s in states if not s.is_scratch]
    if not real:
        return State(None, states[0]._meta if states else _StateMeta())
    if len(real) == 1:
        return real[0]
    inputs = _Inputs()
    body = MergeOp(tuple(MergeInput(inputs.index(s)) for s in real))
    vertex = _vertex(body, inputs.outputs, options, platform=real[0]._meta.platform)
    return State(_Output(vertex, 0), real[0]._meta)


def diff(lower: State, upper: State, **options: Any) -> State:
    """The changes that turn ``lower`` into ``upper``, as a filesystem of their own."""
    if lower.is_scratch:
        return upper
    inputs = _Inputs()
    body = DiffOp(LowerDiffInput(inputs.index(lower)), UpperDiffInput(inputs.index(upper)))
    vertex = _vertex(body, inputs.outputs, options, platform=upper._meta.platform)
    return State(_Output(vertex, 0), upper._meta)


# ------------------------------------------------------------------------------ run mounts


@attrs.frozen
class MountSpec:
    """An extra mount for :meth:`State.run` (use :func:`mount`, :func:`cache_mount`, …)."""

    dest: str
    source: State | None = None
    mount_type: MountType = MountType.BIND
    selector: str = ""
    readonly: bool = False
    tmpfs_opt: TmpfsOpt | None = None
    cache_opt: CacheOpt | None = None
    secret_opt: SecretOpt | None = None
    ssh_opt: SSHOpt | None = None
    content_cache: MountContentCache = MountContentCache.DEFAULT

    def _to_mount(self, input_index: int, output: int) -> Mount:
        return Mount(
            input=input_index,
            selector=self.selector,
            dest=self.dest,
            output=output,
            readonly=self.readonly,
            mount_type=self.mount_type,
            tmpfs_opt=self.tmpfs_opt,
            cache_opt=self.cache_opt,
            secret_opt=self.secret_opt,
            ssh_opt=self.ssh_opt,
            content_cache=self.content_cache,
        )


def _check_dest(dest: str) -> str:
    if not posixpath.isabs(dest):
        raise ValueError(f"mount destination must be absolute: {dest!r}")
    return dest


def mount(
    dest: str,
    state: State,
    *,
    selector: str = "",
    readonly: bool = False,
    content_cache: MountContentCache = MountContentCache.DEFAULT,
) -> MountSpec:
    """Bind ``state`` (or its ``selector`` sub-path) at ``dest``; writable mounts are outputs."""
    return MountSpec(
        _check_dest(dest), state, MountType.BIND, selector, readonly, content_cache=content_cache
    )


def cache_mount(
    dest: str,
    id: str,
    *,
    sharing: CacheSharingOpt = CacheSharingOpt.SHARED,
    source: State | None = None,
    selector: str = "",
) -> MountSpec:
    """A persistent cache directory shared across builds by ``id``; ``source`` seeds it."""
    return MountSpec(
        _check_dest(dest),
        source,
        MountType.CACHE,
        selector,
        cache_opt=CacheOpt(id, CacheSharingOpt(sharing)),
    )


def tmpfs(dest: str, *, size: int = 0) -> MountSpec:
    """An in-memory filesystem (``size`` bytes, 0 = default)."""
    return MountSpec(_check_dest(dest), None, MountType.TMPFS, tmpfs_opt=TmpfsOpt(size))


def secret(
    dest: str, id: str, uid: int = 0, gid: int = 0, mode: int = 0o400, optional: bool = False
) -> MountSpec:
    """Secret ``id`` as a read-only file at ``dest``."""
    return MountSpec(
        _check_dest(dest),
        None,
        MountType.SECRET,
        secret_opt=SecretOpt(id, uid, gid, mode, optional),
    )


def ssh(
    dest: str = "/run/buildkit/ssh_agent.0",
    id: str = "default",
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o600,
    optional: bool = False,
) -> MountSpec:
    """The SSH agent socket ``id`` at ``dest``."""
    return MountSpec(
        _check_dest(dest), None, MountType.SSH, ssh_opt=SSHOpt(id, uid, gid, mode, optional)
    )


# ------------------------------------------------------------------------------ file actions

Owner = ChownOpt | str | int | tuple[str | int, str | int] | None
Timestamp = int | datetime.datetime | None


@attrs.frozen
class _PendingAction:
    """An action whose relative paths and named owners are resolved by ``State.file``."""

    action: FileActionCopy | FileActionMkFile | FileActionMkDir | FileActionRm | FileActionSymlink
    owner: Owner = None
    source: State | None = None


@attrs.frozen
class FileChain:
    """File actions applied in order, each to the result of the previous one."""

    actions: tuple[_PendingAction, ...] = ()

    def _then(self, pending: _PendingAction) -> FileChain:
        return FileChain((*self.actions, pending))

    def copy(self, src_state: State, src: str, dest: str, **info: Any) -> FileChain:
        return self._then(_copy(src_state, src, dest, **info))

    def mkdir(
        self,
        path: str,
        mode: int,
        make_parents: bool = False,
        *,
        owner: Owner = None,
        timestamp: Timestamp = None,
    ) -> FileChain:
        return self._then(_mkdir(path, mode, make_parents, owner, timestamp))

    def mkfile(
        self,
        path: str,
        mode: int,
        data: bytes | str,
        *,
        owner: Owner = None,
        timestamp: Timestamp = None,
    ) -> FileChain:
        return self._then(_mkfile(path, mode, data, owner, timestamp))

    def rm(
        self, path: str, *, allow_not_found: bool = False, allow_wildcard: bool = False
    ) -> FileChain:
        return self._then(_PendingAction(FileActionRm(path, allow_not_found, allow_wildcard)))

    def symlink(
        self, oldpath: str, newpath: str, *, owner: Owner = None, timestamp: Timestamp = None
    ) -> FileChain:
        return self._then(
            _PendingAction(FileActionSymlink(oldpath, newpath, timestamp=_ns(timestamp)), owner)
        )


def _ns(ts: Timestamp) -> int:
    if ts is None:
        return -1
    if isinstance(ts, datetime.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=datetime.UTC)
        delta = ts - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    return int(ts)


def _copy(
    src_state: State,
    src: str,
    dest: str,
    *,
    owner: Owner = None,
    timestamp: Timestamp = None,
    **info: Any,
) -> _PendingAction:
    action = FileActionCopy(src=src, dest=dest, timestamp=_ns(timestamp), **info)
    return _PendingAction(action, owner, src_state)


def _mkdir(
    path: str, mode: int, make_parents: bool, owner: Owner, timestamp: Timestamp
) -> _PendingAction:
    return _PendingAction(
        FileActionMkDir(path, mode, make_parents, timestamp=_ns(timestamp)), owner
    )


def _mkfile(
    path: str, mode: int, data: bytes | str, owner: Owner, timestamp: Timestamp
) -> _PendingAction:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return _PendingAction(FileActionMkFile(path, mode, raw, timestamp=_ns(timestamp)), owner)


def copy(src_state: State, src: str, dest: str, **info: Any) -> FileChain:
    """Copy ``src`` of ``src_state`` to ``dest``. ``info``: the :class:`FileActionCopy` fields
    (``owner``, ``mode``, ``follow_symlink``, ``dir_copy_contents``, ``create_dest_path``,
    ``allow_wildcard``, ``include_patterns``, …; ``timestamp`` also takes a datetime)."""
    return FileChain().copy(src_state, src, dest, **info)


def mkdir(
    path: str,
    mode: int,
    make_parents: bool = False,
    *,
    owner: Owner = None,
    timestamp: Timestamp = None,
) -> FileChain:
    return FileChain().mkdir(path, mode, make_parents, owner=owner, timestamp=timestamp)


def mkfile(
    path: str, mode: int, data: bytes | str, *, owner: Owner = None, timestamp: Timestamp = None
) -> FileChain:
    return FileChain().mkfile(path, mode, data, owner=owner, timestamp=timestamp)


def rm(path: str, *, allow_not_found: bool = False, allow_wildcard: bool = False) -> FileChain:
    return FileChain().rm(path, allow_not_found=allow_not_found, allow_wildcard=allow_wildcard)


def symlink(
    oldpath: str, newpath: str, *, owner: Owner = None, timestamp: Timestamp = None
) -> FileChain:
    return FileChain().symlink(oldpath, newpath, owner=owner, timestamp=timestamp)


def _user_opt(value: str | int, input_index: int) -> UserOpt:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return UserOpt(int(value))
    return UserOpt(NamedUserOpt(value, input_index))


def _chown(owner: Owner, input_index: int) -> ChownOpt | None:
    """``"user[:group]"``, a uid, ``(user, group)`` or a ChownOpt; names resolve in the input."""
    if owner is None or isinstance(owner, ChownOpt):
        return owner
    if isinstance(owner, int):
        return ChownOpt(_user_opt(owner, input_index), _user_opt(owner, input_index))
    if isinstance(owner, str):
        user, sep, group = owner.partition(":")
        if not user or (sep and not group):
            raise ValueError(f"invalid owner {owner!r}: expected user[:group]")
        return ChownOpt(
            _user_opt(user, input_index), _user_opt(group, input_index) if sep else None
        )
    user, group = owner
    return ChownOpt(_user_opt(user, input_index), _user_opt(group, input_index))


def _abs(path: str, state: State | None, keep_slash: bool = False) -> str:
    """Join a relative path to ``state``'s working directory (BuildKit's normalizePath)."""
    base = state.get_dir() if state is not None else "/"
    joined = path if posixpath.isabs(path) else posixpath.join(base, path)
    cleaned = posixpath.normpath(joined)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if keep_slash and path.endswith(("/", "/.")) and cleaned != "/":
        cleaned += "/"
    return cleaned


def _resolve_action(pending: _PendingAction, input_index: int, base: State) -> Any:
    action = pending.action
    owner = _chown(pending.owner, input_index)
    if isinstance(action, FileActionCopy):
        return attrs.evolve(
            action,
            src=_abs(action.src, pending.source, keep_slash=True),
            dest=_abs(action.dest, base, keep_slash=True),
            owner=owner,
        )
    if isinstance(action, FileActionSymlink):
        return attrs.evolve(action, newpath=_abs(action.newpath, base), owner=owner)
    if isinstance(action, FileActionRm):
        return attrs.evolve(action, path=_abs(action.path, base))
    return attrs.evolve(action, path=_abs(action.path, base), owner=owner)


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
    )


class _Marshaller:
    def __init__(self, default_platform: Platform):
        self.default_platform = default_platform
        self.ops: dict[str, bytes] = {}
        self.metadata: dict[str, OpMetadata] = {}
        self.locations: dict[str, list[Location]] = {}
        self.infos: list[SourceInfo] = []
        self.caps: set[str] = set()
        self.digest_of: dict[int, str] = {}

    def run(self, head: _Output) -> Definition:
        # Iterative post-order walk: long Dockerfiles make deep graphs.
        stack: list[tuple[_Vertex, bool]] = [(head.vertex, False)]
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

    def _emit(self, vertex: _Vertex) -> None:
        platform = vertex.platform or self.default_platform if vertex.platform_specific else None
        op = Op(
            inputs=tuple(Input(self.digest_of[id(o.vertex)], o.index) for o in vertex.inputs),
            op=vertex.body,
            platform=platform,
            constraints=vertex.constraints,
        )
        data = op.marshal()
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
