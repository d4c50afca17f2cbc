"""Registers the gateway frontend (``gateway.v0``)."""

from __future__ import annotations

from pybk.core.markers import hookimpl


@hookimpl
def pybk_register_frontends():
    from pybk.frontends.gateway.frontend import GatewayFrontend

    return [GatewayFrontend]
