"""Dockerfile → LLB conversion: stages, instructions, and the image config they produce."""

from __future__ import annotations

import contextlib
import copy
import datetime
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from pybk.core import llb
from pybk.core.errors import InputError, PybkError
from pybk.frontends.dockerfile import instructions as ins
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.shell import ShellExpansionError

DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTEXT_NAME = "context"
HISTORY_COMMENT = "buildkit.dockerfile.v0"
COMMAND_DESCRIPTION = "com.docker.dockerfile.v1.command"
_OP_KEYWORDS = ("RUN", "COPY", "ADD", "WORKDIR")
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
#: build args that are never reported as unused
_BUILTIN_ARGS = frozenset({
    "SOURCE_DATE_EPOCH", "BUILDKIT_SYNTAX", "BUILDKIT_INLINE_CACHE", "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_CACHE_MOUNT_NS", "BUILDKIT_SANDBOX_HOSTNAME", "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_DOCKERFILE_CHECK", "BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE",
    "BUILDKIT_BUILD_NAME",
})
_GIT_HTTP = re.compile(r"^https?://[^#?]+\.git(?:[#?].*)?$")


@attrs.frozen
class NamedContext:
    """A named build context: a State and, optionally, the image config it brings.

    ``stage`` set instead (``context:NAME=target:STAGE``) makes NAME an alias of that stage.
    """

    state: llb.State | None = None
    image_config: dict | None = None
    stage: str | None = None


@attrs.frozen
class ConvertResult:
    state: llb.State
    image_config: dict
    stage_name: str
    #: paths of the build context the build reads (None: all of it)
    context_paths: tuple[str, ...] | None = None


def predefined_args(target: llb.Platform, build: llb.Platform,
                    target_stage: str = "default") -> dict[str, str]:
    """The platform ARGs every Dockerfile may declare without a value."""
    values = {"TARGETSTAGE": target_stage}
    for prefix, platform in (("BUILD", build), ("TARGET", target)):
        values.update({
            f"{prefix}PLATFORM": str(platform), f"{prefix}OS": platform.os,
            f"{prefix}ARCH": platform.architecture, f"{prefix}VARIANT": platform.variant,
            f"{prefix}OSVERSION": platform.os_version,
        })
    return values


def go_quote_list(values: Iterable[str]) -> str:
    """A string list as Go's ``%q`` prints it: ``["a" "b"]``."""
    import json

    return "[" + " ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


