"""Gateway frontend images the tests build and push with pybk itself."""

from __future__ import annotations

from pathlib import Path

SHELL_FRONTEND = Path(__file__).resolve().parents[1] / "gateway" / "shell_frontend.sh"


def push_shell_frontend(gateway_root, registry, busybox_ref, name: str,
                        network_none: str = "true") -> str:
    """``127.0.0.1:PORT/frontends/NAME:1``: busybox plus shell_frontend.sh as its entrypoint,
    labelled ``moby.buildkit.frontend.network.none=network_none``, built and pushed by pybk."""
    from pybk.core import llb
    from pybk.core.engine.client import Client

    ref = f"{registry.host}/frontends/{name}:1"
    state = llb.image(busybox_ref).file(
        llb.mkfile("/frontend.sh", 0o755, SHELL_FRONTEND.read_bytes()))
    config = {"config": {"Entrypoint": ["/frontend.sh"], "Env": ["PATH=/bin:/usr/bin"],
                         "Labels": {"moby.buildkit.frontend.network.none": network_none}}}
    with Client(root=gateway_root) as client:
        client.solve(state, progress=None, image_config=config,
                     outputs=[{"type": "image", "name": ref, "push": "true"}])
    return ref
