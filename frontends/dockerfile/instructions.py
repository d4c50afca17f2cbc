"""Typed Dockerfile instructions with their flags, validated as BuildKit's ``instructions``
package does, and grouped into build stages.

Words are kept raw (unexpanded); expansion with ARG/ENV values happens during conversion,
through :class:`Expander`. Every instruction carries its :class:`Location` and original text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import attrs

from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.parser import Heredoc, Node, ParseResult, parse, parse_heredoc_word
from pybk.frontends.dockerfile.shell import (
    Lexer,
    ShellExpansionError,
    WordResult,
)

# ---------------------------------------------------------------------------------------------
# Common data
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Location:
    """Where an instruction is: file name and 1-based first/last physical line."""

    filename: str
    start_line: int
    end_line: int

    def __str__(self) -> str:
        if self.end_line != self.start_line:
            return f"{self.filename}:{self.start_line}-{self.end_line}"
        return f"{self.filename}:{self.start_line}"


@attrs.frozen
class KeyValue:
    """One ``key=value`` of ENV or LABEL; ``no_delim`` marks the legacy ``KEY value`` form."""

    key: str
    value: str
    no_delim: bool = False


@attrs.frozen
class ArgSpec:
    """One name of an ARG instruction; ``default`` is None when no ``=`` was given."""

    key: str
    default: str | None = None


@attrs.frozen
class SourceContent:
    """A heredoc used as an ADD/COPY source: file name, body and whether to expand it."""

    path: str
    data: str
    expand: bool


@attrs.frozen
class Mount:
    """One ``RUN --mount`` (BuildKit ``instructions.Mount``)."""

    type: str = "bind"
    from_: str = ""
    source: str = ""
    target: str = ""
    read_only: bool = True
    required: bool = False
    size_limit: int = 0
    cache_id: str = ""
    sharing: str = ""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None


# ---------------------------------------------------------------------------------------------
# Instructions
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Instruction:
    """Fields every instruction has. ``keyword`` is as written; ``flags`` the raw flag words."""

    keyword: str
    location: Location
    original: str
    flags: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()
    comments: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The upper-case instruction name (``RUN``)."""
        return self.keyword.upper()


@attrs.frozen(kw_only=True)
class FromInstruction(Instruction):
    base_name: str
    stage_name: str | None = None
    stage_name_as_written: str | None = None
    as_keyword: str | None = None
    platform: str | None = None


@attrs.frozen(kw_only=True)
class RunInstruction(Instruction):
    """``command`` is one shell string (``prepend_shell``) or the exec-form argv."""

    command: tuple[str, ...]
    prepend_shell: bool
    mount_specs: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] | None = None
    network: str | None = None
    security: str | None = None

    def expanded_mounts(self, expand: Callable[[str], str]) -> tuple[Mount, ...]:
        """The mounts with their values expanded (``from`` is never expanded)."""
        return tuple(parse_mount(spec, expand) for spec in self.mount_specs)


@attrs.frozen(kw_only=True)
class CmdInstruction(Instruction):
    command: tuple[str, ...]
    prepend_shell: bool


@attrs.frozen(kw_only=True)
class EntrypointInstruction(Instruction):
    command: tuple[str, ...]
    prepend_shell: bool


@attrs.frozen(kw_only=True)
class ShellInstruction(Instruction):
    shell: tuple[str, ...]


@attrs.frozen(kw_only=True)
class EnvInstruction(Instruction):
    pairs: tuple[KeyValue, ...]


@attrs.frozen(kw_only=True)
class LabelInstruction(Instruction):
    pairs: tuple[KeyValue, ...]


@attrs.frozen(kw_only=True)
class MaintainerInstruction(Instruction):
    maintainer: str


@attrs.frozen(kw_only=True)
class ExposeInstruction(Instruction):
    ports: tuple[str, ...]


