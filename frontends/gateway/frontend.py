"""The ``gateway.v0`` frontend and ``# syntax=`` resolution.

``# syntax=<ref>`` (or the build arg ``BUILDKIT_SYNTAX``, which wins) names the frontend of a
Dockerfile: a pip-installed frontend plugin registered under that name, the built-in
``dockerfile.v0`` for ``docker/dockerfile:*``, or else a frontend image, which
:class:`GatewayFrontend` runs in a container the bridge makes
(:meth:`~pybk.core.interfaces.FrontendBridge.new_container`), speaking the protocol of
:mod:`pybk.frontends.gateway.protocol` over its stdin/stdout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.interfaces import (
    Frontend,
    FrontendBridge,
    FrontendRequest,
    FrontendResult,
    ProcessSpec,
    UnsupportedOperation,
)
from pybk.frontends.gateway.protocol import GatewayError, GatewayServer, frontend_env

NAME = "gateway.v0"
#: image references meaning the built-in Dockerfile frontend (any tag or digest)
BUILTIN_DOCKERFILE_REPOS = ("docker.io/docker/dockerfile",)
#: image label asking for the host network (granted with the ``network.host`` entitlement)
NETWORK_NONE_LABEL = "moby.buildkit.frontend.network.none"


def _repository(ref: str) -> str | None:
    from pybk.core.errors import InputError
    from pybk.core.registry.reference import parse_reference

    try:
        return parse_reference(ref).repository
    except InputError:
        return None


def resolve_syntax(name: str, directives: Mapping[str, str], opts: Mapping[str, str],
                   registry: Any, config: Any = None) -> tuple[str, dict[str, str]]:
    """The frontend that really builds a file ``name`` was chosen for, and its options.

    Only ``dockerfile.v0`` looks at ``# syntax=`` (or the build arg ``BUILDKIT_SYNTAX``, which
    wins), as in BuildKit; an opt ``cmdline`` means the syntax was already followed. The syntax
    ref resolves to, in order: a registered frontend of that name (a pip-installed plugin),
    ``dockerfile.v0`` for ``docker/dockerfile:*``, else ``gateway.v0`` with ``source=<ref>``
    and ``cmdline=<whole value>``.
    """
    opts = dict(opts)
    if name != "dockerfile.v0" or "cmdline" in opts:
        return name, opts
    value = (opts.get("build-arg:BUILDKIT_SYNTAX") or directives.get("syntax") or "").strip()
    if not value:
        return name, opts
    ref = value.split()[0]
    if ref in registry and ref != NAME:
        return ref, opts
    if _repository(ref) in BUILTIN_DOCKERFILE_REPOS and f"context:{ref}" not in opts:
        return name, opts
    opts.update({"source": ref, "cmdline": value})
    return NAME, opts


def check_allowed(source: str, config: Any) -> None:
    """``[frontend."gateway.v0"]``: ``enabled = false`` and ``allowedRepositories``."""
    gateway = config.frontend.gateway if config is not None else None
    if gateway is None:
        return
    if gateway.enabled is False:
        raise GatewayError(f'frontend image {source}: the gateway.v0 frontend is disabled '
                           '([frontend."gateway.v0"] enabled = false)')
    allowed = list(gateway.allowed_repositories)
    if not allowed:
        return
    repo = _repository(source)
    if repo is None or repo not in {_repository(a) for a in allowed}:
        raise GatewayError(f'frontend image {source} is not allowed: [frontend."gateway.v0"] '
                           f'allowedRepositories = {allowed}')


def frontend_image(source: str, opts: Mapping[str, str]) -> str:
    """The image to run: a ``context:<source>`` named context may replace it."""
    override = opts.get(f"context:{source}")
    if override is None:
        return source
    if override.startswith("docker-image://"):
        return override[len("docker-image://"):]
    raise UsageError(f"context {source}: only docker-image:// can replace a frontend image, "
                     f"not {override!r}", flag="--build-context")


class GatewayFrontend(Frontend):
    """Runs a frontend image (``# syntax=<image>``) that speaks pybk's gateway protocol."""

    name = NAME

    def solve(self, request: FrontendRequest, bridge: FrontendBridge) -> FrontendResult:
        from pybk.core import llb
        from pybk.frontends.gateway.runner import ContainerChannel, converse, gateway_timeout

        opts = dict(request.opts)
        source = opts.get("source")
        if not source:
            raise UsageError("the gateway.v0 frontend needs the frontend image: --opt source=REF",
                             flag="--frontend")
        check_allowed(source, bridge.config)
        timeout = gateway_timeout(opts)
        image_ref = frontend_image(source, opts)
        inputs = {name: llb.local(name).marshal()
                  for name in sorted(getattr(bridge, "local_dirs", {}))}
        for name, state in request.inputs.items():
            inputs[name] = state.marshal() if hasattr(state, "marshal") else state
        server = GatewayServer(bridge, inputs, name=source,
                               solve_frontend=lambda n, o: self._nested(n, o, bridge))
        try:
            container = bridge.new_container(llb.image(image_ref), name=source)
        except UnsupportedOperation:
            raise GatewayError(f"frontend image {source}: this build has no engine to run "
                               "it") from None
        with container as running:
            process = self._process(source, running.image_config, opts, bridge.entitlements)
            returned = converse(server, ContainerChannel(running, process).start(),
                                timeout=timeout, name=source)
        return FrontendResult(definition=returned.definition, image_config=returned.image_config,
                              metadata=returned.metadata)

    @staticmethod
    def _process(source: str, image_config: Mapping[str, Any], opts: Mapping[str, str],
                 entitlements: Any) -> ProcessSpec:
        cfg = image_config.get("config") or {}
        labels = cfg.get("Labels") or {}
        network = "none"
        if str(labels.get(NETWORK_NONE_LABEL, "true")).lower() == "false":
            if "network.host" not in set(entitlements):
                raise GatewayError(f"frontend image {source} asks for the network (label "
                                   f"{NETWORK_NONE_LABEL}=false): allow it with "
                                   "--allow network.host (granted by insecure-entitlements "
                                   "in the configuration)")
            network = "host"
        forwarded = {k: v for k, v in opts.items() if k != "gateway-timeout"}
        return ProcessSpec(args=tuple(cfg.get("Entrypoint") or ("/run",)),
                           env=(*(cfg.get("Env") or ()), *frontend_env(forwarded)),
                           cwd=cfg.get("WorkingDir") or "/", network=network)

    @staticmethod
    def _nested(name: str, opts: Mapping[str, str], bridge: FrontendBridge) -> Any:
        """``solve`` with ``frontend``: a registered frontend run through the bridge."""
        if name == NAME:
            raise UsageError("a gateway frontend cannot solve with gateway.v0 itself")
        return bridge.solve_frontend(name, opts).definition

