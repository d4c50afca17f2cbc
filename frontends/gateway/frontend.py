"""The ``gateway.v0`` frontend and ``# syntax=`` resolution.

``# syntax=<ref>`` (or the build arg ``BUILDKIT_SYNTAX``, which wins) names the frontend of a
Dockerfile: a pip-installed frontend plugin registered under that name, the built-in
``dockerfile.v0`` for ``docker/dockerfile:*``, or else a frontend image, which
:class:`GatewayFrontend` pulls and runs in the worker, speaking the protocol of
:mod:`pybk.frontends.gateway.protocol` over its stdin/stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.interfaces import Frontend, FrontendBridge, FrontendRequest, FrontendResult
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
        from pybk.core.config.schema import check_entitlements
        from pybk.frontends.gateway.runner import gateway_timeout

        opts = dict(request.opts)
        source = opts.get("source")
        if not source:
            raise UsageError("the gateway.v0 frontend needs the frontend image: --opt source=REF",
                             flag="--frontend")
        client = getattr(bridge, "client", None)
        if client is None:
            raise GatewayError(f"frontend image {source}: this build has no engine to run it")
        check_allowed(source, getattr(bridge, "config", None))
        # the engine's configuration grants entitlements, not the bridge that carries them
        entitlements = check_entitlements(getattr(bridge, "entitlements", ()),
                                          getattr(client, "config", None))
        timeout = gateway_timeout(opts)
        image_ref = frontend_image(source, opts)
        progress = getattr(bridge, "progress", None)
        image = client.solve(llb.image(image_ref), progress=progress)
        config = dict(image.image_config or {})
        inputs = {name: llb.local(name).marshal()
                  for name in sorted(getattr(bridge, "local_dirs", {}))}
        for name, state in request.inputs.items():
            inputs[name] = state.marshal() if hasattr(state, "marshal") else state
        server = GatewayServer(bridge, inputs, name=source,
                               solve_frontend=lambda n, o: self._nested(n, o, bridge))
        process = self._process(source, config, opts, entitlements)
        returned = self._run(client, image, process, server, timeout, source, progress)
        return FrontendResult(definition=returned.definition, image_config=returned.image_config,
                              metadata=returned.metadata)

    @staticmethod
    def _process(source: str, image_config: Mapping[str, Any], opts: Mapping[str, str],
                 entitlements: Any) -> Any:
        from pybk.core.interfaces import ProcessSpec

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
    def _run(client: Any, image: Any, process: Any, server: GatewayServer, timeout: float,
             source: str, progress: Any) -> Any:
        from pybk.core.progress.events import STREAM_STDERR, Progress
        from pybk.core.serialize import sha256_digest
        from pybk.frontends.gateway.runner import ContainerChannel, converse

        renderers, sinks = _progress_sinks(progress)
        vertex = Progress(*sinks, *renderers).vertex(
            sha256_digest(f"gateway:{source}".encode()), f"[frontend] {source}")
        worker = client.worker()
        store = worker.store
        lease = store.lease()
        record = store.new_record(image.ref.snapshot, lease=lease,
                                  description=f"frontend {source}")
        try:
            vertex.start()
            channel = ContainerChannel(worker.executor, process, store.mounts(record),
                                       on_stderr=lambda data: vertex.log(STREAM_STDERR, data))
            returned = converse(server, channel.start(), timeout=timeout, name=source)
            vertex.done()
            return returned
        except BaseException as exc:
            vertex.error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        finally:
            store.discard(record)
            lease.release()
            for renderer in renderers:
                renderer.close()

    @staticmethod
    def _nested(name: str, opts: Mapping[str, str], bridge: FrontendBridge) -> Any:
        """``solve`` with ``frontend``: run a registered in-process frontend on this bridge."""
        from pybk.core.plugins import get_plugin_manager

        if name == NAME:
            raise UsageError("a gateway frontend cannot solve with gateway.v0 itself")
        pm = get_plugin_manager()
        registry = pm.frontends()
        frontend_cls = registry.get(name)
        with pm.annotate_errors(registry.owner(name)[0]):
            return frontend_cls().solve(FrontendRequest(opts=opts), bridge).definition


def _progress_sinks(progress: Any) -> tuple[list[Any], list[Any]]:
    """(renderers to close, callables) for a ``--progress`` mode, a callable, a list or None."""
    if progress is None:
        return [], []
    if isinstance(progress, str):
        from pybk.core.progress.ui import make_renderer

        return [make_renderer("quiet" if progress == "none" else progress, sys.stderr)], []
    return [], [progress] if callable(progress) else list(progress)
