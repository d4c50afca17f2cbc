"""Running an ExecOp: its process, its mounts (bind, cache, tmpfs, secret, ssh) and outputs.

The root mount and every writable bind mount are new active snapshots on their inputs; those
with an output are committed when the process exits with a valid code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from pybk.core.errors import SolveError, exit_error
from pybk.core.interfaces import ExecMount, Mount, ProcessSpec, SecretMount, SSHMount
from pybk.core.llb.ops import (
    SCRATCH,
    SKIP_OUTPUT,
    CacheSharingOpt,
    ExecOp,
    MountType,
    NetMode,
    SecurityMode,
)
from pybk.core.model import asdict, evolve
from pybk.core.platform import check_executable
from pybk.core.progress.events import STREAM_STDERR, STREAM_STDOUT, StepLogLimiter, VertexProgress
from pybk.core.solver.active import ActiveSnapshot
from pybk.core.solver.results import SCRATCH_REF, Ref, read_ref
from pybk.core.solver.scheduler import VertexOutcome
from pybk.core.solver.vertex import Vertex

DEFAULT_SSH_DEST = "/run/buildkit/ssh_agent.0"
NETWORK_MODES = {NetMode.UNSET: "sandbox", NetMode.HOST: "host", NetMode.NONE: "none"}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy")
CACHE_SHARING = {CacheSharingOpt.SHARED: "shared", CacheSharingOpt.PRIVATE: "private",
                 CacheSharingOpt.LOCKED: "locked"}


def process_spec(runner: Any, vertex: Vertex, op: ExecOp) -> ProcessSpec:
    """What to run: the op's meta, its proxy variables and secret environment variables."""
    meta = op.meta
    assert meta is not None
    env = list(meta.env)
    if meta.proxy_env is not None:
        # like BuildKit: both spellings, and never part of the cache key
        for name in PROXY_VARIABLES:
            value = getattr(meta.proxy_env, name)
            if value:
                env += [f"{name.upper()}={value}", f"{name}={value}"]
    for se in op.secretenv:
        data = runner.session.secrets.get(se.id)
        if data is None:
            if se.optional:
                continue
            raise SolveError(f"secret {se.id} not found", vertex=vertex.digest)
        env.append(f"{se.name or se.id}={data.decode('utf-8', 'replace')}")
    return ProcessSpec(
        args=tuple(meta.args), env=tuple(env), cwd=meta.cwd or "/", user=meta.user,
        hostname=meta.hostname or "pybk", network=NETWORK_MODES[op.network],
        security="insecure" if op.security == SecurityMode.INSECURE else "sandbox",
        extra_hosts=tuple((h.host, h.ip) for h in meta.extra_hosts),
        valid_exit_codes=tuple(meta.valid_exit_codes) or (0,),
        ulimits=tuple((u.name, u.soft, u.hard) for u in meta.ulimit),
        cgroup_parent=meta.cgroup_parent,
        resources=tuple((k, v) for k, v in asdict(vertex.linux_resources).items() if v)
        if vertex.linux_resources is not None else ())


