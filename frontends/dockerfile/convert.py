"""Dockerfile → LLB conversion: stages, instructions, and the image config they produce."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from pybk.core import llb
from pybk.frontends.dockerfile import instructions as ins
from pybk.frontends.dockerfile.errors import DockerfileParseError

DEFAULT_SHELL = ("/bin/sh", "-c")
CONTEXT_NAME = "context"
HISTORY_COMMENT = "buildkit.dockerfile.v0"
_OP_KEYWORDS = ("RUN", "COPY", "ADD", "WORKDIR")


@attrs.frozen
class NamedContext:
    """A named build context: a State and, optionally, the image config it brings."""

    state: llb.State
    image_config: dict | None = None


@attrs.frozen
class ConvertResult:
    state: llb.State
    image_config: dict
    stage_name: str


@attrs.define
class _StageState:
    """What a stage has built so far."""

    state: llb.State
    image: dict
    args: dict[str, str]
    shell: list[str]
    label: str
    total: int
    index: int = 0
    cmd_set: bool = False

    @property
    def config(self) -> dict:
        return self.image["config"]

    def prefix(self, text: str) -> str:
        self.index += 1
        width = len(str(self.total))
        name = f"{self.label} " if self.label else ""
        return f"[{name}{self.index:>{width}d}/{self.total}] {text}"

    def env(self) -> dict[str, str]:
        """The expansion environment: ARGs, overridden by ENV (which includes the image's)."""
        values = dict(self.args)
        values.update(_env_dict(self.config.get("Env") or []))
        return values

    def history(self, created_by: str, empty_layer: bool) -> None:
        entry = {"created_by": created_by, "comment": HISTORY_COMMENT}
        if empty_layer:
            entry["empty_layer"] = True
        self.image.setdefault("history", []).append(entry)


def _env_dict(env: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)


def _set_env(config: dict, key: str, value: str) -> None:
    env = list(config.get("Env") or [])
    for i, item in enumerate(env):
        if item.split("=", 1)[0] == key:
            env[i] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    config["Env"] = env


def _error(message: str, location: ins.Location) -> DockerfileParseError:
    return DockerfileParseError(
        message, filename=location.filename, line=location.start_line, end_line=location.end_line
    )


def _base_image(config: Mapping[str, Any] | None) -> dict:
    """A full image config dict from a resolver's answer (a whole config or its ``config``)."""
    image = copy.deepcopy(dict(config or {}))
    if "config" not in image:
        image = {"config": image}
    image["config"] = dict(image.get("config") or {})
    image["history"] = list(image.get("history") or [])
    if "PATH" not in _env_dict(image["config"].get("Env") or []):
        _set_env(image["config"], "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return image


def _apply_config(state: llb.State, config: dict) -> llb.State:
    for key, value in _env_dict(config.get("Env") or []).items():
        state = state.env(key, value)
    if config.get("WorkingDir"):
        state = state.dir(config["WorkingDir"])
    if config.get("User"):
        state = state.user(config["User"])
    return state


class _Converter:
    def __init__(self, dockerfile: ins.Dockerfile, build_args: Mapping[str, str],
                 named_contexts: Mapping[str, Any],
                 image_resolver: Callable[[str], dict] | None):
        self.df = dockerfile
        self.build_args = dict(build_args)
        self.named_contexts = dict(named_contexts)
        self.image_resolver = image_resolver
        self.done: dict[int, _StageState] = {}
        self.context = llb.local(CONTEXT_NAME, shared_key_hint=CONTEXT_NAME)
        self.multi = len(dockerfile.stages) > 1
        self.global_args = self._global_args()

    def _global_args(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for arg in self.df.meta_args:
            expander = ins.Expander(values, self.df.escape, arg.location)
            for spec in arg.args:
                if spec.key in self.build_args:
                    values[spec.key] = self.build_args[spec.key]
                elif spec.default is not None:
                    values[spec.key] = expander.word(spec.default)
        return values

    # ------------------------------------------------------------------ stage lookup

    def find_stage(self, name: str, before: int) -> ins.Stage | None:
        for stage in self.df.stages[:before]:
            if stage.name == name.lower() or (name.isdigit() and int(name) == stage.index):
                return stage
        return None

    def stage(self, stage: ins.Stage) -> _StageState:
        if stage.index not in self.done:
            self.done[stage.index] = self._convert(stage)
        return self.done[stage.index]

    def source(self, name: str, before: int, location: ins.Location) -> tuple[llb.State, dict | None]:
        """The State (and image config) named by FROM or ``--from``."""
        stage = self.find_stage(name, before)
        if stage is not None:
            built = self.stage(stage)
            return built.state, built.image
        if name in self.named_contexts:
            ctx = self.named_contexts[name]
            if isinstance(ctx, NamedContext):
                return ctx.state, ctx.image_config
            return ctx, None
        try:
            state = llb.image(name)
        except ValueError as err:
            raise _error(f"invalid reference {name!r}: {err}", location) from None
        config = self.image_resolver(name) if self.image_resolver else None
        return state, config

    # ------------------------------------------------------------------ dispatch

    def _convert(self, stage: ins.Stage) -> _StageState:
        frm = stage.from_instruction
        base = ins.Expander(self.global_args, self.df.escape, frm.location).word(frm.base_name)
        if not base:
            raise _error("base name (FROM) should not be blank", frm.location)
        total = 1 + sum(i.keyword.upper() in _OP_KEYWORDS for i in stage.instructions)
        label = (stage.name or f"stage-{stage.index}") if self.multi else ""
        if base == "scratch":
            state, config = llb.scratch(), None
        else:
            state, config = self.source(base, stage.index, frm.location)
        ds = _StageState(state, _base_image(config), {}, [], label, total)
        ds.shell = list(ds.config.get("Shell") or DEFAULT_SHELL)
        name = ds.prefix(f"FROM {base}")
        if base != "scratch" and self.find_stage(base, stage.index) is None \
                and base not in self.named_contexts:
            ds.state = llb.image(base, custom_name=name)
        if config is not None:
            ds.state = _apply_config(ds.state, ds.config)
        elif base == "scratch":
            ds.state = _apply_config(ds.state, ds.config)
        for instruction in stage.instructions:
            handler = getattr(self, f"_do_{instruction.keyword.lower()}")
            handler(ds, instruction, stage.index)
        return ds

    def _expander(self, ds: _StageState, instruction: ins.Instruction) -> ins.Expander:
        return ins.Expander(ds.env(), self.df.escape, instruction.location)

    def _display(self, ds: _StageState, instruction: ins.Instruction) -> str:
        keyword, _, rest = instruction.original.partition(" ")
        try:
            rest = ins.Expander(ds.env(), self.df.escape).word(rest)
        except Exception:  # noqa: BLE001 - display only; keep the text as written
            pass
        return f"{keyword.upper()} {rest}".strip()

    def _do_arg(self, ds: _StageState, instruction: ins.ArgInstruction, _: int) -> None:
        for spec in instruction.args:
            if spec.key in self.build_args:
                ds.args[spec.key] = self.build_args[spec.key]
            elif spec.default is not None:
                ds.args[spec.key] = self._expander(ds, instruction).word(spec.default)
            elif spec.key in self.global_args:
                ds.args[spec.key] = self.global_args[spec.key]

    def _do_env(self, ds: _StageState, instruction: ins.EnvInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        pairs = [(expander.word(p.key), expander.word(p.value)) for p in instruction.pairs]
        for key, value in pairs:
            _set_env(ds.config, key, value)
            ds.state = ds.state.env(key, value)
        ds.history(" ".join(["ENV"] + [f"{k}={v}" for k, v in pairs]), True)

    def _do_label(self, ds: _StageState, instruction: ins.LabelInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        labels = dict(ds.config.get("Labels") or {})
        pairs = [(expander.word(p.key), expander.word(p.value)) for p in instruction.pairs]
        labels.update(pairs)
        ds.config["Labels"] = labels
        ds.history(" ".join(["LABEL"] + [f"{k}={v}" for k, v in pairs]), True)

    def _do_maintainer(self, ds: _StageState, instruction: ins.MaintainerInstruction, _: int) -> None:
        ds.image["author"] = instruction.maintainer
        ds.history(f"MAINTAINER {instruction.maintainer}", True)

    def _do_expose(self, ds: _StageState, instruction: ins.ExposeInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        ports = dict(ds.config.get("ExposedPorts") or {})
        added = []
        for word in instruction.ports:
            for port in expander.words(word):
                key = port if "/" in port else f"{port}/tcp"
                ports[key.lower()] = {}
                added.append(key.lower())
        ds.config["ExposedPorts"] = ports
        ds.history("EXPOSE " + " ".join(added), True)

    def _do_volume(self, ds: _StageState, instruction: ins.VolumeInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        volumes = dict(ds.config.get("Volumes") or {})
        paths = [expander.word(v) for v in instruction.volumes]
        for path in paths:
            if not path:
                raise _error("VOLUME specified can not be an empty string", instruction.location)
            volumes[path] = {}
        ds.config["Volumes"] = volumes
        ds.history("VOLUME " + str(paths), True)

    def _do_stopsignal(self, ds: _StageState, instruction: ins.StopsignalInstruction, _: int) -> None:
        signal = self._expander(ds, instruction).word(instruction.signal)
        try:
            ins.parse_signal(signal)
        except ins.InstructionError as err:
            raise _error(str(err), instruction.location) from None
        ds.config["StopSignal"] = signal
        ds.history(f"STOPSIGNAL {signal}", True)

    def _do_healthcheck(self, ds: _StageState, instruction: ins.HealthcheckInstruction, _: int) -> None:
        check: dict[str, Any] = {"Test": list(instruction.test)}
        for field, value in [("Interval", instruction.interval), ("Timeout", instruction.timeout),
                             ("StartPeriod", instruction.start_period),
                             ("StartInterval", instruction.start_interval),
                             ("Retries", instruction.retries)]:
            if value:
                check[field] = value
        ds.config["Healthcheck"] = check
        ds.history(f"HEALTHCHECK {check['Test']}", True)

    def _command(self, ds: _StageState, command: tuple[str, ...], prepend_shell: bool) -> list[str]:
        return [*ds.shell, command[0]] if prepend_shell else list(command)

    def _do_cmd(self, ds: _StageState, instruction: ins.CmdInstruction, _: int) -> None:
        ds.config["Cmd"] = self._command(ds, instruction.command, instruction.prepend_shell)
        ds.cmd_set = True
        ds.history(f"CMD {ds.config['Cmd']}", True)

    def _do_entrypoint(self, ds: _StageState, instruction: ins.EntrypointInstruction, _: int) -> None:
        ds.config["Entrypoint"] = self._command(ds, instruction.command, instruction.prepend_shell)
        if not ds.cmd_set:
            ds.config.pop("Cmd", None)
        ds.history(f"ENTRYPOINT {ds.config['Entrypoint']}", True)

    def _do_shell(self, ds: _StageState, instruction: ins.ShellInstruction, _: int) -> None:
        ds.shell = list(instruction.shell)
        ds.config["Shell"] = list(instruction.shell)
        ds.history(f"SHELL {ds.shell}", True)

    def _do_onbuild(self, ds: _StageState, instruction: ins.OnbuildInstruction, _: int) -> None:
        ds.config["OnBuild"] = [*(ds.config.get("OnBuild") or []), instruction.expression]
        ds.history(f"ONBUILD {instruction.expression}", True)

    def _do_user(self, ds: _StageState, instruction: ins.UserInstruction, _: int) -> None:
        user = self._expander(ds, instruction).word(instruction.user)
        ds.state = ds.state.user(user)
        ds.config["User"] = user
        ds.history(f"USER {user}", True)

    def _do_workdir(self, ds: _StageState, instruction: ins.WorkdirInstruction, _: int) -> None:
        path = self._expander(ds, instruction).word(instruction.path)
        ds.state = ds.state.dir(path)
        workdir = ds.state.get_dir()
        ds.config["WorkingDir"] = workdir
        user = ds.state.get_user()
        ds.state = ds.state.file(
            llb.mkdir(workdir, 0o755, make_parents=True, owner=user or None),
            custom_name=ds.prefix(f"WORKDIR {workdir}"),
        )
        ds.history(f"WORKDIR {workdir}", False)

    # ------------------------------------------------------------------ RUN

    def _do_run(self, ds: _StageState, instruction: ins.RunInstruction, index: int) -> None:
        expander = self._expander(ds, instruction)
        if instruction.prepend_shell:
            script = instruction.command[0]
            for heredoc in instruction.heredocs:
                script += "\n" + heredoc.content + heredoc.name
            args = [*ds.shell, script]
        else:
            args = list(instruction.command)
        env_keys = set(_env_dict(ds.config.get("Env") or []))
        run_state = ds.state
        arg_keys = [k for k in ds.args if k not in env_keys]
        for key in arg_keys:
            run_state = run_state.env(key, ds.args[key])
        try:
            specs = instruction.expanded_mounts(expander.word)
        except ins.InstructionError as err:
            raise _error(str(err), instruction.location) from None
        mounts = [self._mount(ds, spec, index, instruction.location) for spec in specs]
        options: dict[str, Any] = {}
        if instruction.network:
            options["network"] = {"none": llb.NetMode.NONE, "host": llb.NetMode.HOST}.get(
                instruction.network, llb.NetMode.UNSET)
        if instruction.security == "insecure":
            options["security"] = llb.SecurityMode.INSECURE
        exec_state = run_state.run(
            args, mounts=mounts, custom_name=ds.prefix(self._display(ds, instruction)), **options
        )
        state = exec_state.root()
        for key in arg_keys:
            state = state.unset_env(key)
        ds.state = state
        ds.history("RUN " + " ".join(args) + " # buildkit", False)

    def _mount(self, ds: _StageState, spec: ins.Mount, index: int,
               location: ins.Location) -> llb.MountSpec:
        target = spec.target
        if target and not target.startswith("/"):
            target = posixpath.join(ds.state.get_dir(), target)
        source_state = None
        if spec.from_:
            source_state, _ = self.source(spec.from_, index, location)
        if spec.type == "bind":
            selector = posixpath.normpath(posixpath.join("/", spec.source)).lstrip("/")
            return llb.mount(target, source_state if source_state is not None else self.context,
                             selector=selector, readonly=spec.read_only)
        if spec.type == "cache":
            sharing = {"locked": llb.CacheSharingOpt.LOCKED,
                       "private": llb.CacheSharingOpt.PRIVATE}.get(spec.sharing,
                                                                   llb.CacheSharingOpt.SHARED)
            selector = spec.source.lstrip("/") if source_state is not None else ""
            return llb.cache_mount(target, spec.cache_id or target, sharing=sharing,
                                   source=source_state, selector=selector)
        if spec.type == "tmpfs":
            return llb.tmpfs(target, size=spec.size_limit)
        if spec.type == "secret":
            secret_id = spec.cache_id or posixpath.basename(target)
            dest = target or f"/run/secrets/{secret_id}"
            return llb.secret(dest, secret_id, uid=spec.uid or 0, gid=spec.gid or 0,
                              mode=0o400 if spec.mode is None else spec.mode,
                              optional=not spec.required)
        if spec.type == "ssh":
            return llb.ssh(target or "/run/buildkit/ssh_agent.0", spec.cache_id or "default",
                           uid=spec.uid or 0, gid=spec.gid or 0,
                           mode=0o600 if spec.mode is None else spec.mode,
                           optional=not spec.required)
        raise _error(f"unsupported mount type {spec.type!r}", location)

    # ------------------------------------------------------------------ COPY / ADD

    def _do_copy(self, ds: _StageState, instruction: ins.CopyInstruction, index: int) -> None:
        self._copy(ds, instruction, index, instruction.from_)

    def _do_add(self, ds: _StageState, instruction: ins.AddInstruction, index: int) -> None:
        self._copy(ds, instruction, index, "")

    def _copy(self, ds: _StageState, instruction: Any, index: int, from_: str) -> None:
        expander = self._expander(ds, instruction)
        is_add = instruction.keyword.upper() == "ADD"
        dest_word = expander.word(instruction.dest)
        dest = posixpath.join(ds.state.get_dir(), dest_word)
        if dest_word in ("", ".") or dest_word.endswith("/"):
            dest = dest.rstrip("/") + "/"
        info: dict[str, Any] = {
            "follow_symlink": True, "dir_copy_contents": True, "create_dest_path": True,
            "allow_wildcard": True, "allow_empty_wildcard": True,
            "attempt_unpack_docker_compatibility": is_add,
        }
        if instruction.chown:
            info["owner"] = expander.word(instruction.chown)
        if instruction.chmod:
            chmod = expander.word(instruction.chmod)
            try:
                info["mode"] = int(chmod, 8)
            except ValueError:
                raise _error(f"invalid chmod parameter: {chmod}", instruction.location) from None
        if instruction.excludes:
            info["exclude_patterns"] = [expander.word(e) for e in instruction.excludes]
        source = self.context
        if from_:
            source, _ = self.source(expander.word(from_), index, instruction.location)
        chain: llb.FileChain | None = None
        for src in instruction.sources:
            path = expander.word(src)
            if is_add and path.startswith(("http://", "https://")):
                filename = posixpath.basename(path.rstrip("/")) or "index.html"
                src_state, src_path = llb.http(path, filename=filename), f"/{filename}"
            else:
                src_state, src_path = source, posixpath.join("/", path)
            step = llb.copy(src_state, src_path, dest, **info)
            chain = step if chain is None else chain.copy(src_state, src_path, dest, **info)
        for content in instruction.source_contents:
            data = expander.word(content.data) if content.expand else content.data
            file_state = llb.scratch().file(llb.mkfile(content.path, 0o644, data.encode()))
            args = (file_state, f"/{content.path}", dest)
            chain = llb.copy(*args, **info) if chain is None else chain.copy(*args, **info)
        if chain is None:
            raise _error(f"{instruction.keyword.upper()} requires at least two arguments",
                         instruction.location)
        ds.state = ds.state.file(chain, custom_name=ds.prefix(self._display(ds, instruction)))
        ds.history(f"{instruction.keyword.upper()} {' '.join(instruction.sources)} {dest} "
                   "# buildkit", False)


def dockerfile_to_llb(
    data: bytes,
    *,
    filename: str = "Dockerfile",
    target: str | None = None,
    build_args: Mapping[str, str] = {},  # noqa: B006 - read only
    named_contexts: Mapping[str, NamedContext | llb.State] = {},  # noqa: B006 - read only
    image_resolver: Callable[[str], dict] | None = None,
) -> ConvertResult:
    """Convert a Dockerfile into the LLB State of ``target`` (default: the last stage).

    ``named_contexts`` map a name used by FROM/``--from`` to a State or a :class:`NamedContext`;
    ``image_resolver(ref)`` supplies the image config of a base image. Only the stages the
    target needs are part of the graph.
    """
    dockerfile = ins.parse_dockerfile(data, filename)
    if not dockerfile.stages:
        raise DockerfileParseError("the Dockerfile has no FROM instruction", filename=filename)
    if target:
        try:
            stage = dockerfile.stage(target)
        except KeyError:
            raise DockerfileParseError(
                f'target stage "{target}" could not be found', filename=filename
            ) from None
    else:
        stage = dockerfile.stages[-1]
    converter = _Converter(dockerfile, build_args, named_contexts, image_resolver)
    built = converter.stage(stage)
    return ConvertResult(built.state, built.image, stage.name or f"stage-{stage.index}")
