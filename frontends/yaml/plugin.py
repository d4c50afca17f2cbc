"""Registers the YAML pipeline frontend (``yaml.v0``), claims ``*.yaml``/``*.yml`` files and adds
``pybk debug yaml-schema``."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from pybk.core.markers import hookimpl

NAME = "yaml.v0"


@hookimpl
def pybk_register_frontends():
    from pybk.frontends.yaml.frontend import YamlFrontend

    return [YamlFrontend]


@hookimpl
def pybk_select_frontend(filename: str, directives: Mapping[str, str]) -> str | None:
    """``yaml.v0`` for ``*.yaml``/``*.yml`` files and files starting ``# syntax=yaml.v0``."""
    if (directives.get("syntax") or "").split()[:1] == [NAME]:
        return NAME
    if filename.lower().endswith((".yaml", ".yml")):
        return NAME
    return None


@hookimpl
def pybk_add_commands(commands):
    commands.add("yaml-schema", _yaml_schema, help="print the JSON Schema of yaml.v0 pipelines",
                 parent="debug")


def _yaml_schema(ns) -> int:
    from pybk.frontends.yaml.cli_support import yaml_schema_command

    sys.stdout.write(yaml_schema_command())
    return 0
