"""Build checks: BuildKit's 22 Dockerfile lint rules, run statically over a parsed file.

The rules, their configuration (``# check=`` or ``BUILDKIT_DOCKERFILE_CHECK``) and the
findings are in :mod:`~pybk.frontends.dockerfile.lintrules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from pybk.core.didyoumean import closest, did_you_mean
from pybk.core.fs.patterns import PatternMatcher, clean_path
from pybk.core.model import Model, field
from pybk.core.platform import host_platform
from pybk.frontends.dockerfile.commands import (
    AddInstruction,
    ArgInstruction,
    CmdInstruction,
    CopyInstruction,
    Dockerfile,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    FromInstruction,
    HealthcheckInstruction,
    Instruction,
    LabelInstruction,
    MaintainerInstruction,
    RunInstruction,
    ShellInstruction,
    Stage,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.instructions import Expander, parse_dockerfile
from pybk.frontends.dockerfile.lintrules import (
    CHECK_BUILD_ARG,
    RULES,
    CheckConfig,
    CheckReport,
    Warning,  # noqa: A004 - BuildKit's name for a lint finding
    parse_check_options,
)
from pybk.frontends.dockerfile.shell import Lexer, ShellExpansionError

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

_SECRET = re.compile(
    r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)"
)
_SECRET_ALLOWED = re.compile(r"(?i)(?:_|^)(?:public)(?:_|$)")
_RESERVED_STAGE_NAMES = ("context", "scratch")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def _host_platform_args() -> dict[str, str]:
    host = host_platform()
    values = {
        "OS": host.os,
        "ARCH": host.architecture,
        "VARIANT": host.variant or "",
        "OSVERSION": "",
        "PLATFORM": str(host),
    }
    args = {}
    for prefix in ("BUILD", "TARGET"):
        for key, value in values.items():
            args[prefix + key] = value
    return args


def is_valid_reference(ref: str) -> bool:
    """Whether ``ref`` is a syntactically valid image reference (docker ``reference``)."""
    return bool(ref) and _REFERENCE.fullmatch(ref) is not None


def _title_quote(text: str) -> str:
    from pybk.core.errors import go_quote

    return go_quote(text)


class _Linter:
    def __init__(self, config: CheckConfig, filename: str):
        self.config = config
        self.filename = filename
        self.found: list[Warning] = []

    def run(self, rule_name: str, line: int, message: str | None = None) -> None:
        rule = RULES[rule_name]
        if self.config.enabled(rule):
            self.found.append(Warning(rule_name, message or rule.description, self.filename, line))


def _stage_dependencies(stage: Stage, names: Mapping[str, int]) -> set[int]:
    deps: set[int] = set()

    def ref(value: str) -> None:
        value = value.lower()
        if value in names:
            deps.add(names[value])
        elif value.isdigit() and int(value) < stage.index:
            deps.add(int(value))

    ref(stage.base_name)
    for instruction in stage.instructions:
        if isinstance(instruction, CopyInstruction) and instruction.from_:
            ref(instruction.from_)
        elif isinstance(instruction, RunInstruction):
            for spec in instruction.mount_specs:
                for field in spec.split(","):
                    key, _, value = field.partition("=")
                    if key.lower() == "from" and value:
                        ref(value)
    return deps


def _reachable(dockerfile: Dockerfile, target: str | None) -> set[int]:
    names = {s.name: s.index for s in dockerfile.stages if s.name}
    if not dockerfile.stages:
        return set()
    if target is None:
        start = len(dockerfile.stages) - 1
    else:
        try:
            start = dockerfile.stage(target).index
        except KeyError:
            raise DockerfileParseError(
                f'target stage "{target}" could not be found', filename=dockerfile.filename
            ) from None
    seen: set[int] = set()
    todo = [start]
    while todo:
        index = todo.pop()
        if index in seen:
            continue
        seen.add(index)
        todo.extend(_stage_dependencies(dockerfile.stages[index], names))
    return seen


def _expanded_words(instruction: Instruction) -> list[str]:
    """The raw words an instruction expands with ARG/ENV values (for UndefinedVar)."""
    if isinstance(instruction, (AddInstruction, CopyInstruction)):
        words = [*instruction.sources, instruction.dest, instruction.chown, instruction.chmod]
        if isinstance(instruction, AddInstruction):
            words.append(instruction.checksum)
        return [w for w in words if w]
    if isinstance(instruction, (EnvInstruction, LabelInstruction)):
        return [w for pair in instruction.pairs for w in (pair.key, pair.value)]
    if isinstance(instruction, ExposeInstruction):
        return list(instruction.ports)
    if isinstance(instruction, VolumeInstruction):
        return list(instruction.volumes)
    if isinstance(instruction, UserInstruction):
        return [instruction.user]
    if isinstance(instruction, WorkdirInstruction):
        return [instruction.path]
    if isinstance(instruction, StopsignalInstruction):
        return [instruction.signal]
    if isinstance(instruction, RunInstruction):
        values = []
        for spec in instruction.mount_specs:
            for field in spec.split(","):
                key, has_value, value = field.partition("=")
                if has_value and key.lower() != "from":
                    values.append(value)
        return values
    return []


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def _check_definition_description(
    lint: _Linter, instruction: str, keys: Sequence[str], comments, line
):
    if not comments or not keys:
        return
    first_word = comments[-1].split(" ")[0]
    if first_word in keys:
        return
    example = keys[0] if len(keys) == 1 else "<arg_key>"
    lint.run(
        "InvalidDefinitionDescription",
        line,
        f"Comment for {instruction} should follow the format: `# {example} <description>`",
    )


def _check_casing(lint: _Linter, dockerfile: Dockerfile) -> None:
    keywords: list[tuple[str, int]] = []
    for stage in dockerfile.stages:
        keywords.append((stage.from_instruction.keyword, stage.location.start_line))
        keywords += [(i.keyword, i.location.start_line) for i in stage.instructions]
    lower = sum(1 for k, _ in keywords if k == k.lower())
    upper = sum(1 for k, _ in keywords if k == k.upper() and k != k.lower())
    majority_lower = lower > upper
    for keyword, line in keywords:
        if majority_lower and keyword.lower() != keyword:
            casing = "lowercase"
        elif not majority_lower and keyword.upper() != keyword:
            casing = "uppercase"
        else:
            continue
        lint.run(
            "ConsistentInstructionCasing",
            line,
            f"Command '{keyword}' should match the case of the command majority ({casing})",
        )


def _check_secret(lint: _Linter, instruction: str, key: str, line: int) -> None:
    if _SECRET.search(key) and not _SECRET_ALLOWED.search(key):
        lint.run(
            "SecretsUsedInArgOrEnv",
            line,
            f"Do not use ARG or ENV instructions for sensitive data ({instruction} {_title_quote(key)})",
        )


class _GlobalScope(Model, frozen=False):
    """The global ARGs (before the first FROM): values with build-arg overrides, values from
    the defaults alone, the names declared, and the host's platform ARGs."""

    platform_args: dict[str, str]
    env: dict[str, str]
    defaults: dict[str, str]
    declared: set[str] = field(factory=set)


