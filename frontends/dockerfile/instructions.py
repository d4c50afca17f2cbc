"""Dockerfile nodes → typed instructions, validated as BuildKit's ``instructions`` package does
(``instructions/parse.go``), and :class:`Expander` for expanding their words later.

The instruction types are in :mod:`~pybk.frontends.dockerfile.commands`, flags in
:mod:`~pybk.frontends.dockerfile.flags`, ``--mount`` values in
:mod:`~pybk.frontends.dockerfile.mounts`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from pybk.core.didyoumean import did_you_mean
from pybk.core.model import Model
from pybk.frontends.dockerfile.commands import (
    AddInstruction,
    ArgInstruction,
    ArgSpec,
    CmdInstruction,
    CopyInstruction,
    Dockerfile,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    FromInstruction,
    HealthcheckInstruction,
    Instruction,
    KeyValue,
    LabelInstruction,
    Location,
    MaintainerInstruction,
    OnbuildInstruction,
    RunInstruction,
    ShellInstruction,
    SourceContent,
    Stage,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from pybk.frontends.dockerfile.errors import DockerfileParseError, InstructionError
from pybk.frontends.dockerfile.flags import BOOL, STRING, STRINGS, parse_flags
from pybk.frontends.dockerfile.mounts import parse_mount
from pybk.frontends.dockerfile.parser import Node, parse, parse_heredoc_word
from pybk.frontends.dockerfile.shell import Lexer, ShellExpansionError, WordResult
from pybk.frontends.dockerfile.values import go_parse_duration, parse_chmod, parse_signal


def _interval(flags: Mapping[str, object], name: str) -> int:
    value = str(flags.get(name, ""))
    if not value:
        return 0
    try:
        duration = go_parse_duration(value)
    except ValueError as err:
        raise InstructionError(str(err)) from None
    if duration == 0:
        return 0
    if duration < 1_000_000:
        raise InstructionError(f'Interval "{name}" cannot be less than 1ms')
    return duration


INSTRUCTION_NAMES = (
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
    "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
)  # fmt: skip

_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")


#: the pybk extension a step flag belongs to, and the directive that opts in to it
_EXTENSION_FLAGS = {"no-cache": "no-cache"}


class _Request(Model):
    node: Node
    common: dict
    args: tuple[str, ...]
    extensions: frozenset[str] = frozenset()

    def flags(self, spec: Mapping[str, str]) -> dict[str, object]:
        return parse_flags(self.node.flags, spec)

    def step_flags(self, spec: Mapping[str, str]) -> dict[str, object]:
        """Flags of RUN, COPY and ADD: also ``--no-cache`` when the file opts in to it with
        ``# pybk=no-cache`` (BuildKit does not know the flag, so a file without the directive
        is refused as BuildKit refuses it, with a hint). Sets ``common["no_cache"]``."""
        extra = {name: BOOL for name, ext in _EXTENSION_FLAGS.items() if ext in self.extensions}
        try:
            flags = parse_flags(self.node.flags, {**spec, **extra})
        except InstructionError as err:
            for name, ext in _EXTENSION_FLAGS.items():
                if name not in extra and str(err).startswith(f"unknown flag: {name}"):
                    raise InstructionError(
                        f"unknown flag: {name} (--{name} is a pybk extension: opt in with the "
                        f"parser directive '# pybk={ext}' at the top of the file)") from None
            raise
        self.common["no_cache"] = bool(flags.pop("no-cache", False))
        return flags


def _key_values(args: Sequence[str], command: str) -> tuple[KeyValue, ...]:
    if not args:
        raise InstructionError(f"{command} requires at least one argument")
    if len(args) % 3:
        raise InstructionError(f"Bad input to {command}, too many arguments")
    pairs = []
    for i in range(0, len(args), 3):
        key, value, delim = args[i : i + 3]
        if not key:
            raise InstructionError(f"{command} names can not be blank")
        pairs.append(KeyValue(key, value, delim == ""))
    return tuple(pairs)


def _exactly_one(req: _Request, command: str) -> str:
    if len(req.args) != 1:
        raise InstructionError(f"{command} requires exactly one argument")
    return req.args[0]


def _command_line(req: _Request) -> tuple[tuple[str, ...], bool]:
    return req.args, not req.node.json


def _sources_and_dest(
    req: _Request, command: str
) -> tuple[tuple[str, ...], str, tuple[SourceContent, ...]]:
    *sources, dest = req.args
    if parse_heredoc_word(dest) is not None:
        raise InstructionError(f"{command} cannot accept a heredoc as a destination")
    paths: list[str] = []
    contents: list[SourceContent] = []
    remaining = list(req.node.heredocs)
    for src in sources:
        doc = parse_heredoc_word(src) if remaining else None
        if doc is not None:
            body = remaining.pop(0)
            contents.append(SourceContent(doc.name, body.body, doc.expand))
        else:
            paths.append(src)
    return tuple(paths), dest, tuple(contents)


def _no_flags(req: _Request) -> None:
    req.flags({})


def _parse_from(req: _Request) -> FromInstruction:
    args = req.args
    stage = written = as_keyword = None
    if len(args) == 3 and args[1].lower() == "as":
        written, as_keyword = args[2], args[1]
        stage = written.lower()
        if not _STAGE_NAME.match(stage):
            raise InstructionError(
                f'invalid name for build stage: "{written}", name can\'t start with a number '
                "or contain symbols"
            )
    elif len(args) != 1:
        raise InstructionError("FROM requires either one or three arguments")
    flags = req.flags({"platform": STRING})
    return FromInstruction(
        **req.common,
        base_name=args[0],
        stage_name=stage,
        stage_name_as_written=written,
        as_keyword=as_keyword,
        platform=flags.get("platform"),  # type: ignore[arg-type]
    )


def _parse_run(req: _Request) -> RunInstruction:
    flags = req.step_flags({"mount": STRINGS, "network": STRING, "security": STRING})
    network = flags.get("network")
    if network is not None and network not in ("default", "none", "host"):
        raise InstructionError(f'unsupported network mode "{network}"')
    security = flags.get("security")
    if security is not None and security not in ("sandbox", "insecure"):
        raise InstructionError(f'unsupported security mode "{security}"')
    specs = tuple(flags.get("mount", ()))  # type: ignore[arg-type]
    for spec in specs:
        parse_mount(spec, None)
    mounts = None
    if not any("$" in spec for spec in specs):
        mounts = tuple(parse_mount(spec, lambda value: value) for spec in specs)
    command, prepend = _command_line(req)
    return RunInstruction(
        **req.common,
        command=command,
        prepend_shell=prepend,
        mount_specs=specs,
        mounts=mounts,  # type: ignore[arg-type]
        network=network,  # type: ignore[arg-type]
        security=security,  # type: ignore[arg-type]
    )


def _parse_cmd(req: _Request) -> CmdInstruction:
    _no_flags(req)
    command, prepend = _command_line(req)
    return CmdInstruction(**req.common, command=command, prepend_shell=prepend)


def _parse_entrypoint(req: _Request) -> EntrypointInstruction:
    _no_flags(req)
    command, prepend = _command_line(req)
    return EntrypointInstruction(**req.common, command=command, prepend_shell=prepend)


def _parse_shell(req: _Request) -> ShellInstruction:
    _no_flags(req)
    if not req.args:
        raise InstructionError("SHELL requires at least one argument")
    if not req.node.json:
        raise InstructionError("SHELL requires the arguments to be in JSON form")
    return ShellInstruction(**req.common, shell=req.args)


def _parse_env(req: _Request) -> EnvInstruction:
    _no_flags(req)
    return EnvInstruction(**req.common, pairs=_key_values(req.args, "ENV"))


def _parse_label(req: _Request) -> LabelInstruction:
    _no_flags(req)
    return LabelInstruction(**req.common, pairs=_key_values(req.args, "LABEL"))


def _parse_maintainer(req: _Request) -> MaintainerInstruction:
    _no_flags(req)
    return MaintainerInstruction(**req.common, maintainer=_exactly_one(req, "MAINTAINER"))


def _parse_expose(req: _Request) -> ExposeInstruction:
    _no_flags(req)
    if not req.args:
        raise InstructionError("EXPOSE requires at least one argument")
    return ExposeInstruction(**req.common, ports=req.args)


def _checked_chmod(value: str) -> str:
    if value and "$" not in value:
        try:
            parse_chmod(value)
        except ValueError as err:
            raise InstructionError(str(err)) from None
    return value


def _parse_add(req: _Request) -> AddInstruction:
    if len(req.args) < 2:
        raise InstructionError(
            "ADD requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    flags = req.step_flags(
        {
            "chown": STRING,
            "chmod": STRING,
            "link": BOOL,
            "keep-git-dir": BOOL,
            "checksum": STRING,
            "exclude": STRINGS,
            "unpack": BOOL,
        }
    )
    sources, dest, contents = _sources_and_dest(req, "ADD")
    return AddInstruction(
        **req.common,
        sources=sources,
        dest=dest,
        source_contents=contents,
        chown=str(flags.get("chown", "")),
        chmod=_checked_chmod(str(flags.get("chmod", ""))),
        link=bool(flags.get("link", False)),
        keep_git_dir=flags.get("keep-git-dir"),  # type: ignore[arg-type]
        checksum=str(flags.get("checksum", "")),
        unpack=flags.get("unpack"),  # type: ignore[arg-type]
        excludes=tuple(flags.get("exclude", ())),  # type: ignore[arg-type]
    )


def _parse_copy(req: _Request) -> CopyInstruction:
    if len(req.args) < 2:
        raise InstructionError(
            "COPY requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    flags = req.step_flags(
        {
            "from": STRING,
            "chown": STRING,
            "chmod": STRING,
            "link": BOOL,
            "parents": BOOL,
            "exclude": STRINGS,
        }
    )
    from_ = str(flags.get("from", ""))
    if "$" in from_:
        raise InstructionError(
            "'from' doesn't support variable expansion, define alias stage instead"
        )
    sources, dest, contents = _sources_and_dest(req, "COPY")
    return CopyInstruction(
        **req.common,
        sources=sources,
        dest=dest,
        source_contents=contents,
        from_=from_,
        chown=str(flags.get("chown", "")),
        chmod=_checked_chmod(str(flags.get("chmod", ""))),
        link=bool(flags.get("link", False)),
        parents=bool(flags.get("parents", False)),
        excludes=tuple(flags.get("exclude", ())),  # type: ignore[arg-type]
    )


def _parse_volume(req: _Request) -> VolumeInstruction:
    _no_flags(req)
    if not req.args:
        raise InstructionError("VOLUME requires at least one argument")
    for volume in req.args:
        if not volume.strip():
            raise InstructionError("VOLUME specified can not be an empty string")
    return VolumeInstruction(**req.common, volumes=req.args)


def _parse_user(req: _Request) -> UserInstruction:
    _no_flags(req)
    return UserInstruction(**req.common, user=_exactly_one(req, "USER"))


def _parse_workdir(req: _Request) -> WorkdirInstruction:
    _no_flags(req)
    return WorkdirInstruction(**req.common, path=_exactly_one(req, "WORKDIR"))


def _parse_arg(req: _Request) -> ArgInstruction:
    _no_flags(req)
    if not req.args:
        raise InstructionError("ARG requires at least one argument")
    specs = []
    for word in req.args:
        key, has_value, value = word.partition("=")
        if not key:
            raise InstructionError("ARG names can not be blank")
        specs.append(ArgSpec(key, value if has_value else None))
    return ArgInstruction(**req.common, args=tuple(specs))


def _parse_onbuild(req: _Request) -> OnbuildInstruction:
    trigger = req.node.trigger
    if trigger is None:
        raise InstructionError("ONBUILD requires at least one argument")
    _no_flags(req)
    keyword = trigger.keyword.upper()
    if keyword == "ONBUILD":
        raise InstructionError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if keyword in ("MAINTAINER", "FROM"):
        raise InstructionError(f"{keyword} isn't allowed as an ONBUILD trigger")
    expression = re.sub(r"(?i)^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", "", req.node.original, count=1)
    for doc in req.node.heredocs:
        expression += "\n" + doc.content + doc.name
    return OnbuildInstruction(
        **req.common, trigger_keyword=keyword, expression=expression, trigger=trigger
    )


def _parse_stopsignal(req: _Request) -> StopsignalInstruction:
    _no_flags(req)
    signal = _exactly_one(req, "STOPSIGNAL")
    if "$" not in signal:
        try:
            parse_signal(signal)
        except ValueError as err:
            raise InstructionError(str(err)) from None
    return StopsignalInstruction(**req.common, signal=signal)


def _parse_healthcheck(req: _Request) -> HealthcheckInstruction:
    if not req.args:
        raise InstructionError("HEALTHCHECK requires at least one argument")
    kind = req.args[0].upper()
    rest = req.args[1:]
    if kind == "NONE":
        if rest:
            raise InstructionError("HEALTHCHECK NONE takes no arguments")
        return HealthcheckInstruction(**req.common, test=("NONE",))
    flags = req.flags(
        {
            "interval": STRING,
            "timeout": STRING,
            "start-period": STRING,
            "start-interval": STRING,
            "retries": STRING,
        }
    )
    if kind != "CMD":
        raise InstructionError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    if not rest:
        raise InstructionError("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *rest) if req.node.json else ("CMD-SHELL", *rest)
    retries = 0
    retries_text = str(flags.get("retries", ""))
    if retries_text:
        if not re.fullmatch(r"[+-]?[0-9]+", retries_text) or not (
            -(2**31) <= int(retries_text) < 2**31
        ):
            raise InstructionError(f'strconv.ParseInt: parsing "{retries_text}": invalid syntax')
        retries = int(retries_text)
        if retries < 0:
            raise InstructionError(f"--retries cannot be negative ({retries})")
    return HealthcheckInstruction(
        **req.common,
        test=test,
        interval=_interval(flags, "interval"),
        timeout=_interval(flags, "timeout"),
        start_period=_interval(flags, "start-period"),
        start_interval=_interval(flags, "start-interval"),
        retries=retries,
    )


_PARSERS: dict[str, Callable[[_Request], Instruction]] = {
    "add": _parse_add,
    "arg": _parse_arg,
    "cmd": _parse_cmd,
    "copy": _parse_copy,
    "entrypoint": _parse_entrypoint,
    "env": _parse_env,
    "expose": _parse_expose,
    "from": _parse_from,
    "healthcheck": _parse_healthcheck,
    "label": _parse_label,
    "maintainer": _parse_maintainer,
    "onbuild": _parse_onbuild,
    "run": _parse_run,
    "shell": _parse_shell,
    "stopsignal": _parse_stopsignal,
    "user": _parse_user,
    "volume": _parse_volume,
    "workdir": _parse_workdir,
}


def _error_at(
    message: str, node: Node, filename: str, lines: Sequence[str] = ()
) -> DockerfileParseError:
    source = lines[node.start_line - 1] if 0 < node.start_line <= len(lines) else node.original
    return DockerfileParseError(
        message,
        filename=filename,
        line=node.start_line,
        end_line=node.end_line,
        source_line=source,
    )


def parse_instruction(
    node: Node, filename: str = "Dockerfile", lines: Sequence[str] = (),
    extensions: frozenset[str] = frozenset(),
) -> Instruction:
    """Turn one parser node into its typed instruction, validating flags and arguments;
    ``extensions`` are the pybk extensions the file opts in to (``# pybk=``)."""
    parser = _PARSERS.get(node.command)
    if parser is None:
        message = f"unknown instruction: {node.keyword}" + did_you_mean(
            node.keyword, [name.upper() for name in INSTRUCTION_NAMES], case_sensitive=False
        )
        raise _error_at(message, node, filename, lines)
    common = {
        "keyword": node.keyword,
        "location": Location(filename, node.start_line, node.end_line),
        "original": node.original,
        "flags": node.flags,
        "heredocs": node.heredocs,
        "comments": node.prev_comments,
    }
    try:
        return parser(_Request(node, common, node.args, extensions))
    except InstructionError as err:
        raise _error_at(str(err), node, filename, lines) from None


def parse_dockerfile(data: bytes | str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile into global ARGs and stages of typed instructions.

    Raises :class:`DockerfileParseError` with the file, line and offending line.
    """
    ast = parse(data, filename)
    meta_args: list[ArgInstruction] = []
    stages: list[tuple[FromInstruction, list[Instruction]]] = []
    for node in ast.children:
        instruction = parse_instruction(node, filename, ast.lines, ast.directives.extensions)
        if isinstance(instruction, FromInstruction):
            stages.append((instruction, []))
        elif not stages:
            if not isinstance(instruction, ArgInstruction):
                raise _error_at("no build stage in current context", node, filename, ast.lines)
            meta_args.append(instruction)
        else:
            stages[-1][1].append(instruction)
    return Dockerfile(
        filename=filename,
        meta_args=tuple(meta_args),
        stages=tuple(
            Stage(index, first, tuple(rest)) for index, (first, rest) in enumerate(stages)
        ),
        ast=ast,
    )


# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------


class Expander:
    """Expands words of one instruction with ARG/ENV values, remembering the names used.

    ``used`` collects names that were found, ``undefined`` names that were looked up but unset
    (for unused-arg reporting and the UndefinedVar check). Errors are located at ``location``.
    """

    def __init__(
        self, env: Mapping[str, str], escape: str = "\\", location: Location | None = None
    ):
        self.env = env
        self.lexer = Lexer(escape=escape)
        self.location = location
        self.used: set[str] = set()
        self.undefined: set[str] = set()

    def _process(self, text: str) -> WordResult:
        try:
            result = self.lexer.process(text, self.env)
        except ShellExpansionError as err:
            if self.location is None:
                raise
            raise DockerfileParseError(
                err.message,
                filename=self.location.filename,
                line=self.location.start_line,
                end_line=self.location.end_line,
            ) from None
        self.used |= result.matched
        self.undefined |= result.unmatched
        return result

    def word(self, text: str) -> str:
        """Expand ``text`` as one word."""
        return self._process(text).result

    def words(self, text: str) -> list[str]:
        """Expand ``text`` and split it into words."""
        return list(self._process(text).words)
