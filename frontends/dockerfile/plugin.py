"""Registers the Dockerfile frontend (``dockerfile.v0``) and ``pybk debug dump-ast``."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from pybk.core.markers import hookimpl


@hookimpl
def pybk_register_frontends():
    from pybk.frontends.dockerfile.frontend import DockerfileFrontend

    return [DockerfileFrontend]


@hookimpl(trylast=True)
def pybk_select_frontend(filename: str, directives: Mapping[str, str]) -> str | None:
    """Anything not claimed by another frontend is a Dockerfile."""
    return "dockerfile.v0"


@hookimpl
def pybk_add_commands(commands):
    commands.add("dump-ast", _dump_ast, help="print a Dockerfile's parse in BuildKit's format",
                 arguments=_file_argument, parent="debug")


def _file_argument(parser) -> None:
    parser.add_argument("file", nargs="?", default="Dockerfile")


def _dump_ast(ns) -> int:
    from pybk.frontends.dockerfile.cli_support import dump_ast_command

    sys.stdout.write(dump_ast_command(ns.file))
    return 0


@hookimpl
def pybk_warm_up(config) -> None:
    """Build the Dockerfile parsers (both escape characters)."""
    from pybk.frontends.dockerfile.parser import parse

    parse(b"FROM scratch\nRUN true\n")
    parse(b"# escape=`\nFROM scratch\nRUN true\n")
