"""The ``yaml.v0`` pipeline schema: attrs classes structured by the shared strict converter.

A value typed :data:`Text` is a string; an integer or boolean written without quotes is taken
as its text (``expose: [80]``, ``mode: 755``). :class:`Command` is a shell string or an exec
argv list. The JSON Schema for editors is generated from these classes (:func:`json_schema`).
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal, NewType

from pybk.core.converter import SchemaTypeError, setting
from pybk.core.model import NOTHING, Model, fields, has

__all__ = ["Add", "Command", "Copy", "Healthcheck", "Mount", "Pipeline", "Run", "Stage", "Step",
           "Text", "STEP_KINDS", "get_pipeline_converter", "json_schema"]

#: A string; an unquoted integer or boolean is taken as its text.
Text = NewType("Text", str)

SCHEMA_VERSION = 1
STEP_KINDS = ("run", "copy", "add", "workdir", "env", "user", "arg")
MountType = Literal["bind", "cache", "tmpfs", "secret", "ssh"]


def _doc(text: str, field: Any) -> Any:
    field.metadata["doc"] = text
    return field


def _field(text: str, key: str | None = None, **kwargs: Any) -> Any:
    return _doc(text, setting(key, **kwargs))


class Command(Model):
    """A command: a string (run by the stage's shell) or a list (exec form: the program and
    its arguments)."""

    shell: str | None = None
    argv: tuple[str, ...] | None = None

    JSON_SCHEMA: typing.ClassVar[dict] = {
        "oneOf": [{"type": "string", "description": "run by the stage's shell"},
                  {"type": "array", "items": {"type": "string"}, "minItems": 1,
                   "description": "exec form: the program and its arguments"}]}


class Mount(Model):
    """One mount of a ``run`` step (the options of ``RUN --mount``)."""

    target: Text | None = _field("where to mount it (relative: under the working directory)",
                                 default=None)
    type: MountType = _field("the kind of mount", default="bind")
    source: Text | None = _field("path inside `from` (bind, cache) or the secret's source",
                                 default=None)
    from_: str | None = _field("a stage, named context or image to mount from", "from",
                               default=None)
    readonly: bool | None = _field("read-only (default: true for bind, false otherwise)",
                                   default=None)
    id: Text | None = _field("cache id, secret id or SSH agent id", default=None)
    sharing: Literal["shared", "private", "locked"] | None = _field(
        "cache sharing mode", default=None)
    required: bool | None = _field("fail when the secret or SSH agent is missing",
                                   default=None)
    size: Text | None = _field("tmpfs size limit (`64m`)", default=None)
    mode: Text | None = _field("octal file mode (cache, secret, ssh)", default=None)
    uid: Text | None = _field("owner user id (cache, secret, ssh)", default=None)
    gid: Text | None = _field("owner group id (cache, secret, ssh)", default=None)
    env: Text | None = _field("secret: also expose it as this environment variable",
                              default=None)


class Run(Model):
    """A ``run`` step; a bare string or list is its ``command``."""

    command: Command = _field("the command (string: shell form; list: exec form; a string of "
                              "several lines is a script, `#!` scripts run by their interpreter)")
    mounts: list[Mount] = _field("mounts for this command only", factory=list)
    network: Literal["default", "none", "host"] | None = _field("network mode", default=None)
    security: Literal["sandbox", "insecure"] | None = _field("security mode", default=None)
    env: dict[str, Text] = _field("environment variables for this command only",
                                  factory=dict)
    no_cache: bool = _field("run this step again on every build, without the cache (later "
                            "steps that depend on it run again too)", "no-cache", default=False)


class Copy(Model):
    """A ``copy`` step (``COPY``)."""

    src: list[Text] = _field("source paths (a string or a list)")
    dest: Text = _field("destination (ends with / for a directory)")
    from_: str | None = _field("copy from a stage, named context or image instead of the "
                               "build context", "from", default=None)
    chown: Text | None = _field("owner `user[:group]`", default=None)
    chmod: Text | None = _field("mode, octal (`755`) or symbolic (`u+x`)", default=None)
    link: bool = _field("copy into a layer of its own (`COPY --link`)", default=False)
    parents: bool = _field("keep the source's parent directories (`COPY --parents`)",
                           default=False)
    exclude: list[Text] = _field("patterns of paths not to copy", factory=list)
    no_cache: bool = _field("run this step again on every build, without the cache (later "
                            "steps that depend on it run again too)", "no-cache", default=False)


class Add(Model):
    """An ``add`` step (``ADD``): like copy, plus URLs, git repositories and archives."""

    src: list[Text] = _field("sources: paths, http(s) URLs, git repositories")
    dest: Text = _field("destination (ends with / for a directory)")
    chown: Text | None = _field("owner `user[:group]`", default=None)
    chmod: Text | None = _field("mode, octal (`755`) or symbolic (`u+x`)", default=None)
    link: bool = _field("add into a layer of its own", default=False)
    exclude: list[Text] = _field("patterns of paths not to add", factory=list)
    checksum: Text | None = _field("expected `sha256:…` of a URL, or commit of a git source",
                                   default=None)
    keep_git_dir: bool | None = _field("keep the `.git` directory of a git source",
                                       "keep-git-dir", default=None)
    unpack: bool | None = _field("unpack archives (default: local archives yes, URLs no)",
                                 default=None)
    no_cache: bool = _field("run this step again on every build, without the cache (later "
                            "steps that depend on it run again too)", "no-cache", default=False)


class Step(Model):
    """One step: exactly one of its keys."""

    run: Run | None = _field("run a command", default=None)
    copy: Copy | None = _field("copy files", default=None)
    add: Add | None = _field("add files, URLs, git repositories", default=None)
    workdir: Text | None = _field("change (and create) the working directory", default=None)
    env: dict[str, Text] | None = _field("set environment variables", default=None)
    user: Text | None = _field("change the user", default=None)
    arg: dict[str, Text | None] | None = _field(
        "declare build args (null: no default)", default=None)

    JSON_ONE_OF: typing.ClassVar[bool] = True


class Healthcheck(Model):
    """The image's health check (``HEALTHCHECK``); ``disable: true`` is ``HEALTHCHECK NONE``."""

    test: Command | None = _field("the check command", default=None)
    interval: Text | None = _field("time between checks (`30s`)", default=None)
    timeout: Text | None = _field("time a check may take", default=None)
    start_period: Text | None = _field("grace period after start", "start-period",
                                       default=None)
    start_interval: Text | None = _field("time between checks during the start period",
                                         "start-interval", default=None)
    retries: int | None = _field("failures before unhealthy", default=None)
    disable: bool = _field("disable the base image's health check", default=False)