def _lint_meta_args(
    dockerfile: Dockerfile, lint: _Linter, build_args: Mapping[str, str]
) -> _GlobalScope:
    platform_args = _host_platform_args()
    scope = _GlobalScope(platform_args, dict(platform_args), dict(platform_args))
    escape = dockerfile.escape
    for meta in dockerfile.meta_args:
        line = meta.location.start_line
        keys = [spec.key for spec in meta.args]
        _check_definition_description(lint, "ARG", keys, meta.comments, line)
        for spec in meta.args:
            _check_secret(lint, "ARG", spec.key, line)
            expander = Expander(scope.env, escape, meta.location)
            default = expander.word(spec.default) if spec.default is not None else None
            scope.declared.add(spec.key)
            if spec.key in build_args:
                scope.env[spec.key] = build_args[spec.key]
            elif default is not None:
                scope.env[spec.key] = default
            if spec.default is not None:
                scope.defaults[spec.key] = Expander(scope.defaults, escape).word(spec.default)
    return scope


def _lint_stage_name(lint: _Linter, first: FromInstruction, stage_names: Mapping[str, int]):
    line = first.location.start_line
    written = first.stage_name_as_written or ""
    if written != written.lower():
        lint.run("StageNameCasing", line, f"Stage name '{written}' should be lowercase")
    keyword, as_word = first.keyword, first.as_keyword or ""
    if (keyword == keyword.upper() and as_word != as_word.upper()) or (
        keyword == keyword.lower() and as_word != as_word.lower()
    ):
        lint.run(
            "FromAsCasing",
            line,
            f"'{as_word}' and '{keyword}' keywords' casing do not match",
        )
    if first.stage_name in _RESERVED_STAGE_NAMES:
        lint.run(
            "ReservedStageName",
            line,
            f"Stage name should not use the same name as reserved stage {_title_quote(first.stage_name)}",
        )
    if first.stage_name in stage_names:
        lint.run(
            "DuplicateStageName",
            line,
            f"Duplicate stage name {_title_quote(first.stage_name)}, stage names should be unique",
        )
    _check_definition_description(lint, "FROM", [first.stage_name], first.comments, line)


