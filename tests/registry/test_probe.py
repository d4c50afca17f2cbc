"""Resolving a tag whose manifest the content store holds: one anonymous HEAD over the standard
library, no async HTTP stack; anything the probe cannot answer goes to the full client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.fixtures import AUTH_PASSWORD, AUTH_USER

from pybk.core.registry import OCI_MANIFEST
from pybk.core.registry.client import Descriptor, RegistryClient
from pybk.core.registry.probe import head_digest
from pybk.core.store.content import ContentStore

pytestmark = pytest.mark.registry

DIGEST = "sha256:" + "ab" * 32


def _resolve(ref: str, store) -> object:
    async def go():
        async with RegistryClient(content_store=ContentStore(store)) as client:
            return await client.resolve(ref)
    return asyncio.run(go())


def _resolve_elsewhere(ref: str, store) -> list[str]:
    """Resolve in a fresh interpreter: the digests, and whether httpx got imported."""
    code = (
        "import asyncio, sys\n"
        "from pybk.core.registry.client import RegistryClient\n"
        "from pybk.core.store.content import ContentStore\n"
        "async def main():\n"
        f"    async with RegistryClient(content_store=ContentStore({str(store)!r})) as c:\n"
        f"        r = await c.resolve({ref!r})\n"
        "        print(r.manifest_digest, r.config_digest, len(r.layers), 'httpx' in sys.modules,\n"
        "              'http.client' in sys.modules)\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_an_unchanged_tag_is_resolved_without_the_async_stack(busybox_ref, tmp_path):
    store = tmp_path / "store"
    first = _resolve(busybox_ref, store)  # the full client: the manifest and config are stored
    again = _resolve(busybox_ref, store)
    assert (again.manifest_digest, again.manifest, again.config, again.layers, again.platform) \
        == (first.manifest_digest, first.manifest, first.config, first.layers, first.platform)
    assert _resolve_elsewhere(busybox_ref, store) == [
        first.manifest_digest, first.config_digest, str(len(first.layers)), "False", "False"]
    # an empty store: the full client (httpx) fetches
    assert _resolve_elsewhere(busybox_ref, tmp_path / "empty")[-2] == "True"


def test_a_moved_tag_is_fetched_again(registry, busybox_ref, tmp_path):
    store = tmp_path / "store"
    ref = f"{registry.host}/busybox:moving"
    first = _resolve(busybox_ref, store)

    async def push(tag_ref: str, label: str) -> str:
        config = json.loads(json.dumps(first.config))
        config.setdefault("config", {}).setdefault("Labels", {})["moved"] = label
        data = json.dumps(config).encode()
        desc = Descriptor(media_type=first.manifest["config"]["mediaType"],
                          digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))
        manifest = dict(first.manifest, config=desc.to_dict())
        async with RegistryClient(content_store=ContentStore(tmp_path / "push")) as client:
            await client.push_blob(tag_ref, desc, data)
            return await client.push_manifest(tag_ref, manifest, OCI_MANIFEST)

    one = asyncio.run(push(ref, "one"))
    assert _resolve(ref, store).manifest_digest == one
    two = asyncio.run(push(ref, "two"))
    assert two != one
    moved = _resolve(ref, store)  # the probe names a digest the store lacks: fetched
    assert moved.manifest_digest == two and moved.config["config"]["Labels"]["moved"] == "two"


def test_a_registry_asking_for_credentials_goes_to_the_full_client(auth_registry, busybox_layout,
                                                                   docker_config, tmp_path):
    from support.busybox import push_oci_layout

    ref = f"{auth_registry.host}/private/probe:latest"
    docker_config.write({auth_registry.host: (AUTH_USER, AUTH_PASSWORD)})
    digest = push_oci_layout(busybox_layout, ref)
    store = tmp_path / "store"
    assert _resolve(ref, store).manifest_digest == digest
    assert _resolve(ref, store).manifest_digest == digest  # the HEAD got 401: full client
    docker_config.write({})
    # without credentials the probe must not answer from the store either
    with pytest.raises(Exception, match="authentication required"):
        _resolve(ref, store)


class _Server:
    """A HEAD answer chosen per path: ``/ok`` a digest, ``/plain`` no digest header,
    ``/auth`` 401, ``/moved`` 307, ``/bad`` a malformed digest."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?")[0]
                status, digest = {"/ok": (200, DIGEST), "/plain": (200, None),
                                  "/auth": (401, DIGEST), "/moved": (307, DIGEST),
                                  "/bad": (200, "sha256:xyz"), "/lower": (200, DIGEST),
                                  "/many": (200, DIGEST)}[path]
                self.send_response(status)
                if path == "/many":  # a long head, read in several pieces
                    for i in range(400):
                        self.send_header(f"X-Filler-{i}", "x" * 40)
                if digest:
                    self.send_header("docker-content-digest" if path == "/lower"
                                     else "Docker-Content-Digest", digest)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.http.server_port}"


def test_head_digest_answers_only_a_plain_200_with_a_digest():
    server = _Server()
    try:
        def probe(path, scheme="http"):
            return head_digest(scheme, server.host, path, accept="*/*", timeout=5)
        assert probe("/ok") == DIGEST
        assert probe("/lower") == DIGEST and probe("/many") == DIGEST
        assert [probe(p) for p in ("/plain", "/auth", "/moved", "/bad")] == [None] * 4
        assert probe("/ok HTTP/1.1\r\nX: y") is None  # no header injection through the path
        assert probe("/ok", scheme="ftp") is None
        assert head_digest("http", "127.0.0.1:1", "/ok", accept="*/*", timeout=5) is None
    finally:
        server.http.shutdown()
