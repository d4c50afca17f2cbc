"""Typed Dockerfile instructions (BuildKit ``instructions/commands.go``), grouped into build
stages.

Words are kept raw (unexpanded); expansion with ARG/ENV values happens during conversion,
through :class:`~pybk.frontends.dockerfile.instructions.Expander`. Every instruction carries its
:class:`Location` and original text.
"""

from __future__ import annotations

from collections.abc import Callable

from pybk.core.model import Model
from pybk.frontends.dockerfile.mounts import Mount, parse_mount
from pybk.frontends.dockerfile.parser import Heredoc, Node, ParseResult


class Location(Model):
    """Where an instruction is: file name and 1-based first/last physical line."""

    filename: str
    start_line: int
    end_line: int

    def __str__(self) -> str:
        if self.end_line != self.start_line:
            return f"{self.filename}:{self.start_line}-{self.end_line}"
        return f"{self.filename}:{self.start_line}"


class KeyValue(Model):
    """One ``key=value`` of ENV or LABEL; ``no_delim`` marks the legacy ``KEY value`` form."""

    key: str
    value: str
    no_delim: bool = False


class ArgSpec(Model):
    """One name of an ARG instruction; ``default`` is None when no ``=`` was given."""

    key: str
    default: str | None = None


class SourceContent(Model):
    """A heredoc used as an ADD/COPY source: file name, body and whether to expand it."""

    path: str
    data: str
    expand: bool



class Instruction(Model, kw_only=True):
    """Fields every instruction has. ``keyword`` is as written; ``flags`` the raw flag words."""

    keyword: str
    location: Location
    original: str
    flags: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()
    comments: tuple[str, ...] = ()
    #: ``--no-cache`` (a pybk extension): this step never uses the cache
    no_cache: bool = False

    @property
    def name(self) -> str:
        """The upper-case instruction name (``RUN``)."""
        return self.keyword.upper()


class FromInstruction(Instruction, kw_only=True):
    base_name: str
    stage_name: str | None = None
    stage_name_as_written: str | None = None
    as_keyword: str | None = None
    platform: str | None = None


class RunInstruction(Instruction, kw_only=True):
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


class CmdInstruction(Instruction, kw_only=True):
    command: tuple[str, ...]
    prepend_shell: bool


class EntrypointInstruction(Instruction, kw_only=True):
    command: tuple[str, ...]
    prepend_shell: bool


class ShellInstruction(Instruction, kw_only=True):
    shell: tuple[str, ...]


class EnvInstruction(Instruction, kw_only=True):
    pairs: tuple[KeyValue, ...]


class LabelInstruction(Instruction, kw_only=True):
    pairs: tuple[KeyValue, ...]


class MaintainerInstruction(Instruction, kw_only=True):
    maintainer: str


class ExposeInstruction(Instruction, kw_only=True):
    ports: tuple[str, ...]


class AddInstruction(Instruction, kw_only=True):
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


class CopyInstruction(Instruction, kw_only=True):
    sources: tuple[str, ...]
    dest: str
    source_contents: tuple[SourceContent, ...] = ()
    from_: str = ""
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    excludes: tuple[str, ...] = ()


class VolumeInstruction(Instruction, kw_only=True):
    volumes: tuple[str, ...]


class UserInstruction(Instruction, kw_only=True):
    user: str


class WorkdirInstruction(Instruction, kw_only=True):
    path: str


class ArgInstruction(Instruction, kw_only=True):
    args: tuple[ArgSpec, ...]


class OnbuildInstruction(Instruction, kw_only=True):
    """``expression`` is the trigger text (heredoc bodies re-attached) run in child builds."""

    trigger_keyword: str
    expression: str
    trigger: Node


class StopsignalInstruction(Instruction, kw_only=True):
    signal: str


class HealthcheckInstruction(Instruction, kw_only=True):
    """``test`` is ``("NONE",)``, ``("CMD", argv…)`` or ``("CMD-SHELL", cmd)``; durations are
    nanoseconds (0 = unset), as in Docker's HealthConfig."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


class Stage(Model):
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


class Dockerfile(Model):
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