def _go_duration(ns: int) -> str:
    """Go's ``time.Duration.String`` for the whole-millisecond values HEALTHCHECK allows."""
    if ns == 0:
        return "0s"
    seconds, rest = divmod(ns, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if not hours and not minutes and not seconds:
        return f"{rest / 1_000_000:g}ms"
    frac = f"{rest / 1e9:.9f}"[1:].rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    out += f"{minutes}m" if hours or minutes else ""
    return out + f"{seconds}{frac}s"


@attrs.define
class _StageState:
    """What a stage has built so far."""

    state: llb.State
    image: dict
    args: dict[str, str]
    shell: list[str]
    label: str
    total: int
    platform: llb.Platform
    ignore_cache: bool = False
    declared: list[str] = attrs.field(factory=list)
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

    def history(self, created_by: str, empty_layer: bool, created: str | None = None) -> None:
        entry: dict[str, Any] = {"created_by": created_by, "comment": HISTORY_COMMENT}
        if created:
            entry["created"] = created
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


def _is_bare_heredoc(command: str) -> bool:
    """True when a RUN's command is nothing but one heredoc (its body is the script)."""
    words = command.split()
    return len(words) == 1 and words[0].lstrip("0123456789").startswith("<<")


def _error(message: str, location: ins.Location) -> DockerfileParseError:
    return DockerfileParseError(
        message, filename=location.filename, line=location.start_line, end_line=location.end_line
    )


def _config_platform(config: Mapping[str, Any] | None) -> llb.Platform | None:
    """The platform an image config declares (None when it declares none)."""
    if not config or not config.get("architecture") or not config.get("os"):
        return None
    return llb.Platform(os=config["os"], architecture=config["architecture"],
                        variant=config.get("variant") or "")


def _same_platform(a: llb.Platform, b: llb.Platform) -> bool:
    """Platforms equal once arm64's default variant (v8) is normalised away."""
    def key(p: llb.Platform) -> tuple[str, str, str]:
        variant = p.variant or ""
        if p.architecture == "arm64" and variant == "v8":
            variant = ""
        return p.os, p.architecture, variant
    return key(a) == key(b) or (key(a)[:2] == key(b)[:2] and not (a.variant and b.variant))


def _base_image(config: Mapping[str, Any] | None, platform: llb.Platform) -> dict:
    """A full image config dict from a resolver's answer (a whole config or its ``config``)."""
    image = copy.deepcopy(dict(config or {}))
    if "config" not in image:
        image = {"config": image}
    image["config"] = dict(image.get("config") or {})
    image["history"] = list(image.get("history") or [])
    image.setdefault("architecture", platform.architecture)
    image.setdefault("os", platform.os)
    if platform.variant and image["architecture"] == platform.architecture:
        image.setdefault("variant", platform.variant)
    image.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    if "PATH" not in _env_dict(image["config"].get("Env") or []):
        _set_env(image["config"], "PATH", DEFAULT_PATH)
    return image


def _apply_config(state: llb.State, config: dict) -> llb.State:
    for key, value in _env_dict(config.get("Env") or []).items():
        state = state.env(key, value)
    if config.get("WorkingDir"):
        state = state.dir(config["WorkingDir"])
    if config.get("User"):
        state = state.user(config["User"])
    return state


def _scratch_like(state: llb.State) -> llb.State:
    """An empty filesystem with ``state``'s working directory, user and platform."""
    return llb.State(None, state._meta)


def split_wildcards(path: str) -> tuple[str, str]:
    """``(directory without wildcards, the rest)``; the rest is empty without wildcards."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            break
        i += 1
    if i >= len(path):
        return path, ""
    head = path[:i]
    base = "" if not head or head.endswith("/") else posixpath.basename(head)
    return posixpath.dirname(head), base + path[i:]


def parse_git_ref(url: str) -> tuple[str, str | None, str | None, dict[str, str]] | None:
    """``(remote, ref, subdir, query options)`` when ``url`` names a git repository."""
    if not (url.startswith(("git@", "git://", "ssh://", "github.com/")) or _GIT_HTTP.match(url)):
        return None
    remote, _, fragment = url.partition("#")
    query: dict[str, str] = {}
    if "?" in remote:
        remote, _, qs = remote.partition("?")
        query = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
    if remote.startswith("github.com/"):
        remote = "https://" + remote
    ref, _, subdir = fragment.partition(":")
    ref = ref or query.get("ref") or query.get("tag") or query.get("branch") or None
    subdir = subdir or query.get("subdir") or None
    return remote, ref, subdir, query


class _Converter:
    def __init__(self, dockerfile: ins.Dockerfile, data: bytes, build_args: Mapping[str, str],
                 named_contexts: Mapping[str, Any],
                 image_resolver: Callable[[str, str | None], dict | None] | None,
                 target_platform: llb.Platform, build_platform: llb.Platform,
                 target_stage: str, context: Callable[[], llb.State],
                 no_cache_stages: frozenset[str] | None, extra_hosts: Mapping[str, str],
                 network_mode: str | None, language: str = "Dockerfile",
                 implicit_platform: bool = False):
        self.df = dockerfile
        #: no target platform was asked for: a base image of another platform this host can
        #: run sets its stage's platform (BuildKit's auto-detection)
        self.implicit_platform = implicit_platform
        #: build-check findings only the conversion can see (InvalidBaseImagePlatform)
        self.findings: list[Any] = []
        self.build_args = dict(build_args)
        self.named_contexts = dict(named_contexts)
        for key, value in named_contexts.items():
            with contextlib.suppress(ValueError, InputError):
                self.named_contexts.setdefault(llb.normalize_image_ref(key), value)
        self.image_resolver = image_resolver
        self.target_platform = target_platform
        self.context = context()
        self.no_cache_stages = no_cache_stages
        self.extra_hosts = dict(extra_hosts)
        self.network_mode = network_mode
        self.source_info = llb.SourceInfo(dockerfile.filename, data, language)
        self.done: dict[int, _StageState] = {}
        self.in_progress: set[int] = set()
        self.context_paths: set[str] = set()
        self.consumed: set[str] = set()
        self.resolved: dict[tuple[str, str], dict | None] = {}
        self.multi = len(dockerfile.stages) > 1
        self.predefined = predefined_args(target_platform, build_platform, target_stage)
        epoch = self.build_args.get("SOURCE_DATE_EPOCH")
        self.created: str | None = None
        if epoch:
            try:
                moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
            except (ValueError, OverflowError):
                raise DockerfileParseError(f"invalid SOURCE_DATE_EPOCH: {epoch!r}",
                                           filename=dockerfile.filename) from None
            self.created = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.global_args = self._global_args()

    def _global_args(self) -> dict[str, str]:
        values = {k: self.build_args.get(k, v) for k, v in self.predefined.items()}
        for arg in self.df.meta_args:
            expander = ins.Expander(values, self.df.escape, arg.location)
            for spec in arg.args:
                self.consumed.add(spec.key)
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
            if stage.index in self.in_progress:
                raise _error("circular dependency detected on stage: "
                             f"{stage.name or stage.index}", stage.from_instruction.location)
            self.in_progress.add(stage.index)
            self.done[stage.index] = self._convert(stage)
        return self.done[stage.index]

    def resolve_image(self, ref: str, platform: llb.Platform | None) -> dict | None:
        key = (ref, str(platform or ""))
        if key not in self.resolved:
            self.resolved[key] = (self.image_resolver(ref, str(platform) if platform else None)
                                  if self.image_resolver else None)
        return self.resolved[key]

    def _base_kind(self, name: str, before: int) -> str | None:
        """``image`` when FROM ``name`` names a registry image, ``context`` for a named context
        that is an image, None for scratch, a stage or a context of another kind."""
        ctx = self.named_contexts.get(name)
        if ctx is None:
            with contextlib.suppress(ValueError, InputError):
                ctx = self.named_contexts.get(llb.normalize_image_ref(name))
        if ctx is not None:
            image = isinstance(ctx, NamedContext) and ctx.stage is None and bool(ctx.image_config)
            return "context" if image else None
        if name == "scratch" or self.find_stage(name, before) is not None:
            return None
        return "image"

    def _base_platform(self, name: str, config: Mapping[str, Any] | None,
                       expected: llb.Platform, frm: Any, *,
                       may_detect: bool) -> llb.Platform | None:
        """A base image whose config names another platform: with no target platform asked
        for and an image this host can run, that platform (None otherwise, after recording an
        InvalidBaseImagePlatform finding)."""
        from pybk.frontends.dockerfile.checks import base_image_platform_warning

        actual = _config_platform(config)
        if actual is None or _same_platform(actual, expected):
            return None
        if may_detect and self.implicit_platform and not frm.platform:
            from pybk.core.platform import can_execute

            if can_execute(actual):
                return actual
        self.findings.append(base_image_platform_warning(
            name, str(expected), str(actual), frm.location))
        return None

    def source(self, name: str, before: int, location: ins.Location,
               platform: llb.Platform | None = None,
               custom_name: str | None = None) -> tuple[llb.State, dict | None]:
        """The State (and image config) named by FROM, ``--from`` or ``--mount from=``."""
        ctx = self.named_contexts.get(name)
        if ctx is None and self.find_stage(name, before) is None:
            with contextlib.suppress(ValueError, InputError):
                ctx = self.named_contexts.get(llb.normalize_image_ref(name))
        if ctx is None:
            stage = self.find_stage(name, before)
            if stage is not None:
                built = self.stage(stage)
                return built.state, built.image
        elif isinstance(ctx, NamedContext) and ctx.stage is not None:
            stage = self.find_stage(ctx.stage, len(self.df.stages))
            if stage is None:
                raise _error(f'target stage "{ctx.stage}" could not be found', location)
            built = self.stage(stage)
            return built.state, built.image
        elif isinstance(ctx, NamedContext):
            return ctx.state or llb.scratch(), ctx.image_config
        else:
            return ctx, None
        if name == "scratch":
            return llb.scratch(), None
        try:
            state = llb.image(name, platform=platform, **self._loc_opts(location, custom_name))
        except (ValueError, InputError) as err:
            raise _error(f"invalid reference {name!r}: {err}", location) from None
        try:
            return state, self.resolve_image(name, platform)
        except PybkError as err:
            raise _error(f"failed to resolve source metadata for {name}: {err}", location) from None

    # ------------------------------------------------------------------ dispatch

    def _loc_opts(self, location: ins.Location, custom_name: str | None = None) -> dict:
        options: dict[str, Any] = {"location": llb.SourceLocation(self.source_info, (
            llb.Range(llb.Position(location.start_line), llb.Position(location.end_line)),))}
        if custom_name is not None:
            options["custom_name"] = custom_name
        return options

    def _op_opts(self, ds: _StageState, instruction: ins.Instruction, name: str) -> dict:
        options = self._loc_opts(instruction.location, ds.prefix(name))
        options["description"] = {COMMAND_DESCRIPTION: instruction.original}
        if ds.ignore_cache:
            options["ignore_cache"] = True
        return options

    def _convert(self, stage: ins.Stage) -> _StageState:
        frm = stage.from_instruction
        expander = ins.Expander(self.global_args, self.df.escape, frm.location)
        base = expander.word(frm.base_name)
        if not base:
            raise _error("base name (FROM) should not be blank", frm.location)
        platform = self.target_platform
        if frm.platform:
            spec = expander.word(frm.platform)
            try:
                platform = llb.Platform.parse(spec)
            except Exception as err:
                raise _error(f"failed to parse platform {spec}: {err}", frm.location) from None
        total = 1 + sum(i.keyword.upper() in _OP_KEYWORDS for i in stage.instructions)
        label = (stage.name or f"stage-{stage.index}") if self.multi else ""
        ds = _StageState(llb.scratch(), {}, {}, [], label, total, platform)
        ds.ignore_cache = self.no_cache_stages is not None and (
            not self.no_cache_stages or (stage.name or "") in self.no_cache_stages)
        width = len(str(total))
        name = f"[{label + ' ' if label else ''}{1:>{width}d}/{total}] FROM {base}"
        state, config = self.source(base, stage.index, frm.location, platform, name)
        kind = self._base_kind(base, stage.index)
        if kind is not None:
            detected = self._base_platform(base, config, platform, frm,
                                           may_detect=kind == "image")
            if detected is not None:
                platform = ds.platform = detected
                state, config = self.source(base, stage.index, frm.location, platform, name)
        ds.state = state.platform(platform) if frm.platform else state
        ds.image = _base_image(config, platform)
        ds.index = 1
        ds.shell = list(ds.config.get("Shell") or DEFAULT_SHELL)
        ds.state = _apply_config(ds.state, ds.config)
        hostname = self.build_args.get("BUILDKIT_SANDBOX_HOSTNAME")
        if hostname:
            ds.state = ds.state.hostname(hostname)
        for host, ip in self.extra_hosts.items():
            ds.state = ds.state.add_extra_host(host, ip)
        if self.network_mode:
            ds.state = ds.state.network(
                {"none": llb.NetMode.NONE, "host": llb.NetMode.HOST}[self.network_mode])
        if self.created:
            ds.image["created"] = self.created
        triggers = list(ds.config.pop("OnBuild", None) or [])
        if triggers:
            self._onbuild_triggers(ds, triggers, stage.index, frm.location)
        for instruction in stage.instructions:
            self._dispatch(ds, instruction, stage.index)
        return ds

    def _dispatch(self, ds: _StageState, instruction: ins.Instruction, index: int) -> None:
        handler = getattr(self, f"_do_{instruction.keyword.lower()}")
        handler(ds, instruction, index)

    def _onbuild_triggers(self, ds: _StageState, triggers: list[str], index: int,
                          location: ins.Location) -> None:
        """Run the base image's ONBUILD triggers right after FROM (located at the FROM line)."""
        text = "FROM scratch\n" + "\n".join(triggers) + "\n"
        try:
            parsed = ins.parse_dockerfile(text, self.df.filename)
        except DockerfileParseError as err:
            raise _error(f"invalid ONBUILD trigger: {err.message}", location) from None
        ds.total += len([i for i in parsed.stages[0].instructions
                         if i.keyword.upper() in _OP_KEYWORDS])
        for instruction in parsed.stages[0].instructions:
            self._dispatch(ds, attrs.evolve(instruction, location=location), index)

    def _expander(self, ds: _StageState, instruction: ins.Instruction) -> ins.Expander:
        return ins.Expander(ds.env(), self.df.escape, instruction.location)

    def _display(self, ds: _StageState, instruction: ins.Instruction) -> str:
        keyword, _, rest = instruction.original.partition(" ")
        with contextlib.suppress(ShellExpansionError, DockerfileParseError):
            rest = ins.Expander(ds.env(), self.df.escape).word(rest)  # display only
        return f"{keyword.upper()} {rest}".strip()

    def _history(self, ds: _StageState, text: str, empty_layer: bool) -> None:
        ds.history(text, empty_layer, self.created)

    def _do_arg(self, ds: _StageState, instruction: ins.ArgInstruction, _: int) -> None:
        shown = []
        for spec in instruction.args:
            self.consumed.add(spec.key)
            default = None
            if spec.default is not None:
                default = self._expander(ds, instruction).word(spec.default)
            if spec.key in self.build_args:
                ds.args[spec.key] = self.build_args[spec.key]
            elif default is not None:
                ds.args[spec.key] = default
            elif spec.key in self.global_args:
                ds.args[spec.key] = self.global_args[spec.key]
            if spec.key not in ds.declared:
                ds.declared.append(spec.key)
            shown.append(spec.key if default is None else f"{spec.key}={default}")
        self._history(ds, "ARG " + " ".join(shown), True)

    def _do_env(self, ds: _StageState, instruction: ins.EnvInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        pairs = [(expander.word(p.key), expander.word(p.value)) for p in instruction.pairs]
        for key, value in pairs:
            _set_env(ds.config, key, value)
            ds.state = ds.state.env(key, value)
        self._history(ds, " ".join(["ENV"] + [f"{k}={v}" for k, v in pairs]), True)

    def _do_label(self, ds: _StageState, instruction: ins.LabelInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        labels = dict(ds.config.get("Labels") or {})
        pairs = [(expander.word(p.key), expander.word(p.value)) for p in instruction.pairs]
        labels.update(pairs)
        ds.config["Labels"] = labels
        self._history(ds, " ".join(["LABEL"] + [f"{k}={v}" for k, v in pairs]), True)

    def _do_maintainer(self, ds: _StageState, instruction: ins.MaintainerInstruction, _: int) -> None:
        ds.image["author"] = instruction.maintainer
        self._history(ds, f"MAINTAINER {instruction.maintainer}", True)

    def _do_expose(self, ds: _StageState, instruction: ins.ExposeInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        ports = dict(ds.config.get("ExposedPorts") or {})
        added: dict[str, dict] = {}
        for word in instruction.ports:
            for port in expander.words(word):
                key = (port if "/" in port else f"{port}/tcp").lower()
                ports[key] = {}
                added[key] = {}
        ds.config["ExposedPorts"] = ports
        self._history(ds, "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(added)) + "]",
                      True)

    def _do_volume(self, ds: _StageState, instruction: ins.VolumeInstruction, _: int) -> None:
        expander = self._expander(ds, instruction)
        volumes = dict(ds.config.get("Volumes") or {})
        paths = [expander.word(v) for v in instruction.volumes]
        for path in paths:
            if not path:
                raise _error("VOLUME specified can not be an empty string", instruction.location)
            volumes[path] = {}
        ds.config["Volumes"] = volumes
        self._history(ds, "VOLUME [" + " ".join(paths) + "]", True)

    def _do_stopsignal(self, ds: _StageState, instruction: ins.StopsignalInstruction, _: int) -> None:
        signal = self._expander(ds, instruction).word(instruction.signal)
        try:
            ins.parse_signal(signal)
        except ins.InstructionError as err:
            raise _error(str(err), instruction.location) from None
        ds.config["StopSignal"] = signal
        self._history(ds, f"STOPSIGNAL {signal}", True)

    def _do_healthcheck(self, ds: _StageState, instruction: ins.HealthcheckInstruction, _: int) -> None:
        check: dict[str, Any] = {"Test": list(instruction.test)}
        durations = [("Interval", instruction.interval), ("Timeout", instruction.timeout),
                     ("StartPeriod", instruction.start_period),
                     ("StartInterval", instruction.start_interval)]
        for field, value in [*durations, ("Retries", instruction.retries)]:
            if value:
                check[field] = value
        ds.config["Healthcheck"] = check
        shown = " ".join(f'"{_go_duration(v)}"' for _, v in durations)
        self._history(ds, f"HEALTHCHECK &{{{go_quote_list(check['Test'])} {shown} "
                          f"'\\x{instruction.retries:02x}'}}", True)

    def _command(self, ds: _StageState, command: tuple[str, ...], prepend_shell: bool) -> list[str]:
        return [*ds.shell, command[0]] if prepend_shell else list(command)

    def _do_cmd(self, ds: _StageState, instruction: ins.CmdInstruction, _: int) -> None:
        ds.config["Cmd"] = self._command(ds, instruction.command, instruction.prepend_shell)
        ds.cmd_set = True
        self._history(ds, f"CMD {go_quote_list(ds.config['Cmd'])}", True)

    def _do_entrypoint(self, ds: _StageState, instruction: ins.EntrypointInstruction, _: int) -> None:
        ds.config["Entrypoint"] = self._command(ds, instruction.command, instruction.prepend_shell)
        if not ds.cmd_set:
            ds.config.pop("Cmd", None)
        self._history(ds, f"ENTRYPOINT {go_quote_list(ds.config['Entrypoint'])}", True)

    def _do_shell(self, ds: _StageState, instruction: ins.ShellInstruction, _: int) -> None:
        ds.shell = list(instruction.shell)
        ds.config["Shell"] = list(instruction.shell)
        self._history(ds, "SHELL [" + " ".join(ds.shell) + "]", True)

    def _do_onbuild(self, ds: _StageState, instruction: ins.OnbuildInstruction, _: int) -> None:
        ds.config["OnBuild"] = [*(ds.config.get("OnBuild") or []), instruction.expression]

    def _do_user(self, ds: _StageState, instruction: ins.UserInstruction, _: int) -> None:
        user = self._expander(ds, instruction).word(instruction.user)
        ds.state = ds.state.user(user)
        ds.config["User"] = user
        self._history(ds, f"USER {user}", True)

    def _do_workdir(self, ds: _StageState, instruction: ins.WorkdirInstruction, _: int) -> None:
        path = self._expander(ds, instruction).word(instruction.path)
        ds.state = ds.state.dir(path)
        workdir = ds.state.get_dir()
        ds.config["WorkingDir"] = workdir
        if workdir == "/":
            self._history(ds, f"WORKDIR {workdir}", True)
            return
        user = ds.state.get_user()
        ds.state = ds.state.file(
            llb.mkdir(workdir, 0o755, make_parents=True, owner=user or None),
            **self._op_opts(ds, instruction, self._display(ds, instruction)),
        )
        self._history(ds, f"WORKDIR {workdir}", False)

    # ------------------------------------------------------------------ RUN

    def _proxy_env(self, ds: _StageState) -> llb.ProxyEnv | None:
        """Proxy build args not declared with ARG: passed to RUN, kept out of the cache key."""
        values = {}
        for key, value in self.build_args.items():
            if key.upper() in PROXY_ARGS and key not in ds.declared:
                values[key.lower()] = value
        return llb.ProxyEnv(**values) if values else None

    def _do_run(self, ds: _StageState, instruction: ins.RunInstruction, index: int) -> None:
        expander = self._expander(ds, instruction)
        mounts: list[llb.MountSpec] = []
        if instruction.prepend_shell:
            script = instruction.command[0]
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
        env_keys = set(_env_dict(ds.config.get("Env") or []))
        run_state = ds.state
        arg_keys = [k for k in ds.declared if k in ds.args and k not in env_keys]
        for key in arg_keys:
            run_state = run_state.env(key, ds.args[key])
        # environment for this command only (RunInstruction subclasses with ``env`` pairs)
        step_env = [(expander.word(p.key), expander.word(p.value))
                    for p in getattr(instruction, "env", ())]
        for key, value in step_env:
            run_state = run_state.env(key, value)
        try:
            specs = instruction.expanded_mounts(expander.word)
        except (ins.InstructionError, ValueError) as err:
            raise _error(str(err), instruction.location) from None
        secret_env: list[llb.SecretEnv] = []
        ssh_count = 0
        for spec in specs:
            if spec.type == "secret" and spec.env:
                secret_id = spec.cache_id or posixpath.basename(spec.target)
                secret_env.append(llb.SecretEnv(secret_id, spec.env, not spec.required))
                if not spec.target:
                    continue
            mount = self._mount(ds, spec, index, instruction.location, ssh_count)
            mounts.append(mount)
            if spec.type == "ssh" and not ssh_count:
                run_state = run_state.env("SSH_AUTH_SOCK", mount.dest)
            ssh_count += spec.type == "ssh"
        options: dict[str, Any] = self._op_opts(ds, instruction, self._display(ds, instruction))
        if instruction.network:
            options["network"] = {"none": llb.NetMode.NONE, "host": llb.NetMode.HOST}.get(
                instruction.network, llb.NetMode.UNSET)
        if instruction.security == "insecure":
            options["security"] = llb.SecurityMode.INSECURE
        try:
            exec_state = run_state.run(args, mounts=mounts, secret_env=secret_env,
                                       proxy_env=self._proxy_env(ds), **options)
        except ValueError as err:
            raise _error(str(err), instruction.location) from None
        state = exec_state.root()
        for key in arg_keys:
            state = state.unset_env(key)
        for key, _ in step_env:
            previous = ds.state.get_env(key)
            state = state.unset_env(key) if previous is None else state.env(key, previous)
        ds.state = state
        env = ds.env()
        shown = [f"{k}={env[k]}" for k in ds.declared if k in env]
        prefix = [f"|{len(shown)}", *shown] if shown else []
        self._history(ds, "RUN " + " ".join([*prefix, *args]) + " # buildkit", False)

    def _mount(self, ds: _StageState, spec: ins.Mount, index: int, location: ins.Location,
               ssh_index: int) -> llb.MountSpec:
        target = spec.target
        if target and not target.startswith("/"):
            target = posixpath.join(ds.state.get_dir(), target)
        if target == "/":
            raise _error("mount target can not be /", location)
        source_state = None
        if spec.from_:
            source_state, _ = self.source(spec.from_, index, location)
        selector = posixpath.normpath(posixpath.join("/", spec.source)).lstrip("/")
        if spec.type == "bind":
            if source_state is None:
                source_state = self.context
                self.context_paths.add("/" + selector)
            return llb.mount(target, source_state, selector=selector, readonly=spec.read_only)
        if spec.type == "cache":
            sharing = {"locked": llb.CacheSharingOpt.LOCKED,
                       "private": llb.CacheSharingOpt.PRIVATE}.get(spec.sharing,
                                                                   llb.CacheSharingOpt.SHARED)
            cache_id = spec.cache_id or posixpath.normpath(target)
            namespace = self.build_args.get("BUILDKIT_CACHE_MOUNT_NS")
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
            return attrs.evolve(mount, readonly=spec.read_only) if spec.read_only else mount
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
        raise _error(f"unsupported mount type {spec.type!r}", location)

    # ------------------------------------------------------------------ COPY / ADD

    def _do_copy(self, ds: _StageState, instruction: ins.CopyInstruction, index: int) -> None:
        self._copy(ds, instruction, index, instruction.from_)

    def _do_add(self, ds: _StageState, instruction: ins.AddInstruction, index: int) -> None:
        self._copy(ds, instruction, index, "")

    def _copy(self, ds: _StageState, instruction: Any, index: int, from_: str) -> None:
        location = instruction.location
        expander = self._expander(ds, instruction)
        keyword = instruction.keyword.upper()
        is_add = keyword == "ADD"
        dest_word = expander.word(instruction.dest)
        dest = posixpath.join(ds.state.get_dir(), dest_word)
        if dest_word in ("", ".") or dest_word.endswith("/"):
            dest = dest.rstrip("/") + "/"
        sources = [expander.word(src) for src in instruction.sources]
        if len(sources) + len(instruction.source_contents) > 1 and not dest.endswith("/"):
            raise _error(f"When using {keyword} with more than one source file, the destination "
                         "must be a directory and end with a /", location)
        info: dict[str, Any] = {"create_dest_path": True}
        if instruction.chown:
            info["owner"] = expander.word(instruction.chown)
        mode_str = ""
        if instruction.chmod:
            chmod = expander.word(instruction.chmod)
            try:
                mode = ins.parse_chmod(chmod)
            except ValueError:
                raise _error(f"invalid chmod parameter: {chmod}", location) from None
            if isinstance(mode, int):
                info["mode"] = mode
            else:
                info["mode_str"] = mode_str = mode
        if instruction.excludes:
            info["exclude_patterns"] = [expander.word(e) for e in instruction.excludes]
        local_info = {**info, "follow_symlink": True, "dir_copy_contents": True,
                      "allow_wildcard": True, "allow_empty_wildcard": True}
        unpack = getattr(instruction, "unpack", None)
        checksum = expander.word(instruction.checksum) if is_add and instruction.checksum else ""
        if checksum and len(sources) != 1:
            raise _error("checksum can't be specified for multiple sources", location)
        source = self.context
        if from_:
            if "$" in from_:
                raise _error(f"'{from_}' doesn't support variable expansion, define alias stage "
                             "instead", location)
            source, _ = self.source(from_, index, location)
        steps: list[tuple[llb.State, str, dict]] = []
        for path in sources:
            if path.startswith(("http://", "https://")) or parse_git_ref(path):
                if not is_add:
                    raise _error("source can't be a URL for COPY", location)
                steps.append(self._remote(path, checksum, instruction, info, unpack, location))
                continue
            if checksum:
                raise _error("checksum requires an HTTP(S) or git source", location)
            step_info = dict(local_info, attempt_unpack_docker_compatibility=is_add
                             and unpack is not False)
            if getattr(instruction, "parents", False):
                root, pivot, rest = path.partition("/./")
                if not pivot:
                    root, rest = "/", path
                pattern = posixpath.normpath(posixpath.join("/", rest)).lstrip("/")
                step_info["include_patterns"] = [pattern]
                if not split_wildcards(pattern)[1]:
                    step_info["required_paths"] = [pattern]
                src_path = posixpath.normpath(posixpath.join("/", root))
                track = posixpath.join(src_path, pattern)
            else:
                src_path = posixpath.normpath(posixpath.join("/", path))
                track = src_path
            if not from_:
                self.context_paths.add(track)
            steps.append((source, src_path, step_info))
        for content in instruction.source_contents:
            data = expander.word(content.data) if content.expand else content.data
            file_state = llb.scratch().file(llb.mkfile(f"/{content.path}", 0o644, data.encode()))
            steps.append((file_state, f"/{content.path}", info))
        if not steps:
            raise _error(f"{keyword} requires at least two arguments", location)
        chain: llb.FileChain | None = None
        for src_state, src_path, step_info in steps:
            chain = (llb.copy(src_state, src_path, dest, **step_info) if chain is None
                     else chain.copy(src_state, src_path, dest, **step_info))
        options = self._op_opts(ds, instruction, self._display(ds, instruction))
        if instruction.link and not mode_str:
            copied = _scratch_like(ds.state).file(chain, **options)
            ds.state = llb.State(llb.merge([ds.state, copied], **options)._output,
                                 ds.state._meta) if not ds.state.is_scratch else \
                llb.State(copied._output, ds.state._meta)
        else:
            ds.state = ds.state.file(chain, **options)
        self._history(ds, f"{keyword} {' '.join(sources)} {dest_word} # buildkit", False)

    def _remote(self, url: str, checksum: str, instruction: Any, info: dict,
                unpack: bool | None, location: ins.Location) -> tuple[llb.State, str, dict]:
        """The source of ``ADD <url>``: an HTTP download or a git checkout."""
        git = parse_git_ref(url)
        if git is not None:
            remote, ref, subdir, query = git
            commit = query.get("checksum") or query.get("commit") or ""
            if checksum and commit and not (commit.startswith(checksum)
                                            or checksum.startswith(commit)):
                raise _error(f"checksum mismatch: {checksum} != {commit}", location)
            keep = instruction.keep_git_dir
            if keep is None:
                keep = query.get("keep-git-dir", "false").lower() in ("1", "true")
            state = llb.git(remote, ref, keep_git_dir=keep, subdir=subdir,
                            checksum=(checksum or commit) or None,
                            **self._loc_opts(location))
            return state, "/", {**info, "dir_copy_contents": True, "follow_symlink": True}
        if checksum and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
            raise _error(f"invalid checksum digest format: {checksum}", location)
        filename = posixpath.basename(urlsplit(url).path)
        if filename in ("", ".", "/"):
            filename = "__unnamed__"
        state = llb.http(url, checksum=checksum or None, filename=filename,
                         **self._loc_opts(location))
        return state, f"/{filename}", {**info, "attempt_unpack_docker_compatibility":
                                       bool(unpack)}


def _context_paths(paths: set[str]) -> tuple[str, ...] | None:
    """The follow paths for the context source (None: the whole context is needed)."""
    cleaned = set()
    for path in paths:
        rel = posixpath.normpath(path).lstrip("/")
        if rel in ("", "."):
            return None
        cleaned.add(rel)
    return tuple(sorted(cleaned))


def dockerfile_to_llb(data: bytes, *, filename: str = "Dockerfile", **options: Any
                      ) -> ConvertResult:
    """Parse and convert a Dockerfile into the LLB State of ``target`` (default: the last stage).

    ``options`` are :func:`convert_dockerfile`'s: ``named_contexts`` map a name used by
    FROM/``--from`` to a State or a :class:`NamedContext`; ``image_resolver(ref, platform)``
    supplies the image config of a base image. Only the stages the target needs are part of the
    graph, and only the context paths they read are transferred (``exclude_patterns``: the
    ``.dockerignore`` patterns). ``no_cache_stages``: None (use the cache), empty (no stage) or
    stage names whose steps ignore the cache. ``warn`` receives warnings such as unused build
    args, ``lint`` the build-check findings only the conversion sees (InvalidBaseImagePlatform).
    Without ``target_platform`` a base image of another platform this host can run (natively
    or emulated) gives its stage that platform, as BuildKit's auto-detection does.
    """
    return convert_dockerfile(ins.parse_dockerfile(data, filename), data, **options)


def convert_dockerfile(
    dockerfile: ins.Dockerfile,
    data: bytes,
    *,
    language: str = "Dockerfile",
    target: str | None = None,
    build_args: Mapping[str, str] = {},  # noqa: B006 - read only
    named_contexts: Mapping[str, NamedContext | llb.State] = {},  # noqa: B006 - read only
    image_resolver: Callable[..., dict | None] | None = None,
    target_platform: str | llb.Platform | None = None,
    build_platform: str | llb.Platform | None = None,
    exclude_patterns: Iterable[str] = (),
    no_cache_stages: Iterable[str] | None = None,
    extra_hosts: Mapping[str, str] = {},  # noqa: B006 - read only
    network_mode: str | None = None,
    labels: Mapping[str, str] = {},  # noqa: B006 - read only
    warn: Callable[[str], None] | None = None,
    lint: Callable[[Any], None] | None = None,
) -> ConvertResult:
    """Convert an already parsed Dockerfile (or any frontend's typed instructions) to LLB.

    ``data`` is the source file the instructions' locations point into, recorded in the
    definition's source map as ``language``; the other arguments are described at
    :func:`dockerfile_to_llb`.
    """
    filename = dockerfile.filename
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
    host = llb.host_platform()
    target_p = llb.Platform.parse(target_platform) if isinstance(target_platform, str) \
        else (target_platform or host)
    build_p = llb.Platform.parse(build_platform) if isinstance(build_platform, str) \
        else (build_platform or host)
    excludes = list(exclude_patterns)
    resolver = image_resolver
    cached: dict = {}
    if image_resolver is not None:
        def resolver(ref: str, platform: str | None) -> dict | None:
            if (ref, platform) not in cached:
                try:
                    cached[ref, platform] = image_resolver(ref, platform)
                except TypeError:
                    cached[ref, platform] = image_resolver(ref)
            return cached[ref, platform]

    def convert(follow: tuple[str, ...] | None) -> tuple[_Converter, _StageState]:
        def context() -> llb.State:
            return llb.local(CONTEXT_NAME, shared_key_hint=CONTEXT_NAME,
                             exclude_patterns=excludes or None,
                             follow_paths=list(follow) if follow else None,
                             custom_name="[internal] load build context")

        converter = _Converter(
            dockerfile, bytes(data), build_args, named_contexts, resolver, target_p, build_p,
            target or "default", context,
            None if no_cache_stages is None else frozenset(no_cache_stages), extra_hosts,
            network_mode, language, implicit_platform=target_platform is None)
        return converter, converter.stage(stage)

    converter, built = convert(None)
    follow = _context_paths(converter.context_paths)
    if follow:
        converter, built = convert(follow)
    image = copy.deepcopy(built.image)
    if labels:
        image["config"]["Labels"] = {**(image["config"].get("Labels") or {}), **labels}
    if warn is not None:
        unused = sorted(k for k in build_args if k not in converter.consumed
                        and k not in converter.predefined and k not in _BUILTIN_ARGS
                        and k.upper() not in PROXY_ARGS and not k.startswith("BUILDKIT_"))
        if unused:
            warn(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed")
    if lint is not None:
        for finding in converter.findings:
            lint(finding)
    return ConvertResult(built.state, image, stage.name or f"stage-{stage.index}", follow)


def outline(data: bytes, *, filename: str = "Dockerfile", target: str | None = None,
            build_args: Mapping[str, str] = {}) -> str:  # noqa: B006 - read only
    """``--call outline``: the build args the target uses, with defaults and descriptions."""
    dockerfile = ins.parse_dockerfile(data, filename)
    if not dockerfile.stages:
        raise DockerfileParseError("the Dockerfile has no FROM instruction", filename=filename)
    stage = dockerfile.stage(target) if target else dockerfile.stages[-1]
    wanted = {stage.index}
    pending = [stage]
    while pending:
        current = pending.pop()
        names = [current.from_instruction.base_name]
        names += [getattr(i, "from_", "") for i in current.instructions]
        for instruction in current.instructions:
            for spec in getattr(instruction, "mount_specs", ()):
                match = re.search(r"(?:^|,)from=([^,]+)", spec)
                if match:
                    names.append(match.group(1))
        for name in filter(None, names):
            for other in dockerfile.stages[:current.index]:
                if other.index not in wanted and (other.name == name.lower()
                                                  or name == str(other.index)):
                    wanted.add(other.index)
                    pending.append(other)
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    arg_groups = [dockerfile.meta_args] + [
        [i for i in s.instructions if isinstance(i, ins.ArgInstruction)]
        for s in dockerfile.stages if s.index in wanted]
    for group in arg_groups:
        for instruction in group:
            comment = " ".join(c.strip() for c in instruction.comments)
            for spec in instruction.args:
                if spec.key in seen:
                    continue
                seen.add(spec.key)
                description = ""
                if comment.startswith(spec.key + " "):
                    description = comment[len(spec.key) + 1:].strip()
                value = build_args.get(spec.key, spec.default or "")
                rows.append((spec.key, value, description))
    lines = [f"TARGET:      {stage.name or 'stage-' + str(stage.index)}", ""]
    if rows:
        width = max(len("BUILD ARG"), *(len(r[0]) for r in rows)) + 2
        vwidth = max(len("VALUE"), *(len(r[1]) for r in rows)) + 2
        lines.append(f"{'BUILD ARG':<{width}}{'VALUE':<{vwidth}}DESCRIPTION")
        lines += [f"{k:<{width}}{v:<{vwidth}}{d}".rstrip() for k, v, d in rows]
    return "\n".join(lines) + "\n"


def targets(data: bytes, *, filename: str = "Dockerfile") -> str:
    """``--call targets``: the named stages (the default one marked), with descriptions."""
    dockerfile = ins.parse_dockerfile(data, filename)
    rows = []
    for stage in dockerfile.stages:
        if not stage.name:
            continue
        comment = " ".join(c.strip() for c in stage.from_instruction.comments)
        description = comment[len(stage.name) + 1:].strip() \
            if comment.startswith(stage.name + " ") else ""
        name = stage.name + (" (default)" if stage is dockerfile.stages[-1] else "")
        rows.append((name, description))
    if not rows:
        return "No targets found\n"
    width = max(len("TARGET"), *(len(r[0]) for r in rows)) + 2
    return "\n".join([f"{'TARGET':<{width}}DESCRIPTION"]
                     + [f"{n:<{width}}{d}".rstrip() for n, d in rows]) + "\n"
