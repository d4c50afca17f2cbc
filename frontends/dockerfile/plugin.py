"""Registers the Dockerfile frontend (``dockerfile.v0``)."""

from __future__ import annotations

from collections.abc import Mapping

from pybk.core.interfaces import Frontend
from pybk.core.markers import hookimpl


class DockerfileFrontend(Frontend):
    """Dockerfile frontend: the full modern Dockerfile syntax."""

    name = "dockerfile.v0"

    def solve(self, request, bridge):
        from pybk.core.errors import NotAvailableError

        raise NotAvailableError(
            "building a Dockerfile is not available yet; "
            "use pybk build --check, or build LLB with --llb"
        )


@hookimpl
def pybk_register_frontends():
    return [DockerfileFrontend]


@hookimpl(trylast=True)
def pybk_select_frontend(filename: str, directives: Mapping[str, str]) -> str | None:
    """Anything not claimed by another frontend is a Dockerfile."""
    return DockerfileFrontend.name
