"""A ``yaml.v0`` pipeline → the Dockerfile frontend's typed instructions → LLB.

:func:`load_pipeline` reads and checks the file, reporting every problem at once with its
``file:line:column`` and key path; :func:`pipeline_to_dockerfile` turns the pipeline into the
same :class:`~pybk.frontends.dockerfile.instructions.Dockerfile` object the Dockerfile parser
produces (locations point at the YAML lines, display texts are the equivalent Dockerfile
instructions), and :func:`yaml_to_llb` converts it with the Dockerfile converter, so a pipeline
and its Dockerfile twin give the same ops, the same op digests and share the cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from pybk.core.converter import KeyPath, problems_from_exception, render_path
from pybk.core.didyoumean import did_you_mean
from pybk.core.errors import InputError
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile.errors import InstructionError
from pybk.frontends.dockerfile.mounts import parse_mount
from pybk.frontends.dockerfile.values import go_parse_duration, parse_chmod, parse_signal
from pybk.frontends.yaml.loader import Document, Mark, YamlSyntaxError, load_document
from pybk.frontends.yaml.schema import (
    SCHEMA_VERSION,
    STEP_KINDS,
    Add,
    Command,
    Copy,
    Healthcheck,
    Mount,
    Pipeline,
    Run,
    Stage,
    get_pipeline_converter,
)

LANGUAGE = "YAML"
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BARE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-_.]*\Z")


class PipelineError(InputError):
    """A pipeline has problems; each is ``(line, column, key path, message)``. All are shown,
    one per line as ``file:line:column: path: message`` with the offending line."""

    def __init__(self, filename: str, problems: Sequence[tuple[int, int, str, str]],
                 lines: Sequence[str] = ()):
        self.problems = sorted(problems, key=lambda p: (p[0], p[1]))
        self.source_lines = list(lines)
        line, column, path, message = self.problems[0]
        first = f"{path}: {message}" if path else message
        super().__init__(first, filename=filename, line=line, column=column)

    def __str__(self) -> str:
        out = []
        for line, column, path, message in self.problems:
            text = f"{path}: {message}" if path else message
            out.append(f"{self.filename}:{line}:{column}: {text}")
            if 0 < line <= len(self.source_lines):
                out.append(f"  {self.source_lines[line - 1]}")
                out.append("  " + " " * (column - 1) + "^")
        return "\n".join(out)


@attrs.define
class _Problems:
    doc: Document
    items: list[tuple[int, int, str, str]] = attrs.field(factory=list)

    def add(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        mark = self.doc.mark(path, key=key)
        self.items.append((mark.line, mark.column, render_path(path), message))

    def raise_if_any(self) -> None:
        if self.items:
            unique = list(dict.fromkeys(self.items))
            raise PipelineError(self.doc.filename, unique, self.doc.lines())


@attrs.frozen
class LoadedPipeline:
    pipeline: Pipeline
    doc: Document
    #: stage names, dependencies first (the order of the stages in the converted Dockerfile)
    order: tuple[str, ...]


def load_pipeline(data: bytes | str, filename: str = "pipeline.yaml", *,
                  contexts: Iterable[str] = ()) -> LoadedPipeline:
    """Read and check a pipeline; raises :class:`PipelineError` listing every problem.

    ``contexts``: the named build contexts of the build (valid ``from`` values).
    """
    try:
        doc = load_document(data, filename)
    except YamlSyntaxError as err:
        lines = (data.decode(errors="replace") if isinstance(data, bytes) else data).splitlines()
        raise PipelineError(filename, [(err.line, err.column, "", err.message)], lines) from None
    problems = _Problems(doc)
    for found in doc.problems:
        problems.items.append((found.mark.line, found.mark.column, render_path(found.path),
                               found.message))
    if not isinstance(doc.data, dict):
        problems.add((), "a pipeline is a mapping with version and stages")
        problems.raise_if_any()
    pipeline, broken = _structure(doc.data, problems)
    order = _check(pipeline, problems, frozenset(contexts), broken) if pipeline else ()
    problems.raise_if_any()
    assert pipeline is not None
    return LoadedPipeline(pipeline, doc, order)


def _structure_part(value: Any, cls: type, path: KeyPath, problems: _Problems) -> Any:
    """``value`` as ``cls``, or None after adding its problems (at ``path`` + their paths)."""
    from cattrs.errors import BaseValidationError

    try:
        return get_pipeline_converter().structure(value, cls)
    except BaseValidationError as exc:
        for problem in problems_from_exception(exc):
            problems.add((*path, *problem.path), problem.message,
                         key=problem.message.startswith("unknown key"))
        return None


def _structure(data: dict, problems: _Problems) -> tuple[Pipeline | None, set[str]]:
    """The pipeline, structured stage by stage and step by step so that every part's problems
    are found; ``broken`` names the stages that had problems (their other checks are
    skipped, but references to them are valid)."""
    from pybk.frontends.yaml.schema import Step

    stages_data = data.get("stages")
    top = _structure_part({**data, "stages": {}}, Pipeline, (), problems)
    if "stages" not in data:
        problems.add(("stages",), "missing required key")
        return None, set()
    if not isinstance(stages_data, dict):
        problems.add(("stages",), "expected a mapping of stage names to stages")
        return None, set()
    stages: dict[str, Stage] = {}
    broken: set[str] = set()
    for name, stage_data in stages_data.items():
        path: KeyPath = ("stages", name)
        steps_data = stage_data.get("steps") if isinstance(stage_data, dict) else None
        plain = ({**stage_data, "steps": []} if isinstance(steps_data, list)
                 else stage_data)
        stage = _structure_part(plain, Stage, path, problems)
        steps = []
        for i, step_data in enumerate(steps_data if isinstance(steps_data, list) else ()):
            steps.append(_structure_part(step_data, Step, (*path, "steps", i), problems))
        if stage is None:
            broken.add(name)
            stages[name] = Stage(from_="scratch")
        else:  # a step with problems stays None (and is not checked further)
            stages[name] = attrs.evolve(stage, steps=steps)
    if top is None:  # still check the stages (the top-level problems are already known)
        return Pipeline(version=SCHEMA_VERSION, stages=stages), broken
    return attrs.evolve(top, stages=stages), broken


def _version_problem(version: int, problems: _Problems) -> None:
    problems.add(("version",), f"unsupported version {version} (yaml.v0 reads version "
                 f"{SCHEMA_VERSION})")


# --------------------------------------------------------------------------------------------
# Checks beyond types: names, references, cycles, values the Dockerfile parser would reject
# --------------------------------------------------------------------------------------------


def _suggest_stage(name: str, stages: Iterable[str]) -> str:
    return did_you_mean(name, sorted(stages), quote="'")


def _check(pipeline: Pipeline, problems: _Problems, contexts: frozenset[str],
           broken: set[str]) -> tuple[str, ...]:
    if pipeline.version != SCHEMA_VERSION:
        _version_problem(pipeline.version, problems)
    stages = pipeline.stages
    if not stages:
        problems.add(("stages",), "at least one stage is required")
    for name in pipeline.args:
        if not _ARG_NAME.match(name):
            problems.add(("args", name), f"invalid build arg name {name!r}", key=True)
    for name in stages:
        if not _STAGE_NAME.match(name):
            problems.add(("stages", name), f"invalid stage name {name!r}: lower-case letters, "
                         "digits, '-', '_' and '.', starting with a letter", key=True)
    if pipeline.target is not None and pipeline.target not in stages:
        problems.add(("target",), f"unknown stage '{pipeline.target}'"
                     + _suggest_stage(pipeline.target, stages))
    graph: dict[str, list[tuple[str, KeyPath]]] = {}
    for name, stage in stages.items():
        graph[name] = [] if name in broken else \
            _check_stage(name, stage, stages, contexts, problems)
    return _order(graph, stages, problems)


def _reference(value: str, path: KeyPath, stages: Mapping[str, Stage], contexts: frozenset[str],
               problems: _Problems, *, expandable: bool) -> str | None:
    """The stage ``value`` names (None for images, contexts, scratch); problems when wrong."""
    if not value:
        problems.add(path, "must not be empty")
        return None
    if value in stages:
        return value
    if "$" in value:
        if not expandable:
            problems.add(path, f"'{value}' doesn't support variable expansion, define an alias "
                         "stage instead")
        return None
    if value == "scratch" or value in contexts:
        return None
    if _BARE_WORD.match(value):
        hint = _suggest_stage(value, stages)
        if hint:
            problems.add(path, f"unknown stage '{value}'{hint}")
            return None
    from pybk.core import llb

    try:
        llb.normalize_image_ref(value)
    except (ValueError, InputError) as err:
        problems.add(path, f"not a stage, named context or image reference: {err}")
    return None


def _check_stage(name: str, stage: Stage, stages: Mapping[str, Stage], contexts: frozenset[str],
                 problems: _Problems) -> list[tuple[str, KeyPath]]:
    base: KeyPath = ("stages", name)
    deps: list[tuple[str, KeyPath]] = []

    def ref(value: str, path: KeyPath, expandable: bool = False) -> None:
        target = _reference(value, path, stages, contexts, problems, expandable=expandable)
        if target is not None:
            deps.append((target, path))

    ref(stage.from_, (*base, "from"), expandable=True)
    if stage.platform is not None and "$" not in stage.platform:
        _check_platform(stage.platform, (*base, "platform"), problems)
    for key in stage.args:
        if not _ARG_NAME.match(key):
            problems.add((*base, "args", key), f"invalid build arg name {key!r}", key=True)
    _check_env(stage.env, (*base, "env"), problems)
    if stage.shell is not None and not stage.shell:
        problems.add((*base, "shell"), "must not be empty")
    for i, step in enumerate(stage.steps):
        if step is not None:
                _check_step(step, (*base, "steps", i), ref, problems)
    if stage.stopsignal is not None and "$" not in stage.stopsignal:
        try:
            parse_signal(stage.stopsignal)
        except ValueError as err:
            problems.add((*base, "stopsignal"), str(err))
    for i, volume in enumerate(stage.volumes):
        if not volume.strip():
            problems.add((*base, "volumes", i), "must not be empty")
    if stage.healthcheck is not None:
        _check_healthcheck(stage.healthcheck, (*base, "healthcheck"), problems)
    for key in ("entrypoint", "cmd"):
        command = getattr(stage, key)
        if command is not None and command.shell is not None and not command.shell.strip():
            problems.add((*base, key), "must not be empty")
    return deps


def _check_platform(value: str, path: KeyPath, problems: _Problems) -> None:
    from pybk.core import llb

    try:
        llb.Platform.parse(value)
    except Exception as err:  # any parse failure is reported the same way
        problems.add(path, str(err) if value in str(err) else f"invalid platform {value!r}: {err}")


def _check_env(env: Mapping[str, str], path: KeyPath, problems: _Problems) -> None:
    for key in env:
        if not key or "=" in key or any(c.isspace() for c in key):
            problems.add((*path, key), f"invalid environment variable name {key!r}", key=True)


def _check_step(step: Any, path: KeyPath, ref: Callable[..., None], problems: _Problems) -> None:
    kinds = [k for k in STEP_KINDS if getattr(step, k) is not None]
    if len(kinds) != 1:
        got = " and ".join(kinds) if kinds else "none"
        problems.add(path, f"a step has exactly one of {', '.join(STEP_KINDS)} (got {got})")
        return
    kind = kinds[0]
    value = getattr(step, kind)
    where = (*path, kind)
    if kind == "run":
        _check_run(value, where, ref, problems)
    elif kind in ("copy", "add"):
        _check_copy(value, where, ref, problems)
    elif kind == "env":
        _check_env(value, where, problems)
        if not value:
            problems.add(where, "must not be empty")
    elif kind == "arg":
        if not value:
            problems.add(where, "must not be empty")
        for key in value:
            if not _ARG_NAME.match(key):
                problems.add((*where, key), f"invalid build arg name {key!r}", key=True)
    elif not value.strip():
        problems.add(where, "must not be empty")


def _check_run(run: Run, path: KeyPath, ref: Callable[..., None], problems: _Problems) -> None:
    if run.command.shell is not None and not run.command.shell.strip():
        problems.add((*path, "command"), "must not be empty")
    _check_env(run.env, (*path, "env"), problems)
    for i, mount in enumerate(run.mounts):
        where = (*path, "mounts", i)
        if mount.from_ is not None:
            ref(mount.from_, (*where, "from"))
        spec = mount_spec(mount)
        if "$" in spec:
            continue
        try:
            parse_mount(spec, lambda value: value)
        except InstructionError as err:
            problems.add(_mount_key(mount, where, str(err)), str(err))
            continue
        if mount.type in ("bind", "cache", "tmpfs") and not mount.target:
            problems.add(where, f"target is required for {mount.type} mounts")


def _mount_key(mount: Mount, where: KeyPath, message: str) -> KeyPath:
    """The path of the mount option a Dockerfile mount error is about (else the mount)."""
    for a in attrs.fields(Mount):
        key = a.name.rstrip("_")
        if getattr(mount, a.name) is not None and re.search(
                rf"(^|'|for |both ){re.escape(key)}\b", message):
            return (*where, key)
    return where


def _check_copy(copy: Copy | Add, path: KeyPath, ref: Callable[..., None],
                problems: _Problems) -> None:
    if isinstance(copy, Copy) and copy.from_ is not None:
        ref(copy.from_, (*path, "from"))
    if not copy.src:
        problems.add((*path, "src"), "at least one source is required")
    if not copy.dest:
        problems.add((*path, "dest"), "must not be empty")
    elif len(copy.src) > 1 and not copy.dest.endswith("/") and "$" not in copy.dest:
        problems.add((*path, "dest"), "with more than one source, the destination must be a "
                     "directory and end with a /")
    if copy.chmod is not None and "$" not in copy.chmod:
        try:
            parse_chmod(copy.chmod)
        except ValueError as err:
            problems.add((*path, "chmod"), str(err))
    for i, src in enumerate(copy.src):
        if isinstance(copy, Copy) and src.startswith(("http://", "https://")):
            problems.add((*path, "src", i), "a URL source needs add, not copy")
    if isinstance(copy, Add) and copy.checksum is not None and len(copy.src) != 1:
        problems.add((*path, "checksum"), "checksum can't be specified for multiple sources")


def _check_healthcheck(check: Healthcheck, path: KeyPath, problems: _Problems) -> None:
    if check.disable:
        extra = [a.name for a in attrs.fields(Healthcheck)
                 if a.name != "disable" and getattr(check, a.name) is not None]
        if extra:
            problems.add(path, "disable: true takes no other keys")
        return
    if check.test is None:
        problems.add(path, "test is required (or disable: true)")
    for key in ("interval", "timeout", "start_period", "start_interval"):
        value = getattr(check, key)
        if value is not None:
            try:
                duration_ns(value)
            except ValueError as err:
                problems.add((*path, key.replace("_", "-")), str(err))
    if check.retries is not None and check.retries < 0:
        problems.add((*path, "retries"), f"must not be negative ({check.retries})")


def duration_ns(value: str) -> int:
    """A health check duration (``30s``) in nanoseconds; at least 1ms unless 0."""
    duration = go_parse_duration(value)
    if 0 < duration < 1_000_000 or duration < 0:
        raise ValueError("must be at least 1ms")
    return duration


def _order(graph: Mapping[str, list[tuple[str, KeyPath]]], stages: Mapping[str, Stage],
           problems: _Problems) -> tuple[str, ...]:
    """Stages with their dependencies first (file order otherwise); cycles are problems."""
    order: list[str] = []
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = trail[trail.index(name):] + [name]
            key = frozenset(cycle)
            if key not in reported:
                reported.add(key)
                edge = next(p for d, p in graph[cycle[-2]] if d == name)
                problems.add(edge, "circular dependency between stages: "
                             + " -> ".join(cycle))
            return
        state[name] = 1
        for dep, _ in graph.get(name, ()):
            visit(dep, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name, [])
    return tuple(order)


# --------------------------------------------------------------------------------------------
# Pipeline → typed Dockerfile instructions
# --------------------------------------------------------------------------------------------


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def mount_spec(mount: Mount) -> str:
    """The ``RUN --mount`` value of ``mount`` (Go CSV, as the Dockerfile parser reads it)."""
    fields = [f"type={mount.type}"]
    for key, value in (("from", mount.from_), ("source", mount.source),
                       ("target", mount.target)):
        if value is not None:
            fields.append(f"{key}={value}")
    if mount.readonly is not None:
        fields.append("ro" if mount.readonly else "rw")
    for key in ("id", "sharing", "size", "mode", "uid", "gid", "env"):
        value = getattr(mount, key)
        if value is not None:
            fields.append(f"{key}={value}")
    if mount.required is not None:
        fields.append(f"required={'true' if mount.required else 'false'}")
    return ",".join(_csv_field(f) for f in fields)


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "\"'\\" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _pairs_text(pairs: Mapping[str, str]) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in pairs.items())


def _args_text(args: Mapping[str, str | None]) -> str:
    return " ".join(k if v is None else f"{k}={_quote(v)}" for k, v in args.items())


def _words_text(words: Sequence[str]) -> str:
    if any(not w or any(c.isspace() for c in w) for w in words):
        return json.dumps(list(words), ensure_ascii=False)
    return " ".join(words)


def _heredoc_name(script: str) -> str:
    lines = set(script.splitlines())
    name, n = "EOF", 0
    while name in lines:
        n += 1
        name = f"EOF{n}"
    return name


@attrs.frozen(kw_only=True)
class RunStepInstruction(ins.RunInstruction):
    """A ``run`` step: a RUN with environment variables for its command only."""

    env: tuple[ins.KeyValue, ...] = ()


class _Builder:
    def __init__(self, loaded: LoadedPipeline):
        self.doc = loaded.doc
        self.filename = loaded.doc.filename

    def location(self, path: KeyPath) -> ins.Location:
        mark: Mark = self.doc.mark(path)
        return ins.Location(self.filename, mark.line, max(mark.end_line, mark.line))

    def common(self, keyword: str, path: KeyPath, original: str, **extra: Any) -> dict:
        return {"keyword": keyword, "location": self.location(path),
                "original": f"{keyword} {original}".rstrip(), **extra}

    def args(self, args: Mapping[str, str | None], path: KeyPath) -> ins.ArgInstruction:
        return ins.ArgInstruction(**self.common("ARG", path, _args_text(args)),
                                  args=tuple(ins.ArgSpec(k, v) for k, v in args.items()))

    def env(self, env: Mapping[str, str], path: KeyPath) -> ins.EnvInstruction:
        return ins.EnvInstruction(**self.common("ENV", path, _pairs_text(env)),
                                  pairs=tuple(ins.KeyValue(k, v) for k, v in env.items()))

    def command(self, keyword: str, command: Command, path: KeyPath, cls: type) -> Any:
        if command.argv is not None:
            original = json.dumps(list(command.argv), ensure_ascii=False)
            return cls(**self.common(keyword, path, original), command=command.argv,
                       prepend_shell=False)
        return cls(**self.common(keyword, path, command.shell or ""),
                   command=(command.shell or "",), prepend_shell=True)

    def run(self, run: Run, path: KeyPath) -> RunStepInstruction:
        from pybk.frontends.dockerfile.parser import Heredoc

        flags = [f"--mount={mount_spec(m)}" for m in run.mounts]
        if run.network is not None:
            flags.append(f"--network={run.network}")
        if run.security is not None:
            flags.append(f"--security={run.security}")
        extra = {"mount_specs": tuple(flags_value[len("--mount="):] for flags_value in flags
                                      if flags_value.startswith("--mount=")),
                 "network": run.network, "security": run.security,
                 "env": tuple(ins.KeyValue(k, v) for k, v in run.env.items())}
        script = run.command.shell
        heredocs: tuple = ()
        if script is not None and "\n" in script.rstrip("\n"):
            name = _heredoc_name(script)
            heredocs = (Heredoc(name, content=script if script.endswith("\n")
                                else script + "\n"),)
            command: tuple[str, ...] = (f"<<{name}",)
            shown = command[0]
        elif script is not None:  # one line (a trailing newline of a block is dropped)
            command = (script.rstrip("\n"),)
            shown = command[0]
        else:
            command = run.command.argv or ()
            shown = json.dumps(list(command), ensure_ascii=False)
        original = " ".join([*flags, shown])
        return RunStepInstruction(**self.common("RUN", path, original, flags=tuple(flags),
                                                heredocs=heredocs),
                                  command=command, prepend_shell=script is not None, **extra)

    def copy(self, copy: Copy | Add, path: KeyPath) -> ins.Instruction:
        keyword = "COPY" if isinstance(copy, Copy) else "ADD"
        flags = []
        if isinstance(copy, Copy) and copy.from_:
            flags.append(f"--from={copy.from_}")
        if copy.chown is not None:
            flags.append(f"--chown={copy.chown}")
        if copy.chmod is not None:
            flags.append(f"--chmod={copy.chmod}")
        if copy.link:
            flags.append("--link")
        fields: dict[str, Any] = {"sources": tuple(copy.src), "dest": copy.dest,
                                  "chown": copy.chown or "", "chmod": copy.chmod or "",
                                  "link": copy.link, "excludes": tuple(copy.exclude)}
        if isinstance(copy, Copy):
            if copy.parents:
                flags.append("--parents")
            fields.update(from_=copy.from_ or "", parents=copy.parents)
            cls: type = ins.CopyInstruction
        else:
            if copy.keep_git_dir is not None:
                flags.append(f"--keep-git-dir={str(copy.keep_git_dir).lower()}")
            if copy.checksum is not None:
                flags.append(f"--checksum={copy.checksum}")
            if copy.unpack is not None:
                flags.append(f"--unpack={str(copy.unpack).lower()}")
            fields.update(keep_git_dir=copy.keep_git_dir, checksum=copy.checksum or "",
                          unpack=copy.unpack)
            cls = ins.AddInstruction
        flags += [f"--exclude={e}" for e in copy.exclude]
        original = " ".join([*flags, _words_text([*copy.src, copy.dest])])
        return cls(**self.common(keyword, path, original, flags=tuple(flags)), **fields)

    def step(self, step: Any, path: KeyPath) -> ins.Instruction:
        kind = next(k for k in STEP_KINDS if getattr(step, k) is not None)
        value = getattr(step, kind)
        where = (*path, kind)
        if kind == "run":
            return self.run(value, where)
        if kind in ("copy", "add"):
            return self.copy(value, where)
        if kind == "env":
            return self.env(value, where)
        if kind == "arg":
            return self.args(value, where)
        if kind == "workdir":
            return ins.WorkdirInstruction(**self.common("WORKDIR", where, value), path=value)
        return ins.UserInstruction(**self.common("USER", where, value), user=value)

    def healthcheck(self, check: Healthcheck, path: KeyPath) -> ins.HealthcheckInstruction:
        if check.disable:
            return ins.HealthcheckInstruction(**self.common("HEALTHCHECK", path, "NONE"),
                                              test=("NONE",))
        command = check.test or Command(shell="")
        test = ("CMD", *command.argv) if command.argv is not None else \
            ("CMD-SHELL", command.shell or "")
        durations = {key: duration_ns(getattr(check, key)) if getattr(check, key) else 0
                     for key in ("interval", "timeout", "start_period", "start_interval")}
        flags = [f"--{k.replace('_', '-')}={getattr(check, k)}" for k in durations
                 if getattr(check, k)]
        if check.retries is not None:
            flags.append(f"--retries={check.retries}")
        shown = json.dumps(list(command.argv)) if command.argv is not None else command.shell
        original = " ".join([*flags, "CMD", shown or ""])
        return ins.HealthcheckInstruction(**self.common("HEALTHCHECK", path, original),
                                          test=test, retries=check.retries or 0, **durations)

    def stage(self, name: str, stage: Stage, index: int) -> ins.Stage:
        base: KeyPath = ("stages", name)
        platform = f"--platform={stage.platform} " if stage.platform is not None else ""
        frm = ins.FromInstruction(
            **self.common("FROM", (*base, "from"), f"{platform}{stage.from_} AS {name}"),
            base_name=stage.from_, stage_name=name, stage_name_as_written=name,
            as_keyword="AS", platform=stage.platform)
        out: list[ins.Instruction] = []
        if stage.args:
            out.append(self.args(stage.args, (*base, "args")))
        if stage.env:
            out.append(self.env(stage.env, (*base, "env")))
        if stage.shell is not None:
            out.append(ins.ShellInstruction(
                **self.common("SHELL", (*base, "shell"), json.dumps(stage.shell)),
                shell=tuple(stage.shell)))
        if stage.workdir is not None:
            out.append(ins.WorkdirInstruction(
                **self.common("WORKDIR", (*base, "workdir"), stage.workdir), path=stage.workdir))
        if stage.user is not None:
            out.append(ins.UserInstruction(**self.common("USER", (*base, "user"), stage.user),
                                           user=stage.user))
        out += [self.step(step, (*base, "steps", i)) for i, step in enumerate(stage.steps)]
        if stage.labels:
            pairs = tuple(ins.KeyValue(k, v) for k, v in stage.labels.items())
            out.append(ins.LabelInstruction(
                **self.common("LABEL", (*base, "labels"), _pairs_text(stage.labels)),
                pairs=pairs))
        if stage.expose:
            out.append(ins.ExposeInstruction(
                **self.common("EXPOSE", (*base, "expose"), " ".join(stage.expose)),
                ports=tuple(stage.expose)))
        if stage.volumes:
            out.append(ins.VolumeInstruction(
                **self.common("VOLUME", (*base, "volumes"), json.dumps(stage.volumes)),
                volumes=tuple(stage.volumes)))
        if stage.stopsignal is not None:
            out.append(ins.StopsignalInstruction(
                **self.common("STOPSIGNAL", (*base, "stopsignal"), stage.stopsignal),
                signal=stage.stopsignal))
        if stage.healthcheck is not None:
            out.append(self.healthcheck(stage.healthcheck, (*base, "healthcheck")))
        if stage.entrypoint is not None:
            out.append(self.command("ENTRYPOINT", stage.entrypoint, (*base, "entrypoint"),
                                    ins.EntrypointInstruction))
        if stage.cmd is not None:
            out.append(self.command("CMD", stage.cmd, (*base, "cmd"), ins.CmdInstruction))
        return ins.Stage(index, frm, tuple(out))


def pipeline_to_dockerfile(loaded: LoadedPipeline) -> ins.Dockerfile:
    """The pipeline as the typed instructions the Dockerfile parser would produce."""
    from pybk.core.directives import Directives
    from pybk.frontends.dockerfile.parser import ParseResult

    builder = _Builder(loaded)
    pipeline = loaded.pipeline
    meta = (builder.args(pipeline.args, ("args",)),) if pipeline.args else ()
    stages = tuple(builder.stage(name, pipeline.stages[name], i)
                   for i, name in enumerate(loaded.order))
    ast = ParseResult(children=(), directives=Directives(), warnings=(),
                      lines=tuple(loaded.doc.lines()), filename=loaded.doc.filename)
    return ins.Dockerfile(filename=loaded.doc.filename, meta_args=meta, stages=stages, ast=ast)


def default_target(loaded: LoadedPipeline, target: str | None = None) -> str:
    """The stage to build: ``target`` (checked), the pipeline's ``target``, else the last."""
    stages = loaded.pipeline.stages
    if target:
        if target not in stages:
            raise InputError(f"unknown target stage '{target}'"
                             + _suggest_stage(target, stages), filename=loaded.doc.filename)
        return target
    return loaded.pipeline.target or list(stages)[-1]


def yaml_to_llb(data: bytes, *, filename: str = "pipeline.yaml", target: str | None = None,
                named_contexts: Mapping[str, Any] = {},  # noqa: B006 - read only
                **options: Any) -> Any:
    """Convert a pipeline to LLB; ``options`` are those of
    :func:`~pybk.frontends.dockerfile.convert.dockerfile_to_llb`. Returns its ConvertResult."""
    from pybk.frontends.dockerfile.convert import convert_dockerfile

    loaded = load_pipeline(data, filename, contexts=named_contexts)
    dockerfile = pipeline_to_dockerfile(loaded)
    return convert_dockerfile(dockerfile, bytes(data), language=LANGUAGE,
                              target=default_target(loaded, target),
                              named_contexts=named_contexts, **options)


__all__ = ["LANGUAGE", "LoadedPipeline", "PipelineError", "RunStepInstruction",
           "default_target", "load_pipeline", "mount_spec", "pipeline_to_dockerfile",
           "yaml_to_llb"]