@attrs.frozen(kw_only=True)
class AddInstruction(Instruction):
    sources: tuple[str, ...]
    dest: str
    source_contents: tuple[SourceContent, ...] = ()
    chown: str = ""
    chmod: str = ""
    link: bool = False
    keep_git_dir: bool | None = None
    checksum: str = ""
    unpack: bool | None = None
    excludes: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class CopyInstruction(Instruction):
    sources: tuple[str, ...]
    dest: str
    source_contents: tuple[SourceContent, ...] = ()
    from_: str = ""
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    excludes: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class VolumeInstruction(Instruction):
    volumes: tuple[str, ...]


@attrs.frozen(kw_only=True)
class UserInstruction(Instruction):
    user: str


@attrs.frozen(kw_only=True)
class WorkdirInstruction(Instruction):
    path: str


@attrs.frozen(kw_only=True)
class ArgInstruction(Instruction):
    args: tuple[ArgSpec, ...]


@attrs.frozen(kw_only=True)
class OnbuildInstruction(Instruction):
    """``expression`` is the trigger text (heredoc bodies re-attached) run in child builds."""

    trigger_keyword: str
    expression: str
    trigger: Node


@attrs.frozen(kw_only=True)
class StopsignalInstruction(Instruction):
    signal: str


@attrs.frozen(kw_only=True)
class HealthcheckInstruction(Instruction):
    """``test`` is ``("NONE",)``, ``("CMD", argv…)`` or ``("CMD-SHELL", cmd)``; durations are
    nanoseconds (0 = unset), as in Docker's HealthConfig."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@attrs.frozen
class Stage:
    """One build stage: its FROM and the instructions after it."""

    index: int
    from_instruction: FromInstruction
    instructions: tuple[Instruction, ...]

    @property
    def name(self) -> str | None:
        return self.from_instruction.stage_name

    @property
    def base_name(self) -> str:
        return self.from_instruction.base_name

    @property
    def platform(self) -> str | None:
        return self.from_instruction.platform

    @property
    def location(self) -> Location:
        return self.from_instruction.location


@attrs.frozen
class Dockerfile:
    """A parsed Dockerfile: global ARGs (before the first FROM), stages, directives."""

    filename: str
    meta_args: tuple[ArgInstruction, ...]
    stages: tuple[Stage, ...]
    ast: ParseResult

    @property
    def escape(self) -> str:
        return self.ast.escape

    @property
    def directives(self):
        return self.ast.directives

    @property
    def warnings(self):
        return self.ast.warnings

    def stage(self, name_or_index: str | int) -> Stage:
        """A stage by (case-insensitive) name or by index; KeyError when absent."""
        if isinstance(name_or_index, int) or name_or_index.isdigit():
            index = int(name_or_index)
            if 0 <= index < len(self.stages):
                return self.stages[index]
        else:
            wanted = name_or_index.lower()
            for stage in self.stages:
                if stage.name == wanted:
                    return stage
        raise KeyError(name_or_index)


# ---------------------------------------------------------------------------------------------
# Flags (BuildKit ``bflag.go``)
# ---------------------------------------------------------------------------------------------


class InstructionError(Exception):
    """Internal: an instruction is invalid; located by :func:`parse_instruction`."""


def levenshtein(a: str, b: str) -> int:
    """Edit distance between two strings."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def suggest(value: str, options: Sequence[str], case_sensitive: bool = True) -> str | None:
    """The closest option when it is close enough to be a likely typo."""
    best, best_distance = None, None
    probe = value if case_sensitive else value.lower()
    for option in options:
        distance = levenshtein(probe, option if case_sensitive else option.lower())
        if best_distance is None or distance < best_distance:
            best, best_distance = option, distance
    if best is None or best_distance is None:
        return None
    if best_distance == 0 and not case_sensitive and best != value:
        return best
    if 0 < best_distance <= max(2, len(value) // 3) and best_distance < len(value) - 1:
        return best
    return None


def with_suggestion(message: str, value: str, options: Sequence[str], case_sensitive=True) -> str:
    match = suggest(value, options, case_sensitive)
    return f"{message} (did you mean {match}?)" if match else message


_BOOL, _STRING, _STRINGS = "bool", "string", "strings"
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_parse_bool(value: str) -> bool:
    """Go ``strconv.ParseBool``; raises ValueError."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def _parse_flags(words: Sequence[str], spec: Mapping[str, str]) -> dict[str, object]:
    """Apply BuildKit's flag rules; returns name → bool / str / list[str] for given flags."""
    values: dict[str, object] = {}
    for word in words:
        if not word.startswith("--"):
            raise InstructionError(f"arg should start with -- : {word}")
        if word == "--":
            break
        name, has_value, value = word[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise InstructionError(with_suggestion(f"unknown flag: {name}", name, sorted(spec)))
        if name in values and kind != _STRINGS:
            raise InstructionError(f"duplicate flag specified: {name}")
        if kind == _BOOL:
            if not has_value:
                values[name] = True
                continue
            lowered = value.lower()
            if lowered not in ("true", "false"):
                raise InstructionError(f"expecting boolean value for flag {name}, not: {value}")
            values[name] = lowered == "true"
        elif not has_value:
            raise InstructionError(f"missing a value on flag: {name}")
        elif kind == _STRING:
            values[name] = value
        else:
            values.setdefault(name, []).append(value)  # type: ignore[union-attr]
    return values


# ---------------------------------------------------------------------------------------------
# Values: durations, signals, chmod, mounts
# ---------------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def go_parse_duration(text: str) -> int:
    """Go ``time.ParseDuration`` → nanoseconds; raises ValueError with Go's message."""
    original = text
    quoted = '"' + original + '"'
    sign = 1
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        scale = _DURATION_UNITS.get(unit)
        if scale is None:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale / (10 ** len(frac))
        pos = match.end()
    if total > 2**63 - 1:
        raise ValueError(f"time: invalid duration {quoted}")
    return sign * int(total)


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


_SIGNALS = {
    "ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1,
    "ILL": 4, "INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27,
    "PWR": 30, "QUIT": 3, "SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15,
    "TRAP": 5, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12,
    "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25, "RTMIN": 34, "RTMAX": 64,
}  # fmt: skip
_SIGNALS.update({f"RTMIN+{i}": 34 + i for i in range(1, 16)})
_SIGNALS.update({f"RTMAX-{i}": 64 - i for i in range(1, 15)})


def parse_signal(value: str) -> int:
    """moby ``signal.ParseSignal``: a number or a name with or without ``SIG``."""
    if re.fullmatch(r"[+-]?[0-9]+", value):
        number = int(value)
        if number == 0:
            raise ValueError(f"invalid signal: {value}")
        return number
    upper = value.upper()
    number = _SIGNALS.get(upper[3:] if upper.startswith("SIG") else upper)
    if number is None:
        raise ValueError(f"invalid signal: {value}")
    return number


_SYMBOLIC_CLAUSE = re.compile(r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+")


def parse_chmod(value: str) -> int | str:
    """An octal mode (``755``) as int, or a validated symbolic mode (``u+x,go=rX``) as str."""
    if re.fullmatch(r"[0-7]+", value):
        mode = int(value, 8)
        if mode <= 0o7777:
            return mode
    elif value and all(_SYMBOLIC_CLAUSE.fullmatch(part) for part in value.split(",")):
        return value
    raise ValueError(f"invalid chmod parameter: {value!r}")


_RAM_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")


def ram_in_bytes(value: str) -> int:
    """go-units ``RAMInBytes`` (binary multipliers): ``64m`` → 67108864."""
    match = _RAM_SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid size: '{value}'")
    number = float(match.group(1))
    power = " kmgtp".index((match.group(2) or " ").lower())
    return int(number * 1024**power)


def _go_csv_record(text: str) -> list[str]:
    """One record of Go's ``encoding/csv`` reader (comma separator, strict quotes)."""
    if text == "":
        raise ValueError("EOF")
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            i += 1
            field: list[str] = []
            while True:
                quote = text.find('"', i)
                if quote == -1:
                    raise ValueError(
                        f'parse error on line 1, column {n + 1}: extraneous or missing " in quoted-field'
                    )
                field.append(text[i:quote])
                i = quote + 1
                if i < n and text[i] == '"':
                    field.append('"')
                    i += 1
                    continue
                if i < n and text[i] != ",":
                    raise ValueError(
                        f'parse error on line 1, column {i + 1}: extraneous or missing " in quoted-field'
                    )
                break
            fields.append("".join(field))
        else:
            comma = text.find(",", i)
            end = n if comma == -1 else comma
            field_text = text[i:end]
            if '"' in field_text:
                column = i + field_text.index('"') + 1
                raise ValueError(
                    f'parse error on line 1, column {column}: bare " in non-quoted-field'
                )
            fields.append(field_text)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma
        if i == n:
            fields.append("")
            return fields


MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING_MODES = ("shared", "private", "locked")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size", "mode",
    "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)  # fmt: skip


def _parse_uint(value: str, base: int, what: str) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(ch not in digits for ch in value) or int(value, base) > 0xFFFFFFFF:
        raise InstructionError(f"invalid value {value} for {what}")
    return int(value, base)


def parse_mount(spec: str, expand: Callable[[str], str] | None) -> Mount | None:
    """Parse one ``--mount`` value (BuildKit ``parseMount``).

    With ``expand=None`` only what can be checked before expansion is checked (CSV syntax,
    ``from`` without variables) and None is returned; with an expander every key and value is
    validated and the :class:`Mount` is returned.
    """
    try:
        fields = _go_csv_record(spec)
    except ValueError as err:
        raise InstructionError(f"failed to parse csv mounts: {err}") from None
    values: dict[str, object] = {"type": "bind"}
    ro_auto = True
    for field in fields:
        key, has_value, value = field.partition("=")
        key = key.lower()
        mount_type = values["type"]
        if not has_value:
            if expand is None:
                continue
            if key in ("readonly", "ro"):
                values["read_only"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                values["read_only"], ro_auto = False, False
            elif key == "required":
                if mount_type not in ("secret", "ssh"):
                    raise InstructionError(f"unexpected key '{key}' for mount type '{mount_type}'")
                values["required"] = True
            else:
                raise InstructionError(f"invalid field '{field}' must be a key=value pair")
            continue
        if expand is None:
            if key == "from":
                dollar = value.find("$")
                if dollar != -1 and dollar != len(value) - 1:
                    raise InstructionError(
                        f"'{key}' doesn't support variable expansion, define alias stage instead"
                    )
            continue
        if key != "from":
            value = expand(value)
        if key == "type":
            if value.lower() not in MOUNT_TYPES:
                raise InstructionError(
                    with_suggestion(f'unsupported mount type "{value}"', value, MOUNT_TYPES)
                )
            values["type"] = value.lower()
        elif key == "from":
            values["from_"] = value
        elif key in ("source", "src"):
            values["source"] = value
        elif key in ("target", "dst", "destination"):
            values["target"] = value
        elif key in ("readonly", "ro", "readwrite", "rw"):
            try:
                flag = go_parse_bool(value)
            except ValueError:
                raise InstructionError(f"invalid value for {key}: {value}") from None
            values["read_only"] = flag if key in ("readonly", "ro") else not flag
            ro_auto = False
        elif key == "required":
            if mount_type not in ("secret", "ssh"):
                raise InstructionError(f"unexpected key '{key}' for mount type '{mount_type}'")
            try:
                values["required"] = go_parse_bool(value)
            except ValueError:
                raise InstructionError(f"invalid value for {key}: {value}") from None
        elif key == "size":
            if mount_type != "tmpfs":
                raise InstructionError(f"unexpected key '{key}' for mount type '{mount_type}'")
            try:
                values["size_limit"] = ram_in_bytes(value)
            except ValueError:
                raise InstructionError(f"invalid value for {key}: {value}") from None
        elif key == "id":
            values["cache_id"] = value
        elif key == "sharing":
            if mount_type != "cache":
                raise InstructionError(f"unexpected key '{key}' for mount type '{mount_type}'")
            if value.lower() not in _SHARING_MODES:
                raise InstructionError(f'unsupported sharing value "{value}"')
            values["sharing"] = value.lower()
        elif key == "mode":
            values["mode"] = _parse_uint(value, 8, "mode")
        elif key in ("uid", "gid"):
            values[key] = _parse_uint(value, 10, key)
        elif key == "env":
            values["env"] = value
        else:
            raise InstructionError(
                with_suggestion(f"unexpected key '{key}' in '{field}'", key, _MOUNT_KEYS)
            )
    if expand is None:
        return None
    mount_type = values["type"]
    if mount_type not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if values.get(key) is not None:
                raise InstructionError(f'{key} not allowed for "{mount_type}" type mounts')
    if ro_auto:
        values["read_only"] = mount_type not in ("cache", "tmpfs")
    if values.get("sharing") and mount_type != "cache":
        raise InstructionError(f"invalid cache sharing set for {mount_type} mount")
    if mount_type == "secret":
        if values.get("from_"):
            raise InstructionError("secret mount should not have a from")
        if not any(values.get(key) for key in ("source", "target", "cache_id")) and (
            values.get("env") is None
        ):
            raise InstructionError("one of source, target required")
        if values.get("source") and values.get("cache_id"):
            raise InstructionError("both source and id can't be set")
    return Mount(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Per-instruction parsing
# ---------------------------------------------------------------------------------------------

INSTRUCTION_NAMES = (
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
    "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
)  # fmt: skip

_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")


@attrs.frozen
class _Request:
    node: Node
    common: dict
    args: tuple[str, ...]

    def flags(self, spec: Mapping[str, str]) -> dict[str, object]:
        return _parse_flags(self.node.flags, spec)


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
    flags = req.flags({"platform": _STRING})
    return FromInstruction(
        **req.common,
        base_name=args[0],
        stage_name=stage,
        stage_name_as_written=written,
        as_keyword=as_keyword,
        platform=flags.get("platform"),  # type: ignore[arg-type]
    )


def _parse_run(req: _Request) -> RunInstruction:
    flags = req.flags({"mount": _STRINGS, "network": _STRING, "security": _STRING})
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
    flags = req.flags(
        {
            "chown": _STRING,
            "chmod": _STRING,
            "link": _BOOL,
            "keep-git-dir": _BOOL,
            "checksum": _STRING,
            "exclude": _STRINGS,
            "unpack": _BOOL,
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
    flags = req.flags(
        {
            "from": _STRING,
            "chown": _STRING,
            "chmod": _STRING,
            "link": _BOOL,
            "parents": _BOOL,
            "exclude": _STRINGS,
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
            "interval": _STRING,
            "timeout": _STRING,
            "start-period": _STRING,
            "start-interval": _STRING,
            "retries": _STRING,
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
    node: Node, filename: str = "Dockerfile", lines: Sequence[str] = ()
) -> Instruction:
    """Turn one parser node into its typed instruction, validating flags and arguments."""
    parser = _PARSERS.get(node.command)
    if parser is None:
        message = with_suggestion(
            f"unknown instruction: {node.keyword}",
            node.keyword,
            [name.upper() for name in INSTRUCTION_NAMES],
            case_sensitive=False,
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
        return parser(_Request(node, common, node.args))
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
        instruction = parse_instruction(node, filename, ast.lines)
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
