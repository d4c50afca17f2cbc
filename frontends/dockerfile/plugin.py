"""Registers the Dockerfile frontend (``dockerfile.v0``)."""

from __future__ import annotations

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
