"""Reading and checking a ``yaml.v0`` pipeline.

:func:`load_pipeline` reads the file and checks it, reporting every problem at once with its
``file:line:column`` and key path (:class:`PipelineError`): types, names, references between
stages (and their cycles), and the values the Dockerfile parser would reject.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pybk.core.converter import KeyPath, SchemaTypeError, problems_from_exception, render_path
from pybk.core.didyoumean import did_you_mean
from pybk.core.errors import InputError
from pybk.core.model import Model, evolve, field, fields
from pybk.frontends.dockerfile.errors import InstructionError
from pybk.frontends.dockerfile.mounts import parse_mount
from pybk.frontends.dockerfile.values import go_parse_duration, parse_chmod, parse_signal
from pybk.frontends.yaml.loader import Document, YamlSyntaxError, load_document
from pybk.frontends.yaml.schema import (
    SCHEMA_VERSION,
    STEP_KINDS,
    Add,
    Copy,
    Healthcheck,
    Mount,
    Pipeline,
    Run,
    Stage,
    get_pipeline_converter,
)

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


class _Problems(Model, frozen=False):
    doc: Document
    items: list[tuple[int, int, str, str]] = field(factory=list)

    def add(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        mark = self.doc.mark(path, key=key)
        self.items.append((mark.line, mark.column, render_path(path), message))

    def raise_if_any(self) -> None:
        if self.items:
            unique = list(dict.fromkeys(self.items))
            raise PipelineError(self.doc.filename, unique, self.doc.lines())


class LoadedPipeline(Model):
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
    except (BaseValidationError, SchemaTypeError) as exc:
        # a part of the wrong type altogether (a stage or step that is a string) fails in the
        # top-level hook, outside cattrs' validation errors
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
            stages[name] = evolve(stage, steps=steps)
    if top is None:  # still check the stages (the top-level problems are already known)
        return Pipeline(version=SCHEMA_VERSION, stages=stages), broken
    return evolve(top, stages=stages), broken


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
    for a in fields(Mount):
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
        extra = [a.name for a in fields(Healthcheck)
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