class _Mounts:
    """The mounts of one exec being assembled, and the snapshots its outputs go to."""

    def __init__(self, runner: Any, vertex: Vertex, op: ExecOp, inputs: list[Ref],
                 astack: contextlib.AsyncExitStack, stack: contextlib.ExitStack,
                 vp: VertexProgress | None = None):
        self.runner = runner
        self.vp = vp
        self.vertex = vertex
        self.op = op
        self.inputs = inputs
        self.astack = astack
        self.stack = stack
        self.root: list[Mount] | None = None
        self.outputs: dict[int, ActiveSnapshot] = {}
        self.mounts: list[ExecMount] = []
        self.secrets: list[SecretMount] = []
        self.agents: list[SSHMount] = []

    def ref_of(self, index: int) -> Ref:
        return SCRATCH_REF if index == SCRATCH else self.inputs[index]

    async def add(self, m: Any) -> None:
        if m.mount_type == MountType.BIND:
            await self._bind(m)
        elif m.mount_type == MountType.CACHE:
            self.mounts.append(await cache_mount(self.runner, m, self.ref_of(m.input),
                                                 self.astack, self.vp))
        elif m.mount_type == MountType.TMPFS:
            opts = ("nosuid", "nodev", "mode=1777")
            if m.tmpfs_opt is not None and m.tmpfs_opt.size:
                opts += (f"size={m.tmpfs_opt.size}",)
            self.mounts.append(ExecMount(m.dest, (Mount("tmpfs", "tmpfs", opts),)))
        elif m.mount_type == MountType.SECRET:
            self._secret(m)
        elif m.mount_type == MountType.SSH:
            self._ssh(m)

    async def _bind(self, m: Any) -> None:
        src = self.ref_of(m.input)
        described = f"mount {m.dest} from exec {' '.join(self.op.meta.args)}"
        if m.dest == "/":
            active = ActiveSnapshot(self.runner, src, self.stack, described)
            if src.path is not None:
                await asyncio.to_thread(active.mount)
                active.unmount()
            self.root = active.mounts
            if m.output != SKIP_OUTPUT:
                self.outputs[m.output] = active
            return
        if m.readonly and m.output == SKIP_OUTPUT:
            path = self.stack.enter_context(read_ref(self.runner.store, src))
        else:
            active = ActiveSnapshot(self.runner, src, self.stack, described)
            path = await asyncio.to_thread(active.mount)
            if m.output != SKIP_OUTPUT:
                self.outputs[m.output] = active
        source = os.path.join(path, m.selector.lstrip("/")) if m.selector else path
        opts = ("rbind", "ro") if m.readonly else ("rbind", "rw")
        self.mounts.append(ExecMount(m.dest, (Mount("bind", source, opts),), m.readonly))

    def _secret(self, m: Any) -> None:
        so = m.secret_opt
        sid = so.id if so is not None else ""
        data = self.runner.session.secrets.get(sid)
        if data is None:
            if so is not None and so.optional:
                return
            raise SolveError(f"secret {sid} not found", vertex=self.vertex.digest)
        self.secrets.append(SecretMount(m.dest, data, uid=so.uid if so else 0,
                                        gid=so.gid if so else 0,
                                        mode=(so.mode if so and so.mode else 0o400)))

    def _ssh(self, m: Any) -> None:
        so = m.ssh_opt
        sid = (so.id if so is not None else "") or "default"
        sock = self.runner.session.ssh.get(sid)
        if sock is None:
            if so is not None and so.optional:
                return
            raise SolveError(f"no SSH key {sid!r} forwarded from the client (--ssh)",
                             vertex=self.vertex.digest)
        self.agents.append(SSHMount(m.dest or DEFAULT_SSH_DEST, sock,
                                    uid=so.uid if so else 0, gid=so.gid if so else 0,
                                    mode=(so.mode if so and so.mode else 0o600)))


async def run_exec(runner: Any, vertex: Vertex, op: ExecOp, inputs: list[Ref],
                   vp: VertexProgress) -> VertexOutcome:
    """Run the exec of ``vertex`` on ``inputs``; its outputs are committed snapshots."""
    if vertex.op.platform is not None:
        check_executable(vertex.op.platform)
    process = process_spec(runner, vertex, op)
    async with contextlib.AsyncExitStack() as astack:
        stack = astack.enter_context(contextlib.ExitStack())
        mounts = _Mounts(runner, vertex, op, inputs, astack, stack, vp)
        for m in op.mounts:
            await mounts.add(m)
        if mounts.root is None:
            raise SolveError(f"{vertex.name}: no root mount", vertex=vertex.digest)
        out = StepLogLimiter(vp, STREAM_STDOUT)
        err = StepLogLimiter(vp, STREAM_STDERR)
        code = await runner.w.executor.run(process, mounts.root, mounts.mounts,
                                           secrets=mounts.secrets, ssh=mounts.agents,
                                           stdout=out.write, stderr=err.write)
        if code not in process.valid_exit_codes:
            raise exit_error(process, code)
        refs = {i: await asyncio.to_thread(a.commit) for i, a in sorted(mounts.outputs.items())}
        return VertexOutcome(refs=refs, cached=False)


async def cache_mount(runner: Any, m: Any, seed: Ref, stack: contextlib.AsyncExitStack,
                      vp: VertexProgress | None = None) -> ExecMount:
    """A cache mount (``--mount=type=cache``): when it is new, filled from an imported cache
    that has it, else seeded from ``seed``."""
    co = m.cache_opt
    cid = m.cache_id
    sharing = CACHE_SHARING[co.sharing if co else CacheSharingOpt.SHARED]
    seed_record = None
    if not seed.is_scratch:
        seed_record = runner.store.get_record(runner.materialize(seed))
    fill = None
    if runner.remote is not None and vp is not None and not runner.store.has_cache_mount(cid):
        # an imported cache mount (--cache-from …,cache-mounts=true) fills a new one
        fill = await runner.remote.cache_mount(cid, runner.content, vp)
    mounts, release = await runner.store.cache_mount(cid, sharing, seed=seed_record,
                                                     seed_path=m.selector or "/", fill=fill)
    stack.callback(release)
    if m.readonly:
        mounts = [evolve(x, options=tuple(o for o in x.options if o != "rw") + ("ro",))
                  for x in mounts]
    return ExecMount(m.dest, tuple(mounts), m.readonly)