class Stage(Model):
    """A build stage."""

    from_: str = _field("base: an image, `scratch`, another stage or a named context", "from")
    platform: Text | None = _field("platform of the base (`linux/arm64`, `$BUILDPLATFORM`)",
                                   default=None)
    args: dict[str, Text | None] = _field("build args of the stage (null: no default)",
                                          factory=dict)
    env: dict[str, Text] = _field("environment variables", factory=dict)
    shell: list[str] | None = _field("shell for string commands (default `/bin/sh -c`)",
                                     default=None)
    workdir: Text | None = _field("working directory (created)", default=None)
    user: Text | None = _field("user for the steps and the image", default=None)
    steps: list[Step] = _field("the steps, in order", factory=list)
    labels: dict[str, Text] = _field("image labels", factory=dict)
    expose: list[Text] = _field("exposed ports (`80`, `53/udp`)", factory=list)
    volumes: list[Text] = _field("volume paths", factory=list)
    stopsignal: Text | None = _field("stop signal (`SIGTERM`)", default=None)
    healthcheck: Healthcheck | None = _field("health check", default=None)
    entrypoint: Command | None = _field("image entrypoint", default=None)
    cmd: Command | None = _field("image default command", default=None)


class Pipeline(Model):
    """A ``yaml.v0`` pipeline."""

    version: int = _field("schema version (1)")
    stages: dict[str, Stage] = _field("the stages, by name (lower-case)")
    args: dict[str, Text | None] = _field("global build args, usable in `from` and `platform` "
                                          "(null: no default)", factory=dict)
    target: str | None = _field("the stage built by default (default: the last one)",
                                default=None)


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _text(value: object, _: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    raise SchemaTypeError(f"expected a string, got {_describe(value)}")


def _command(value: object, _: Any) -> Command:
    if isinstance(value, str):
        return Command(shell=value)
    if isinstance(value, list) and value:
        bad = [i for i, v in enumerate(value) if not isinstance(v, (str, int))
               or isinstance(v, bool)]
        if bad:
            raise SchemaTypeError(f"item {bad[0]}: expected a string, got "
                                  f"{_describe(value[bad[0]])}")
        return Command(argv=tuple(str(v) for v in value))
    raise SchemaTypeError(f"expected a string or a non-empty list of strings, got "
                          f"{_describe(value)}")


@functools.cache
def get_pipeline_converter() -> Any:
    """The shared converter with the pipeline's hooks registered (once)."""
    from pybk.core.converter import get_converter

    conv = get_converter()
    conv.register_structure_hook(Text, _text)
    conv.register_structure_hook(Command, _command)
    run_hook = conv.get_structure_hook(Run)

    def run(value: object, tp: Any) -> Run:
        if isinstance(value, (str, list)):
            value = {"command": value}
        return run_hook(value, tp)

    conv.register_structure_hook(Run, run)
    for cls in (Copy, Add):
        conv.register_structure_hook(cls, _sources_hook(conv.get_structure_hook(cls)))
    return conv


def _sources_hook(inner: Any) -> Any:
    def hook(value: object, tp: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("src"), (str, int)):
            value = {**value, "src": [value["src"]]}
        return inner(value, tp)

    return hook


# --------------------------------------------------------------------------------------------
# JSON Schema
# --------------------------------------------------------------------------------------------

_TEXT_SCHEMA = {"type": ["string", "integer", "boolean"]}


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Text:
        return dict(_TEXT_SCHEMA)
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schema = _type_schema(inner[0], defs) if len(inner) == 1 else \
            {"anyOf": [_type_schema(a, defs) for a in inner]}
        return {"anyOf": [schema, {"type": "null"}]}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs)}
    if isinstance(tp, type) and has(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}
            defs[name] = _class_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _description(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split()).replace("``", "`")


def _class_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    from pybk.core.converter import external_key

    if hasattr(cls, "JSON_SCHEMA"):
        return {"description": _description(cls), **cls.JSON_SCHEMA}
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required = []
    for a in fields(cls):
        key = external_key(a)
        schema = _type_schema(hints[a.name], defs)
        if key == "src":  # one source may be given as a string
            schema = {"anyOf": [dict(_TEXT_SCHEMA), schema]}
        if a.metadata.get("doc"):
            schema = {**schema, "description": a.metadata["doc"]}
        props[key] = schema
        if a.default is NOTHING:
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "description": _description(cls),
                              "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    if getattr(cls, "JSON_ONE_OF", False):
        schema["minProperties"] = schema["maxProperties"] = 1
    if cls is Run:
        return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                          schema]}
    if cls is Pipeline:
        schema["properties"]["version"] = {**props["version"], "const": SCHEMA_VERSION}
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline file."""
    defs: dict[str, Any] = {}
    root = _class_schema(Pipeline, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "pybk yaml.v0 pipeline", **root, "$defs": defs}
