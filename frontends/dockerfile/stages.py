"""Dockerfile stages → LLB: the stage converter resolves FROM, ``--from`` and mount sources
(stages, named contexts, images), sets a stage up from its base image and hands each
instruction to its step function (:mod:`~pybk.frontends.dockerfile.convert`'s table)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pybk.core import llb
from pybk.core import platform as core_platform
from pybk.core.errors import InputError, PybkError
from pybk.core.model import Model, evolve
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.imageconfig import (
    DEFAULT_SHELL,
    StageState,
    apply_config,
    base_image,
    check_image_config,
    config_platform,
    same_platform,
)
from pybk.frontends.dockerfile.instructions import Expander, parse_dockerfile
from pybk.frontends.dockerfile.lintrules import base_image_platform_warning
from pybk.frontends.dockerfile.shell import ShellExpansionError

COMMAND_DESCRIPTION = "com.docker.dockerfile.v1.command"
_OP_KEYWORDS = ("RUN", "COPY", "ADD", "WORKDIR")

#: converts one instruction: ``(converter, stage state, instruction, stage index)``
Step = Callable[["StageConverter", StageState, Any, int], None]



def no_cache_selectors(values: Iterable[str]) -> tuple[set[tuple[str, int]], set[int]]:
    """The step selectors among ``--no-cache-filter`` values: ``STAGE:N`` (step N of a stage
    named or numbered STAGE, counted as the progress shows it: ``[STAGE N/T]``) and ``#LINE``
    (the step whose instruction covers that line of the build file). Other values are stage
    names. Raises InputError for a malformed selector."""
    steps: set[tuple[str, int]] = set()
    lines: set[int] = set()
    for value in values:
        if value.startswith("#"):
            if not value[1:].isdigit() or int(value[1:]) < 1:
                raise InputError(f"invalid no-cache filter {value!r}: expected #LINE, a line "
                                 "number of the build file")
            lines.add(int(value[1:]))
        elif ":" in value:
            stage, _, number = value.rpartition(":")
            if not stage or not number.isdigit() or int(number) < 1:
                raise InputError(f"invalid no-cache filter {value!r}: expected STAGE:N, a "
                                 "stage name or index and a step number from 1")
            steps.add((stage, int(number)))
    return steps, lines

class NamedContext(Model):
    """A named build context: a State and, optionally, the image config it brings.

    ``stage`` set instead (``context:NAME=target:STAGE``) makes NAME an alias of that stage.
    """

    state: llb.State | None = None
    image_config: dict | None = None
    stage: str | None = None


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


def located_error(message: str, location: ins.Location) -> DockerfileParseError:
    """``message`` at an instruction's lines."""
    return DockerfileParseError(
        message, filename=location.filename, line=location.start_line, end_line=location.end_line
    )