def _lint_from_platform(lint: _Linter, first: FromInstruction) -> None:
    platform = first.platform
    line = first.location.start_line
    if platform is None:
        return
    if platform in ("$TARGETPLATFORM", "${TARGETPLATFORM}"):
        lint.run(
            "RedundantTargetPlatform",
            line,
            f"Setting platform to predefined {platform} in FROM is redundant as this is "
            "the default behavior",
        )
    elif "$" not in platform and not _stage_name_mentions_platform(first.stage_name, platform):
        lint.run(
            "FromPlatformFlagConstDisallowed",
            line,
            f"FROM --platform flag should not use constant value {_title_quote(platform)}",
        )


def _lint_from_args(lint: _Linter, first: FromInstruction, scope: _GlobalScope, lexer: Lexer,
                    stage_names: Mapping[str, int]) -> None:
    line = first.location.start_line
    for word in (first.base_name, first.platform or ""):
        if "$" not in word:
            continue
        try:
            result = lexer.process(word, scope.env)
        except ShellExpansionError as err:
            raise DockerfileParseError(err.message, filename=lint.filename, line=line) from None
        for name in sorted(result.unmatched):
            if name in scope.declared:
                continue
            hint = did_you_mean(name, sorted(scope.declared | set(scope.platform_args)))
            lint.run("UndefinedArgInFrom", line, f"FROM argument '{name}' is not declared{hint}")
    if "$" in first.base_name:
        try:
            default_name = lexer.process(first.base_name, scope.defaults).result
        except ShellExpansionError:
            default_name = ""
        if not default_name or not (
            is_valid_reference(default_name) or default_name.lower() in stage_names
        ):
            lint.run(
                "InvalidDefaultArgInFrom",
                line,
                f"Default value for ARG {first.base_name} results in empty or invalid base image name",
            )


def _lint_froms(
    dockerfile: Dockerfile, lint: _Linter, scope: _GlobalScope, lexer: Lexer
) -> dict[str, int]:
    """The FROM rules; returns the stage names with their indexes."""
    stage_names: dict[str, int] = {}
    for stage in dockerfile.stages:
        first = stage.from_instruction
        if first.stage_name is not None:
            _lint_stage_name(lint, first, stage_names)
        _lint_from_platform(lint, first)
        _lint_from_args(lint, first, scope, lexer, stage_names)
        if first.stage_name is not None:
            stage_names.setdefault(first.stage_name, stage.index)
    return stage_names


