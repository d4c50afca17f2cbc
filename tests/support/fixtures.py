"""Shared pytest fixtures: registries, the busybox base image, Docker client configs.

- ``registry``: a session-wide Distribution registry (``.host`` = ``127.0.0.1:PORT``, ``.url``).
- ``auth_registry``: the same with htpasswd basic auth (``.username``, ``.password``).
- ``registry_factory``: start extra registries (``registry_factory(username=…,
  proxy_remote_url=…)``) that stop when the test ends.
- ``busybox_layout``: path of the busybox OCI image layout (tag ``latest``).
- ``python_layout``: path of an OCI layout (tag ``latest``) of busybox + Debian's python3.11 +
  pip (``support/pythonimage.py``); skips where it cannot be made (fails under ``CI=true``).
- ``busybox_ref``: ``127.0.0.1:PORT/busybox:latest`` pushed to ``registry`` by pybk's client.
- ``docker_config``: writes a Docker ``config.json`` and points ``$DOCKER_CONFIG`` at it.
- ``content_store``: an empty ContentStore under tmp_path.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.busybox import build_busybox_layout, push_oci_layout, skopeo_inspect
from support.pythonimage import build_python_layout, require_python_image
from support.registry import RegistryServer, registry_available

AUTH_USER = "pybk"
AUTH_PASSWORD = "pybk-secret"


def _require_registry() -> None:
    if not registry_available():
        pytest.skip("Distribution registry not installed (apt-get install docker-registry)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _require_registry()
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _require_registry()
    server = RegistryServer(tmp_path_factory.mktemp("auth-registry"), username=AUTH_USER,
                            password=AUTH_PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RegistryServer]]:
    _require_registry()
    started: list[RegistryServer] = []

    def start(**options: Any) -> RegistryServer:
        server = RegistryServer(tmp_path / f"registry-{len(started)}", **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_layout(tmp_path_factory.mktemp("busybox") / "layout")


@pytest.fixture(scope="session")
def python_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_python_image()
    return build_python_layout(tmp_path_factory.mktemp("python") / "layout")


@pytest.fixture(scope="session")
def busybox_ref(registry: RegistryServer, busybox_layout: Path) -> str:
    ref = f"{registry.host}/busybox:latest"
    digest = push_oci_layout(busybox_layout, ref)
    assert skopeo_inspect(ref)["Digest"] == digest
    return ref


class DockerConfigWriter:
    """Writes ``config.json`` files into one directory that ``$DOCKER_CONFIG`` points at."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "config.json"

    def write(self, auths: dict[str, tuple[str, str]] | None = None, *,
              raw: dict[str, Any] | None = None, plain: bool = False) -> Path:
        """``auths`` maps host → (user, password); ``plain`` writes username/password keys
        instead of the base64 ``auth`` field; ``raw`` is merged in as is."""
        entries: dict[str, Any] = {}
        for host, (user, password) in (auths or {}).items():
            if plain:
                entries[host] = {"username": user, "password": password}
            else:
                entries[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        data: dict[str, Any] = {"auths": entries, **(raw or {})}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data))
        return self.path


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockerConfigWriter:
    writer = DockerConfigWriter(tmp_path / "docker-config")
    monkeypatch.setenv("DOCKER_CONFIG", str(writer.directory))
    return writer


@pytest.fixture
def content_store(tmp_path: Path) -> Any:
    from pybk.core.store.content import ContentStore

    return ContentStore(tmp_path / "store")
