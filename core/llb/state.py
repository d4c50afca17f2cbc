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
from collections.abc import Iterable, Sequence
from typing import Any

from pybk.core.llb.definition import Definition
from pybk.core.llb.graph import CUSTOM_NAME_KEY, Marshaller, Output, new_vertex
from pybk.core.llb.ops import (
    SCRATCH,
    SKIP_OUTPUT,
    CacheOpt,
    CDIDevice,
    ChownOpt,
    DiffOp,
    ExecOp,
    FileAction,
    FileActionCopy,
    FileActionMkDir,
    FileActionMkFile,
    FileActionRm,
    FileActionSymlink,
    FileOp,
    FrozenDict,
    HostIP,
    LowerDiffInput,
    MergeInput,
    MergeOp,
    Meta,
    Mount,
    MountContentCache,
    MountType,
    NamedUserOpt,
    NetMode,
    Platform,
    ProxyEnv,
    SecretEnv,
    SecretOpt,
    SecurityMode,
    SSHOpt,
    TmpfsOpt,
    Ulimit,
    UpperDiffInput,
    UserOpt,
    host_platform,
)
from pybk.core.model import Model, evolve, field

__all__ = ["DEFAULT_PATH", "ExecState", "FileChain", "MountSpec", "Owner", "State", "StateMeta",
           "Timestamp", "as_platform", "diff", "merge"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH given to ``run`` when the State's environment has none (as BuildKit does)."""


class _Inputs:
    """Collects distinct op inputs and answers their indices."""

    def __init__(self) -> None:
        self.outputs: list[Output] = []

    def index(self, state: State | None) -> int:
        if state is None or state._output is None:
            return SCRATCH
        out = state._output
        if out not in self.outputs:
            self.outputs.append(out)
        return self.outputs.index(out)


# ------------------------------------------------------------------------------------ State


class StateMeta(Model):
    """The values a State applies to later ``run`` calls (environment, directory, user, …)."""

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


class State(Model):
    """One output of an LLB op (or scratch) plus the values applied to later ``run`` calls."""

    _output: Output | None = None
    _meta: StateMeta = StateMeta()

    # ------------------------------------------------------------------------ state values

    def _with(self, **changes: Any) -> State:
        return State(self._output, evolve(self._meta, **changes))

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
        return self._with(platform=as_platform(platform))

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
        renamed = evolve(
            vertex, metadata=evolve(vertex.metadata, description=description)
        )
        return State(Output(renamed, self._output.index), self._meta)

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
        ``export_cache``, ``location``, ``constraints``, ``linux_resources``.
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
        vertex = new_vertex(body, inputs.outputs, options, platform=self._meta.platform)
        return ExecState(Output(vertex, 0), self._meta, outputs=FrozenDict(outputs))

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
        vertex = new_vertex(FileOp(actions), inputs.outputs, options, platform=self._meta.platform)
        return State(Output(vertex, 0), self._meta)

    # ---------------------------------------------------------------------------- marshal

    def marshal(self, platform: Platform | str | None = None) -> Definition:
        """The Definition of everything this State depends on.

        ``platform`` (default: this machine's) is used by ops created without one. Identical
        ops are written once; ops come inputs-first and end with the terminal op. Scratch
        marshals to an empty Definition (no ops): an empty result.
        """
        if self._output is None:
            return Definition()
        return Marshaller(as_platform(platform) if platform else host_platform()).run(self._output)


class ExecState(State):
    """The root output of a ``run``; other writable mounts via :meth:`get_mount`."""

    outputs: FrozenDict = field(factory=FrozenDict, kw_only=True)

    def root(self) -> State:
        return State(self._output, self._meta)

    def get_mount(self, dest: str) -> State:
        """The contents of the writable bind mount at ``dest`` after the command ran."""
        if dest not in self.outputs:
            have = ", ".join(sorted(d for d in self.outputs if d != "/")) or "none"
            raise ValueError(f"no writable mount at {dest!r} (writable mounts: {have})")
        assert self._output is not None
        return State(Output(self._output.vertex, self.outputs[dest]), self._meta)


def as_platform(value: Platform | str | None) -> Platform | None:
    if value is None or isinstance(value, Platform):
        return value
    return Platform.parse(value)


def merge(states: Iterable[State], **options: Any) -> State:
    """Layer ``states`` in order (later wins). Scratch inputs are dropped; zero inputs is
    scratch and one input is returned as it is."""
    states = list(states)
    real = [s for s in states if not s.is_scratch]
    if not real:
        return State(None, states[0]._meta if states else StateMeta())
    if len(real) == 1:
        return real[0]
    inputs = _Inputs()
    body = MergeOp(tuple(MergeInput(inputs.index(s)) for s in real))
    vertex = new_vertex(body, inputs.outputs, options, platform=real[0]._meta.platform)
    return State(Output(vertex, 0), real[0]._meta)


def diff(lower: State, upper: State, **options: Any) -> State:
    """The changes that turn ``lower`` into ``upper``, as a filesystem of their own."""
    if lower.is_scratch:
        return upper
    inputs = _Inputs()
    body = DiffOp(LowerDiffInput(inputs.index(lower)), UpperDiffInput(inputs.index(upper)))
    vertex = new_vertex(body, inputs.outputs, options, platform=upper._meta.platform)
    return State(Output(vertex, 0), upper._meta)


# ------------------------------------------------------------------------------ run mounts


class MountSpec(Model):
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


# ------------------------------------------------------------------------------ file actions

Owner = ChownOpt | str | int | tuple[str | int, str | int] | None
Timestamp = int | datetime.datetime | None


class _PendingAction(Model):
    """An action whose relative paths and named owners are resolved by ``State.file``."""

    action: FileActionCopy | FileActionMkFile | FileActionMkDir | FileActionRm | FileActionSymlink
    owner: Owner = None
    source: State | None = None


class FileChain(Model):
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
        return evolve(
            action,
            src=_abs(action.src, pending.source, keep_slash=True),
            dest=_abs(action.dest, base, keep_slash=True),
            owner=owner,
        )
    if isinstance(action, FileActionSymlink):
        return evolve(action, newpath=_abs(action.newpath, base), owner=owner)
    if isinstance(action, FileActionRm):
        return evolve(action, path=_abs(action.path, base))
    return evolve(action, path=_abs(action.path, base), owner=owner)