class StageConverter:
    def __init__(self, dockerfile: ins.Dockerfile, data: bytes, build_args: Mapping[str, str],
                 named_contexts: Mapping[str, Any],
                 image_resolver: Callable[[str, str | None], dict | None] | None,
                 target_platform: llb.Platform, build_platform: llb.Platform,
                 target_stage: str, context: Callable[[], llb.State],
                 no_cache_stages: frozenset[str] | None, extra_hosts: Mapping[str, str],
                 network_mode: str | None, steps: Mapping[str, Step],
                 language: str = "Dockerfile", implicit_platform: bool = False,
                 ulimits: tuple[tuple[str, int, int], ...] = (), cgroup_parent: str = "",
                 linux_resources: llb.LinuxResources | None = None,
                 image_resolve_mode: str | None = None):
        self.df = dockerfile
        #: keyword (lower case) → the function converting that instruction
        self.steps = steps
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
        self.no_cache_steps, self.no_cache_lines = no_cache_selectors(no_cache_stages or ())
        self.extra_hosts = dict(extra_hosts)
        self.network_mode = network_mode
        #: ``--ulimit`` entries and ``--cgroup-parent``, for every RUN
        self.ulimits = ulimits
        self.cgroup_parent = cgroup_parent
        #: per-step resources (the ``memory``, ``cpu*`` opts), for every RUN
        self.linux_resources = linux_resources
        #: ``image-resolve-mode`` (``--pull``: ``pull``), on every image source
        self.image_resolve_mode = image_resolve_mode
        self.source_info = llb.SourceInfo(dockerfile.filename, data, language)
        self.done: dict[int, StageState] = {}
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
            expander = Expander(values, self.df.escape, arg.location)
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

    def stage(self, stage: ins.Stage) -> StageState:
        if stage.index not in self.done:
            if stage.index in self.in_progress:
                raise located_error("circular dependency detected on stage: "
                                    f"{stage.name or stage.index}", stage.from_instruction.location)
            self.in_progress.add(stage.index)
            self.done[stage.index] = self._convert(stage)
        return self.done[stage.index]

    def resolve_image(self, ref: str, platform: llb.Platform | None) -> dict | None:
        key = (ref, str(platform or ""))
        if key not in self.resolved:
            self.resolved[key] = check_image_config(
                self.image_resolver(ref, str(platform) if platform else None)
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
        actual = config_platform(config)
        if actual is None or same_platform(actual, expected):
            return None
        if (may_detect and self.implicit_platform and not frm.platform
                and core_platform.can_execute(actual)):
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
                raise located_error(f'target stage "{ctx.stage}" could not be found', location)
            built = self.stage(stage)
            return built.state, built.image
        elif isinstance(ctx, NamedContext):
            try:
                return ctx.state or llb.scratch(), check_image_config(ctx.image_config)
            except InputError as err:
                raise located_error(f"build context {name!r}: {err}", location) from None
        else:
            return ctx, None
        if name == "scratch":
            return llb.scratch(), None
        try:
            state = llb.image(name, platform=platform, resolve_mode=self.image_resolve_mode,
                              **self.loc_opts(location, custom_name))
        except (ValueError, InputError) as err:
            raise located_error(f"invalid reference {name!r}: {err}", location) from None
        try:
            return state, self.resolve_image(name, platform)
        except PybkError as err:
            raise located_error(f"failed to resolve source metadata for {name}: {err}",
                                location) from None

    # ------------------------------------------------------------------ instructions

    def loc_opts(self, location: ins.Location, custom_name: str | None = None) -> dict:
        options: dict[str, Any] = {"location": llb.SourceLocation(self.source_info, (
            llb.Range(llb.Position(location.start_line), llb.Position(location.end_line)),))}
        if custom_name is not None:
            options["custom_name"] = custom_name
        return options

    def op_opts(self, ds: StageState, instruction: ins.Instruction, name: str) -> dict:
        options = self.loc_opts(instruction.location, ds.prefix(name))
        options["description"] = {COMMAND_DESCRIPTION: instruction.original}
        if ds.ignore_cache or instruction.no_cache or self._filtered(ds, instruction):
            options["ignore_cache"] = True
        return options

    def _filtered(self, ds: StageState, instruction: ins.Instruction) -> bool:
        """A ``--no-cache-filter`` step selector names this step (``stage:N`` or ``#LINE``)."""
        loc = instruction.location
        return ds.index in ds.busted or any(loc.start_line <= line <= loc.end_line
                                            for line in self.no_cache_lines)

    def _convert(self, stage: ins.Stage) -> StageState:
        frm = stage.from_instruction
        expander = Expander(self.global_args, self.df.escape, frm.location)
        base = expander.word(frm.base_name)
        if not base:
            raise located_error("base name (FROM) should not be blank", frm.location)
        platform = self.target_platform
        if frm.platform:
            spec = expander.word(frm.platform)
            try:
                platform = llb.Platform.parse(spec)
            except Exception as err:
                raise located_error(f"failed to parse platform {spec}: {err}",
                                    frm.location) from None
        total = 1 + sum(i.keyword.upper() in _OP_KEYWORDS for i in stage.instructions)
        label = (stage.name or f"stage-{stage.index}") if self.multi else ""
        ds = StageState(llb.scratch(), {}, {}, [], label, total, platform)
        ds.ignore_cache = self.no_cache_stages is not None and (
            not self.no_cache_stages or (stage.name or "") in self.no_cache_stages)
        ds.busted = frozenset(n for key, n in self.no_cache_steps
                              if key in (stage.name or "", str(stage.index)))
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
        ds.image = base_image(config, platform)
        ds.index = 1
        ds.shell = list(ds.config.get("Shell") or DEFAULT_SHELL)
        ds.state = apply_config(ds.state, ds.config)
        hostname = self.build_args.get("BUILDKIT_SANDBOX_HOSTNAME")
        if hostname:
            ds.state = ds.state.hostname(hostname)
        for host, ip in self.extra_hosts.items():
            ds.state = ds.state.add_extra_host(host, ip)
        for name, soft, hard in self.ulimits:
            ds.state = ds.state.add_ulimit(name, soft, hard)
        if self.cgroup_parent:
            ds.state = ds.state.cgroup_parent(self.cgroup_parent)
        if self.network_mode:
            ds.state = ds.state.network(
                {"none": llb.NetMode.NONE, "host": llb.NetMode.HOST}[self.network_mode])
        if self.created:
            ds.image["created"] = self.created
        triggers = list(ds.config.pop("OnBuild", None) or [])
        if triggers:
            self._onbuild_triggers(ds, triggers, stage.index, frm.location)
        for instruction in stage.instructions:
            self.dispatch(ds, instruction, stage.index)
        return ds

    def dispatch(self, ds: StageState, instruction: ins.Instruction, index: int) -> None:
        try:
            self.steps[instruction.keyword.lower()](self, ds, instruction, index)
        except TypeError as err:  # orjson refusing surrogate escapes (bytes that are not UTF-8)
            if "UTF-8" not in str(err):
                raise
            raise located_error("the instruction is not valid UTF-8",
                                instruction.location) from None

    def _onbuild_triggers(self, ds: StageState, triggers: list[str], index: int,
                          location: ins.Location) -> None:
        """Run the base image's ONBUILD triggers right after FROM (located at the FROM line)."""
        text = "FROM scratch\n" + "\n".join(triggers) + "\n"
        try:
            parsed = parse_dockerfile(text, self.df.filename)
        except DockerfileParseError as err:
            raise located_error(f"invalid ONBUILD trigger: {err.message}", location) from None
        ds.total += len([i for i in parsed.stages[0].instructions
                         if i.keyword.upper() in _OP_KEYWORDS])
        for instruction in parsed.stages[0].instructions:
            self.dispatch(ds, evolve(instruction, location=location), index)

    def expander(self, ds: StageState, instruction: ins.Instruction) -> Expander:
        return Expander(ds.env(), self.df.escape, instruction.location)

    def display(self, ds: StageState, instruction: ins.Instruction) -> str:
        keyword, _, rest = instruction.original.partition(" ")
        with contextlib.suppress(ShellExpansionError, DockerfileParseError):
            rest = Expander(ds.env(), self.df.escape).word(rest)  # display only
        return f"{keyword.upper()} {rest}".strip()

    def history(self, ds: StageState, text: str, empty_layer: bool) -> None:
        ds.history(text, empty_layer, self.created)
