"""The registry client against a real Distribution registry (and small local HTTP servers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.busybox import layout_manifest, push_oci_layout, skopeo_inspect
from support.fixtures import AUTH_PASSWORD, AUTH_USER

from pybk.core.config.schema import KeyPair, RegistryConfig
from pybk.core.errors import RegistryError
from pybk.core.platform import host_platform
from pybk.core.registry import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from pybk.core.registry.auth import Credentials
from pybk.core.registry.client import Descriptor, RegistryClient
from pybk.core.store.content import ContentStore

pytestmark = pytest.mark.registry


def run(coro):
    return asyncio.run(coro)


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def layout_parts(layout: Path) -> tuple[dict, dict, Path]:
    """(manifest, config, blobs dir) of the busybox layout."""
    _, manifest_bytes = layout_manifest(layout)
    manifest = json.loads(manifest_bytes)
    blobs = layout / "blobs" / "sha256"
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return manifest, config, blobs


async def pull(ref: str, store_root: Path, **options) -> tuple:
    events: list[tuple[str, int, int]] = []
    async with RegistryClient(content_store=ContentStore(store_root), **options) as client:
        image = await client.pull(ref, progress=lambda d, cur, tot: events.append((d.digest, cur, tot)))
        return image, events, client.token_requests


def assert_pulled(image, store_root: Path, layout: Path) -> None:
    manifest, config, _ = layout_parts(layout)
    store = ContentStore(store_root)
    assert [layer.digest for layer in image.layers] == [layer["digest"] for layer in manifest["layers"]]
    for layer in image.layers:
        assert store.has(layer.digest)
        assert sha256_file(store.path(layer.digest)) == layer.digest
        assert store.info(layer.digest) == layer.size
    assert image.config == config
    assert store.has(image.config_digest) and store.has(image.manifest_digest)
    assert os.listdir(store.ingest_dir) == []


# ------------------------------------------------------------------------------------------


def test_importing_the_client_does_not_import_httpx():
    code = "import sys, pybk.core.registry.client; assert 'httpx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pull_anonymously(busybox_ref, busybox_layout, tmp_path):
    image, events, tokens = run(pull(busybox_ref, tmp_path / "store"))
    assert_pulled(image, tmp_path / "store", busybox_layout)
    entry, _ = layout_manifest(busybox_layout)
    assert image.manifest_digest == entry["digest"]
    assert image.manifest_media_type == OCI_MANIFEST
    assert image.platform == host_platform()
    assert image.config["architecture"] == host_platform().architecture
    assert any(e.startswith("PATH=") for e in image.config["config"]["Env"])
    layer = image.layers[0]
    assert events[-1] == (layer.digest, layer.size, layer.size)
    assert tokens == 0


def test_pull_skips_blobs_already_present(registry_factory, busybox_layout, tmp_path):
    server = registry_factory()
    ref = f"{server.host}/busybox:latest"
    push_oci_layout(busybox_layout, ref)
    manifest, _, blobs = layout_parts(busybox_layout)
    layer_digest = manifest["layers"][0]["digest"]
    shutil.rmtree(server.blob_data_path(layer_digest).parent)  # the registry lost the layer
    with pytest.raises(RegistryError) as info:
        run(pull(ref, tmp_path / "empty-store"))
    assert layer_digest in str(info.value) and "not found" in str(info.value)
    store = ContentStore(tmp_path / "store")
    store.put_bytes((blobs / layer_digest.split(":")[1]).read_bytes(), layer_digest)
    image, events, _ = run(pull(ref, tmp_path / "store"))
    assert_pulled(image, tmp_path / "store", busybox_layout)
    assert events == [(layer_digest, image.layers[0].size, image.layers[0].size)]


def test_pull_and_push_with_basic_auth(auth_registry, busybox_layout, docker_config, tmp_path):
    ref = f"{auth_registry.host}/private/busybox:latest"
    docker_config.write({auth_registry.host: (AUTH_USER, AUTH_PASSWORD)})
    digest = push_oci_layout(busybox_layout, ref)  # credentials from $DOCKER_CONFIG
    assert skopeo_inspect(ref, creds=(AUTH_USER, AUTH_PASSWORD))["Digest"] == digest
    image, _, tokens = run(pull(ref, tmp_path / "store"))
    assert image.manifest_digest == digest and tokens == 0
    assert_pulled(image, tmp_path / "store", busybox_layout)

    docker_config.write({})
    with pytest.raises(RegistryError, match="authentication required and no credentials"):
        run(pull(ref, tmp_path / "store2"))
    docker_config.write({auth_registry.host: (AUTH_USER, "wrong")})
    with pytest.raises(RegistryError, match="HTTP 401 unauthorized"):
        run(pull(ref, tmp_path / "store3"))


class TokenProxy:
    """A registry front that demands bearer tokens from its own token endpoint.

    Authorised ``/v2/`` requests are forwarded to ``upstream``. The first ``fail_blobs`` blob
    requests answer 503 to exercise retries.
    """

    def __init__(self, upstream: str, *, user: tuple[str, str] | None = None, fail_blobs: int = 0):
        self.upstream = upstream
        self.user = user
        self.fail_blobs = fail_blobs
        self.tokens: dict[str, set[str]] = {}
        self.token_queries: list[dict[str, list[str]]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return None

            def do_GET(self):
                proxy.handle(self)

            def do_HEAD(self):
                proxy.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()

    def reply(self, h, status, body=b"", headers=None):
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def handle(self, h):
        url = urllib.parse.urlsplit(h.path)
        if url.path == "/token":
            query = urllib.parse.parse_qs(url.query)
            self.token_queries.append(query)
            if self.user is not None:
                wanted = "Basic " + base64.b64encode(":".join(self.user).encode()).decode()
                if h.headers.get("Authorization") != wanted:
                    return self.reply(h, 401)
            token = f"token-{len(self.tokens)}"
            self.tokens[token] = set(query.get("scope", []))
            return self.reply(h, 200, json.dumps({"token": token, "expires_in": 300}).encode(),
                              {"Content-Type": "application/json"})
        parts = url.path.split("/")
        kind_at = next((i for i, p in enumerate(parts) if p in ("manifests", "blobs")), None)
        scope = f"repository:{'/'.join(parts[2:kind_at])}:pull" if kind_at else ""
        auth = h.headers.get("Authorization", "")
        granted = self.tokens.get(auth.removeprefix("Bearer "), set()) if auth.startswith("Bearer ") else set()
        if not scope or scope not in granted:
            challenge = (f'Bearer realm="http://{self.host}/token",service="pybk-token-test"'
                         + (f',scope="{scope}"' if scope else ""))
            return self.reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                              {"WWW-Authenticate": challenge})
        if "blobs" in parts and self.fail_blobs > 0:
            self.fail_blobs -= 1
            return self.reply(h, 503)
        request = urllib.request.Request(self.upstream + h.path, method=h.command,
                                         headers={"Accept": h.headers.get("Accept", "*/*")})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status, body, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, body, headers = exc.code, exc.read(), exc.headers
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "docker-content-digest")}
        self.reply(h, status, body, keep)


def test_bearer_token_flow_caches_tokens_per_scope_and_retries(busybox_ref, busybox_layout, registry, tmp_path):
    with TokenProxy(registry.url, user=("tok-user", "tok-pass"), fail_blobs=2) as proxy:
        ref = f"{proxy.host}/busybox:latest"
        creds = {proxy.host: Credentials("tok-user", "tok-pass")}
        image, _, token_requests = run(pull(ref, tmp_path / "store", credentials=creds, backoff=0.01))
        assert_pulled(image, tmp_path / "store", busybox_layout)
        assert token_requests == 1  # manifest, config and layer share one pull token
        assert proxy.token_queries == [{"service": ["pybk-token-test"],
                                        "scope": ["repository:busybox:pull"], "account": ["tok-user"]}]
        assert proxy.fail_blobs == 0  # both 503s were retried

        with pytest.raises(RegistryError, match="token request .* HTTP 401"):
            run(pull(ref, tmp_path / "store2", credentials={proxy.host: Credentials("tok-user", "bad")}))


def test_pull_through_mirror_of_unreachable_host(registry_factory, busybox_layout, tmp_path):
    mirror = registry_factory()
    push_oci_layout(busybox_layout, f"{mirror.host}/team/busybox:latest")
    hosts = {"nonexistent.invalid:5000": RegistryConfig(mirrors=[mirror.host])}
    ref = "nonexistent.invalid:5000/team/busybox:latest"
    image, _, _ = run(pull(ref, tmp_path / "store", hosts_config=hosts, retries=0))
    assert str(image.ref) == ref
    assert_pulled(image, tmp_path / "store", busybox_layout)

    with pytest.raises(RegistryError) as info:
        run(pull("nonexistent.invalid:5000/team/busybox:nope", tmp_path / "store", hosts_config=hosts,
                 retries=0))
    message = str(info.value)
    assert f"mirror {mirror.host}" in message and "not found" in message
    assert "nonexistent.invalid:5000" in message


def test_pull_through_cache_mirror_for_docker_hub(registry, busybox_ref, registry_factory, tmp_path):
    hub_copy = f"{registry.host}/library/busybox:latest"

    async def copy_with_mount():
        async with RegistryClient(content_store=ContentStore(tmp_path / "push-store")) as client:
            source = await client.pull(busybox_ref)
            sent = [await client.push_blob(hub_copy, d, mount_from=busybox_ref)
                    for d in [Descriptor(OCI_MANIFEST, source.config_digest, 0), *source.layers]]
            manifest_bytes = client.store.read_bytes(source.manifest_digest)
            return sent, await client.push_manifest(hub_copy, manifest_bytes, OCI_MANIFEST)

    sent, digest = run(copy_with_mount())
    assert sent == [False, False]  # both blobs were mounted from the other repository
    assert skopeo_inspect(hub_copy)["Digest"] == digest

    cache = registry_factory(proxy_remote_url=registry.url)
    hosts = {"docker.io": RegistryConfig(mirrors=[cache.host])}
    image, _, _ = run(pull("busybox", tmp_path / "store", hosts_config=hosts, retries=0))
    assert image.manifest_digest == digest
    assert str(image.ref) == "docker.io/library/busybox:latest"


def test_index_platform_selection(registry, busybox_ref, busybox_layout, tmp_path):
    manifest, config, _ = layout_parts(busybox_layout)
    repo = f"{registry.host}/multi"

    async def push_index():
        entries = []
        async with RegistryClient() as client:
            for arch in ("amd64", "arm64"):
                cfg = json.dumps({**config, "architecture": arch}).encode()
                cfg_desc = Descriptor("application/vnd.oci.image.config.v1+json",
                                      "sha256:" + hashlib.sha256(cfg).hexdigest(), len(cfg))
                await client.push_blob(repo, cfg_desc, cfg)
                await client.push_blob(repo, Descriptor.from_dict(manifest["layers"][0]),
                                       mount_from=busybox_ref)
                body = json.dumps({**manifest, "config": cfg_desc.to_dict()}).encode()
                digest = await client.push_manifest(repo, body, OCI_MANIFEST, by_digest=True)
                entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                                "platform": {"os": "linux", "architecture": arch}})
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
            return entries, await client.push_manifest(f"{repo}:v1", index)

    entries, index_digest = run(push_index())
    raw = skopeo_inspect(f"{repo}:v1", raw=True)
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]

    async def resolve(platform):
        async with RegistryClient(content_store=ContentStore(tmp_path / "store")) as client:
            return await client.resolve(f"{repo}:v1", platform)

    for platform, arch, entry in [("linux/arm64", "arm64", entries[1]), ("linux/aarch64/v8", "arm64", entries[1]),
                                  ("linux/x86_64", "amd64", entries[0])]:
        image = run(resolve(platform))
        assert image.config["architecture"] == arch
        assert image.manifest_digest == entry["digest"]
        assert image.index_digest == index_digest
        assert str(image.platform) == f"linux/{arch}"
    with pytest.raises(RegistryError, match=r"no image for platform linux/s390x \(available: linux/amd64, linux/arm64\)"):
        run(resolve("linux/s390x"))


def test_corrupt_blob_is_rejected_and_never_stored(registry_factory, busybox_layout, tmp_path):
    server = registry_factory()
    ref = f"{server.host}/busybox:latest"
    push_oci_layout(busybox_layout, ref)
    manifest, _, _ = layout_parts(busybox_layout)
    layer = Descriptor.from_dict(manifest["layers"][0])
    data_file = server.blob_data_path(layer.digest)
    original = data_file.read_bytes()
    data_file.write_bytes(original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:])

    store = ContentStore(tmp_path / "store")

    async def fetch():
        async with RegistryClient(content_store=store) as client:
            return await client.fetch_blob(ref, layer)

    with pytest.raises(RegistryError) as info:
        run(fetch())
    assert f"blob {layer.digest}" in str(info.value) and "does not verify" in str(info.value)
    assert not store.has(layer.digest)
    assert os.listdir(store.ingest_dir) == []

    data_file.write_bytes(original[:-10])  # truncated
    with pytest.raises(RegistryError, match=f"blob {layer.digest}.*size {layer.size - 10}"):
        run(fetch())
    assert list(store.walk()) == [] and os.listdir(store.ingest_dir) == []


def test_chunked_push_of_docker_v2_manifest_is_read_by_skopeo(registry, busybox_layout, tmp_path):
    manifest, config, blobs = layout_parts(busybox_layout)
    docker_manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {**manifest["config"], "mediaType": DOCKER_CONFIG},
        "layers": [{**manifest["layers"][0], "mediaType": DOCKER_LAYER_GZIP}],
    }
    ref = f"{registry.host}/chunked/busybox:docker"
    progress: list[tuple[int, int]] = []

    async def push():
        async with RegistryClient() as client:
            for desc in [docker_manifest["config"], *docker_manifest["layers"]]:
                d = Descriptor.from_dict(desc)
                assert await client.push_blob(ref, d, blobs / d.digest.split(":")[1], chunk_size=256 * 1024,
                                              progress=lambda cur, tot: progress.append((cur, tot)))
                assert await client.blob_exists(ref, d.digest)
            return await client.push_manifest(ref, docker_manifest)

    digest = run(push())
    layer_size = manifest["layers"][0]["size"]
    assert (layer_size, layer_size) in progress and len(progress) > 4
    raw = skopeo_inspect(ref, raw=True)
    assert raw["mediaType"] == DOCKER_MANIFEST
    info = skopeo_inspect(ref)
    assert info["Digest"] == digest
    assert info["Layers"] == [manifest["layers"][0]["digest"]]
    assert info["Architecture"] == config["architecture"]

    image, _, _ = run(pull(ref, tmp_path / "store"))
    assert image.manifest_media_type == DOCKER_MANIFEST and image.manifest_digest == digest
    assert_pulled(image, tmp_path / "store", busybox_layout)


def test_errors_name_what_failed(registry, busybox_ref, tmp_path):
    with pytest.raises(RegistryError, match=r"manifest busybox:nosuchtag: HTTP 404 not found \(MANIFEST_UNKNOWN"):
        run(pull(f"{registry.host}/busybox:nosuchtag", tmp_path / "s"))
    with pytest.raises(RegistryError, match="GET http://127.0.0.1:1/v2/x/manifests/latest: ConnectError"):
        run(pull("127.0.0.1:1/x", tmp_path / "s", retries=1, backoff=0.01))
    hosts = {registry.host: RegistryConfig(http=False)}  # TLS against a plain HTTP registry
    with pytest.raises(RegistryError, match=f"https://{registry.host}/v2/"):
        run(pull(busybox_ref, tmp_path / "s", hosts_config=hosts, retries=0))


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(directory: Path) -> dict[str, str]:
    directory.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=pybk test CA", cwd=directory)
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")]:
        (directory / f"{name}.ext").write_text(ext)
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
                cwd=directory)
    return {p.stem + p.suffix: str(p) for p in directory.iterdir()}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_tls_with_ca_client_keypair_and_insecure(registry_factory, busybox_layout, tmp_path):
    certs = make_certs(tmp_path / "certs")
    server = registry_factory(tls=(certs["server.pem"], certs["server.key"]), client_ca=certs["ca.pem"])
    ref = f"{server.host}/busybox:latest"
    pair = [KeyPair(key=certs["client.key"], cert=certs["client.pem"])]
    good = {server.host: RegistryConfig(http=False, ca=[certs["ca.pem"]], keypair=pair)}
    digest = push_oci_layout(busybox_layout, ref, hosts_config=good)
    image, _, _ = run(pull(ref, tmp_path / "s1", hosts_config=good))
    assert image.manifest_digest == digest

    insecure = {server.host: RegistryConfig(http=False, insecure=True, keypair=pair)}
    image, _, _ = run(pull(ref, tmp_path / "s2", hosts_config=insecure))
    assert image.manifest_digest == digest

    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    shutil.copy(certs["ca.pem"], certs_d / "ca.crt")
    shutil.copy(certs["client.pem"], certs_d / "client.cert")
    shutil.copy(certs["client.key"], certs_d / "client.key")
    by_dir = {server.host: RegistryConfig(http=False, tlsconfigdir=[str(certs_d)])}
    image, _, _ = run(pull(ref, tmp_path / "s3", hosts_config=by_dir))
    assert image.manifest_digest == digest

    unknown_ca = {server.host: RegistryConfig(http=False, keypair=pair)}
    with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED"):
        run(pull(ref, tmp_path / "s4", hosts_config=unknown_ca, retries=0))
    no_client_cert = {server.host: RegistryConfig(http=False, ca=[certs["ca.pem"]])}
    with pytest.raises(RegistryError):
        run(pull(ref, tmp_path / "s5", hosts_config=no_client_cert, retries=0))


def test_push_from_content_store_and_bytes(registry, tmp_path):
    store = ContentStore(tmp_path / "store")
    payload = os.urandom(3000)
    digest = store.put_bytes(payload)
    ref = f"{registry.host}/pushes/raw:latest"

    async def go():
        async with RegistryClient(content_store=store) as client:
            first = await client.push_blob(ref, Descriptor("application/octet-stream", digest, len(payload)))
            again = await client.push_blob(ref, Descriptor("application/octet-stream", digest, len(payload)),
                                           payload)
            other = b"small blob"
            other_desc = Descriptor("application/octet-stream",
                                    "sha256:" + hashlib.sha256(other).hexdigest(), len(other))
            await client.push_blob(ref, other_desc, other)
            return first, again, await client.fetch_blob_bytes(ref, other_desc)

    first, again, fetched = run(go())
    assert (first, again, fetched) == (True, False, b"small blob")


def test_insecure_host_falls_back_to_plain_http(registry, busybox_ref, tmp_path, monkeypatch):
    from pybk.core.registry import client as client_module

    monkeypatch.setattr(client_module, "_is_loopback", lambda host: False)  # as if it were remote
    with pytest.raises(RegistryError, match=f"https://{registry.host}"):
        run(pull(busybox_ref, tmp_path / "s1", retries=0))
    hosts = {registry.host: RegistryConfig(insecure=True)}
    image, _, _ = run(pull(busybox_ref, tmp_path / "s2", hosts_config=hosts, retries=0))
    assert image.layers and ContentStore(tmp_path / "s2").has(image.layers[0].digest)


def test_manifest_fetched_by_digest_must_match_it(tmp_path):
    """A server answering a digest request with other bytes is caught, as is junk JSON."""
    served = {"body": b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'"}'}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            return None

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", OCI_MANIFEST)
            self.send_header("Content-Length", str(len(served["body"])))
            self.end_headers()
            self.wfile.write(served["body"])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        wanted = "sha256:" + "0" * 64
        with pytest.raises(RegistryError, match=f"manifest {wanted} of app does not verify"):
            run(pull(f"{host}/app@{wanted}", tmp_path / "s"))
        served["body"] = b"not json"
        with pytest.raises(RegistryError, match="manifest .* is not valid JSON"):
            run(pull(f"{host}/app:latest", tmp_path / "s"))
    finally:
        server.shutdown()
        server.server_close()