class _StageLinter:
    """The instruction rules of one stage, tracking its ARG/ENV scope as the build would.

    ``check_vars``: the stage is part of the target's build (UndefinedVar and
    WorkdirRelativePath are only reported there).
    """

    def __init__(self, lint: _Linter, scope: _GlobalScope, build_args: Mapping[str, str],
                 escape: str, ignore: PatternMatcher | None, *, env: dict[str, str],
                 workdir_set: bool, check_vars: bool):
        self.lint = lint
        self.scope = scope
        self.build_args = build_args
        self.escape = escape
        self.ignore = ignore
        self.env = env
        self.workdir_set = workdir_set
        self.check_vars = check_vars
        self.args: dict[str, str] = {}
        self.declared: set[str] = set()
        self.counts: dict[str, list[int]] = {}
        self.shell_set = False
        self.line = 0
        self.expander = Expander({}, escape)

    def instruction(self, instruction: Instruction) -> None:
        self.line = instruction.location.start_line
        self.expander = Expander({**self.args, **self.env}, self.escape, instruction.location)
        for kinds, rule in _INSTRUCTION_RULES:
            if kinds is None or isinstance(instruction, kinds):
                rule(self, instruction)

    def finish(self) -> None:
        for name, lines in self.counts.items():
            for line in lines[:-1]:
                self.lint.run(
                    "MultipleInstructionsDisallowed",
                    line,
                    f"Multiple {name} instructions should not be used in the same stage because "
                    "only the last one will be used",
                )

    # ------------------------------------------------------------------ rules

    def undefined_vars(self, instruction: Instruction) -> None:
        if not self.check_vars:
            return
        scope = set(self.expander.env)
        for word in _expanded_words(instruction):
            self.expander.word(word)
        for name in sorted(self.expander.undefined - self.declared - scope):
            hint = closest(name, sorted(scope | self.declared))
            message = f"Usage of undefined variable '${name}'"
            if hint:
                message += f" (did you mean ${hint}?)"
            self.lint.run("UndefinedVar", self.line, message)

    def maintainer(self, instruction: MaintainerInstruction) -> None:
        self.lint.run(
            "MaintainerDeprecated",
            self.line,
            "Maintainer instruction is deprecated in favor of using label",
        )

    def shell(self, instruction: ShellInstruction) -> None:
        self.shell_set = True

    def json_args(self, instruction: CmdInstruction | EntrypointInstruction) -> None:
        if instruction.prepend_shell and instruction.command and not self.shell_set:
            self.lint.run(
                "JSONArgsRecommended",
                self.line,
                f"JSON arguments recommended for {instruction.keyword} to prevent "
                "unintended behavior related to OS signals",
            )

    def count(self, instruction: Instruction) -> None:
        self.counts.setdefault(instruction.name, []).append(self.line)

    def legacy_key_value(self, instruction: EnvInstruction | LabelInstruction) -> None:
        if any(pair.no_delim for pair in instruction.pairs):
            self.lint.run(
                "LegacyKeyValueFormat",
                self.line,
                f'"{instruction.keyword} key=value" should be used instead of legacy '
                f'"{instruction.keyword} key value" format',
            )

    def env_instruction(self, instruction: EnvInstruction) -> None:
        new = {}
        for pair in instruction.pairs:
            _check_secret(self.lint, "ENV", pair.key, self.line)
            new[self.expander.word(pair.key)] = self.expander.word(pair.value)
        self.env.update(new)

    def arg_instruction(self, instruction: ArgInstruction) -> None:
        keys = [spec.key for spec in instruction.args]
        _check_definition_description(self.lint, "ARG", keys, instruction.comments, self.line)
        for spec in instruction.args:
            _check_secret(self.lint, "ARG", spec.key, self.line)
            self.declared.add(spec.key)
            if spec.key in self.build_args:
                self.args[spec.key] = self.build_args[spec.key]
            elif spec.default is not None:
                self.args[spec.key] = Expander(
                    {**self.args, **self.env}, self.escape, instruction.location
                ).word(spec.default)
            elif spec.key in self.scope.env and spec.key in self.scope.declared | set(
                self.scope.platform_args
            ):
                self.args[spec.key] = self.scope.env[spec.key]

    def expose(self, instruction: ExposeInstruction) -> None:
        for raw in instruction.ports:
            for port in self.expander.words(raw):
                if ":" in port:
                    self.lint.run(
                        "ExposeInvalidFormat",
                        self.line,
                        "EXPOSE instruction should not define an IP address or host-port "
                        f"mapping, found '{port}'",
                    )
                _, has_proto, proto = port.partition("/")
                if has_proto and proto != proto.lower():
                    self.lint.run(
                        "ExposeProtoCasing",
                        self.line,
                        f"Defined protocol '{port}' in EXPOSE instruction should be lowercase",
                    )

    def workdir(self, instruction: WorkdirInstruction) -> None:
        if not self.check_vars:
            return
        path = self.expander.word(instruction.path)
        if path.startswith("/"):
            self.workdir_set = True
        elif not self.workdir_set:
            self.lint.run(
                "WorkdirRelativePath",
                self.line,
                f"Relative workdir {_title_quote(path)} can have unexpected results if the "
                "base image changes",
            )

    def ignored_sources(self, instruction: CopyInstruction | AddInstruction) -> None:
        if self.ignore is None:
            return
        if isinstance(instruction, CopyInstruction) and instruction.from_:
            return
        verb = "Copy" if isinstance(instruction, CopyInstruction) else "Add"
        for source in instruction.sources:
            value = self.expander.word(source)
            if "://" in value or value.startswith("git@"):
                continue
            relative = clean_path(value).lstrip("/") or "."
            if relative != "." and self.ignore.matches(relative):
                self.lint.run(
                    "CopyIgnoredFile",
                    self.line,
                    f"Attempting to {verb} file {_title_quote(value)} that is excluded by .dockerignore",
                )


