"""The ``gateway.v0`` frontend: frontend images (``# syntax=<image>``) speaking pybk's gateway
protocol over stdin/stdout, ``# syntax=`` resolution, and the Python SDK for writing them."""

from pybk.frontends.gateway.frontend import GatewayFrontend, resolve_syntax

__all__ = ["GatewayFrontend", "resolve_syntax"]
