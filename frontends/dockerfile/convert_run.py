"""Dockerfile → LLB: RUN (shell and exec form, heredoc scripts, ``--mount``, ``--network``,
``--security``, proxy build args)."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from pybk.core import llb
from pybk.core.model import evolve
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile.errors import InstructionError
from pybk.frontends.dockerfile.imageconfig import StageState, env_dict
from pybk.frontends.dockerfile.mounts import Mount
from pybk.frontends.dockerfile.stages import StageConverter, Step, located_error

PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")


def _is_bare_heredoc(command: str) -> bool:
    """True when a RUN's command is nothing but one heredoc (its body is the script)."""
    words = command.split()
    return len(words) == 1 and words[0].lstrip("0123456789").startswith("<<")


def _proxy_env(cv: StageConverter, ds: StageState) -> llb.ProxyEnv | None:
    """Proxy build args not declared with ARG: passed to RUN, kept out of the cache key."""
    values = {}
    for key, value in cv.build_args.items():
        if key.upper() in PROXY_ARGS and key not in ds.declared:
            values[key.lower()] = value
    return llb.ProxyEnv(**values) if values else None


def _run(cv: StageConverter, ds: StageState, instruction: ins.RunInstruction, index: int) -> None:
    expander = cv.expander(ds, instruction)
    mounts: list[llb.MountSpec] = []
    if instruction.prepend_shell:
        script = instruction.command[0] if instruction.command else ""  # RUN alone: sh -c ""
        if len(instruction.heredocs) == 1 and _is_bare_heredoc(script):
            heredoc = instruction.heredocs[0]
            if heredoc.body.startswith("#!"):
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", heredoc.name) or "script"
                script_state = llb.scratch().file(llb.mkfile(f"/{name}", 0o755,
                                                             heredoc.body.encode()))
                mounts.append(llb.mount("/dev/pipes", script_state, readonly=True))
                args = [f"/dev/pipes/{name}"]
            else:
                args = [*ds.shell, heredoc.body]
        else:
            for heredoc in instruction.heredocs:
                script += "\n" + heredoc.content + heredoc.name
            args = [*ds.shell, script]
    else:
        args = list(instruction.command)
    env_keys = set(env_dict(ds.config.get("Env") or []))
    run_state = ds.state
    arg_keys = [k for k in ds.declared
                if k in ds.args and (k not in env_keys or k in ds.arg_over_env)]
    for key in arg_keys:
        run_state = run_state.env(key, ds.args[key])
    # environment for this command only (RunInstruction subclasses with ``env`` pairs)
    step_env = [(expander.word(p.key), expander.word(p.value))
                for p in getattr(instruction, "env", ())]
    for key, value in step_env:
        run_state = run_state.env(key, value)
    try:
        specs = instruction.expanded_mounts(expander.word)
    except (InstructionError, ValueError) as err:
        raise located_error(str(err), instruction.location) from None
    secret_env: list[llb.SecretEnv] = []
    ssh_count = 0
    for spec in specs:
        if spec.type == "secret" and spec.env:
            secret_id = spec.cache_id or posixpath.basename(spec.target)
            secret_env.append(llb.SecretEnv(secret_id, spec.env, not spec.required))
            if not spec.target:
                continue
        mount = _mount(cv, ds, spec, index, instruction.location, ssh_count)
        mounts.append(mount)
        if spec.type == "ssh" and not ssh_count:
            run_state = run_state.env("SSH_AUTH_SOCK", mount.dest)
        ssh_count += spec.type == "ssh"
    options: dict[str, Any] = cv.op_opts(ds, instruction, cv.display(ds, instruction))
    if instruction.network:
        options["network"] = {"none": llb.NetMode.NONE, "host": llb.NetMode.HOST}.get(
            instruction.network, llb.NetMode.UNSET)
    if instruction.security == "insecure":
        options["security"] = llb.SecurityMode.INSECURE
    if cv.linux_resources is not None:
        options["linux_resources"] = cv.linux_resources
    try:
        exec_state = run_state.run(args, mounts=mounts, secret_env=secret_env,
                                   proxy_env=_proxy_env(cv, ds), **options)
    except ValueError as err:
        raise located_error(str(err), instruction.location) from None
    state = exec_state.root()
    for key in [*arg_keys, *(k for k, _ in step_env)]:  # the stage's own values again
        previous = ds.state.get_env(key)
        state = state.unset_env(key) if previous is None else state.env(key, previous)
    ds.state = state
    env = ds.env()
    shown = [f"{k}={env[k]}" for k in ds.declared if k in env]
    prefix = [f"|{len(shown)}", *shown] if shown else []
    cv.history(ds, "RUN " + " ".join([*prefix, *args]) + " # buildkit", False)


def _mount(cv: StageConverter, ds: StageState, spec: Mount, index: int, location: ins.Location,
           ssh_index: int) -> llb.MountSpec:
    target = spec.target
    # BuildKit joins a relative target to the workdir; an empty one (a bind, cache or tmpfs
    # mount without target=) is the workdir itself
    if (target or spec.type in ("bind", "cache", "tmpfs")) and not target.startswith("/"):
        target = posixpath.join(ds.state.get_dir(), target)
    if target == "/":
        raise located_error("mount target can not be /", location)
    source_state = None
    if spec.from_:
        source_state, _ = cv.source(spec.from_, index, location)
    selector = posixpath.normpath(posixpath.join("/", spec.source)).lstrip("/")
    if spec.type == "bind":
        if source_state is None:
            source_state = cv.context
            cv.context_paths.add("/" + selector)
        return llb.mount(target, source_state, selector=selector, readonly=spec.read_only)
    if spec.type == "cache":
        sharing = {"locked": llb.CacheSharingOpt.LOCKED,
                   "private": llb.CacheSharingOpt.PRIVATE}.get(spec.sharing,
                                                               llb.CacheSharingOpt.SHARED)
        cache_id = spec.cache_id or posixpath.normpath(target)
        namespace = cv.build_args.get("BUILDKIT_CACHE_MOUNT_NS")
        if namespace:
            cache_id = f"{namespace}/{cache_id}"
        if source_state is None and (spec.mode is not None or spec.uid or spec.gid):
            owner = f"{spec.uid or 0}:{spec.gid or 0}"
            source_state = llb.scratch().file(llb.mkdir(
                "/cache", 0o755 if spec.mode is None else spec.mode, owner=owner))
            selector = "cache"
        elif source_state is None:
            selector = ""
        mount = llb.cache_mount(target, cache_id, sharing=sharing, source=source_state,
                                selector=selector)
        return evolve(mount, readonly=spec.read_only) if spec.read_only else mount
    if spec.type == "tmpfs":
        return llb.tmpfs(target, size=spec.size_limit)
    if spec.type == "secret":
        secret_id = spec.cache_id or posixpath.basename(target)
        dest = target or f"/run/secrets/{secret_id}"
        return llb.secret(dest, secret_id, uid=spec.uid or 0, gid=spec.gid or 0,
                          mode=0o400 if spec.mode is None else spec.mode,
                          optional=not spec.required)
    if spec.type == "ssh":
        return llb.ssh(target or f"/run/buildkit/ssh_agent.{ssh_index}",
                       spec.cache_id or "default", uid=spec.uid or 0, gid=spec.gid or 0,
                       mode=0o600 if spec.mode is None else spec.mode,
                       optional=not spec.required)
    raise located_error(f"unsupported mount type {spec.type!r}", location)


#: keyword → step
STEPS: dict[str, Step] = {"run": _run}