#: the instruction rules in the order they report: (instruction types or None for all, rule)
_INSTRUCTION_RULES: tuple[tuple[type | tuple[type, ...] | None, Callable[..., None]], ...] = (
    (None, _StageLinter.undefined_vars),
    (MaintainerInstruction, _StageLinter.maintainer),
    (ShellInstruction, _StageLinter.shell),
    ((CmdInstruction, EntrypointInstruction), _StageLinter.json_args),
    ((CmdInstruction, EntrypointInstruction, HealthcheckInstruction), _StageLinter.count),
    ((EnvInstruction, LabelInstruction), _StageLinter.legacy_key_value),
    (EnvInstruction, _StageLinter.env_instruction),
    (ArgInstruction, _StageLinter.arg_instruction),
    (ExposeInstruction, _StageLinter.expose),
    (WorkdirInstruction, _StageLinter.workdir),
    ((CopyInstruction, AddInstruction), _StageLinter.ignored_sources),
)


def _lint(
    dockerfile: Dockerfile,
    lint: _Linter,
    build_args: Mapping[str, str],
    target: str | None,
    ignore: PatternMatcher | None,
) -> None:
    for warning in dockerfile.warnings:
        lint.run("NoEmptyContinuation", warning.line)
    _check_casing(lint, dockerfile)
    scope = _lint_meta_args(dockerfile, lint, build_args)
    stage_names = _lint_froms(dockerfile, lint, scope, Lexer(escape=dockerfile.escape))

    reachable = _reachable(dockerfile, target)
    stage_env: dict[int, dict[str, str]] = {}
    stage_workdir: dict[int, bool] = {}
    for stage in dockerfile.stages:
        parent = stage_names.get(stage.base_name.lower())
        stage_lint = _StageLinter(
            lint, scope, build_args, dockerfile.escape, ignore,
            env=dict(stage_env.get(parent, {"PATH": ""})) if parent is not None else {"PATH": ""},
            workdir_set=stage_workdir.get(parent, False) if parent is not None else False,
            check_vars=stage.index in reachable,
        )
        for instruction in stage.instructions:
            stage_lint.instruction(instruction)
        stage_lint.finish()
        stage_env[stage.index] = stage_lint.env
        stage_workdir[stage.index] = stage_lint.workdir_set


def _stage_name_mentions_platform(stage_name: str | None, platform: str) -> bool:
    if not stage_name:
        return False
    parts = [p for p in re.split(r"[/,]", platform.lower()) if p]
    return any(part in stage_name for part in parts)


def run_checks(
    dockerfile_bytes: bytes,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    ignore_patterns: Sequence[str] | None = None,
) -> CheckReport:
    """Run the build checks over a Dockerfile.

    ``ignore_patterns`` (the context's ``.dockerignore``) enables CopyIgnoredFile. Raises
    :class:`DockerfileParseError` when the file does not parse or the check options are bad.
    """
    build_args = dict(build_args or {})
    dockerfile = parse_dockerfile(dockerfile_bytes, filename)
    options = build_args.get(CHECK_BUILD_ARG)
    option_line = None
    if options is None:
        options = dockerfile.directives.check or ""
        option_line = dockerfile.directives.lines.get("check")
    try:
        config = parse_check_options(options)
    except ValueError as err:
        raise DockerfileParseError(str(err), filename=filename, line=option_line) from None
    lint = _Linter(config, filename)
    matcher = PatternMatcher(ignore_patterns) if ignore_patterns else None
    _lint(dockerfile, lint, build_args, target, matcher)
    warnings = sorted(lint.found, key=lambda w: w.line)
    return CheckReport(warnings=warnings, error=config.error and bool(warnings), config=config)
