"""Registers the YAML pipeline frontend (``yaml.v0``) and claims ``*.yaml``/``*.yml`` files."""

from __future__ import annotations

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
