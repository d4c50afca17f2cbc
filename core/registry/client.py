"""An async OCI distribution client on httpx: resolve, pull and push images.

Pulls try the host's mirrors first (``[registry."host"] mirrors``), then the host; pushes go to
the host only. ``http = true`` means plain HTTP; without a setting, ``localhost`` and loopback
addresses use plain HTTP and everything else HTTPS. ``insecure = true`` skips TLS verification
and falls back to plain HTTP when the TLS handshake fails. ``ca`` files, client key pairs
(``keypair``) and ``tlsconfigdir`` directories (``*.crt`` CAs, ``*.cert``/``*.key`` pairs) configure TLS.
Every blob and manifest is verified against its digest and size as it streams in;
transient failures (connection errors, 5xx, 429) are retried with exponential backoff.

One client belongs to one event loop; close it with ``aclose()`` or ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybk.core.errors import RegistryError
from pybk.core.http import async_client, default_tls_context, load_httpx
from pybk.core.model import Model, field
from pybk.core.platform import Platform, host_platform, parse_platform, select_best
from pybk.core.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from pybk.core.registry.auth import Authenticator, Credentials, DockerCredentialStore
from pybk.core.registry.reference import Reference, parse_reference
from pybk.core.registry.reference import is_loopback as _is_loopback
from pybk.core.store.content import ContentStore, DigestMismatchError

if TYPE_CHECKING:
    import httpx

ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
MAX_MANIFEST_SIZE = 4 << 20
_CHUNK = 1 << 16
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

Progress = Callable[[int, int], None]


class Descriptor(Model):
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Descriptor:
        try:
            return cls(
                media_type=str(data.get("mediaType", "")),
                digest=str(data["digest"]),
                size=int(data["size"]),
                platform=Platform.from_dict(data["platform"]) if data.get("platform") else None,
                annotations=dict(data.get("annotations") or {}),
                urls=tuple(data.get("urls") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"malformed descriptor {dict(data)!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            data["platform"] = self.platform.to_dict()
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        if self.urls:
            data["urls"] = list(self.urls)
        return data


class ResolvedImage(Model, eq=False):
    """An image manifest for one platform, with its parsed config."""

    ref: Reference
    manifest_digest: str
    manifest_media_type: str
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layers: list[Descriptor]
    platform: Platform | None = None
    index_digest: str | None = None


class _Endpoint(Model):
    host: str  # as configured / used for credentials
    scheme: str
    prefix: str  # path before /v2, "" or "/something"
    http_fallback: bool
    mirror: bool

    def api(self, scheme: str | None = None) -> str:
        return f"{scheme or self.scheme}://{self.host}{self.prefix}/v2"


def _cfg(config: Any, name: str, default: Any) -> Any:
    value = getattr(config, name, default) if config is not None else default
    return default if value is None else value


#: TLS contexts with per-host settings, by (host, settings)
_TLS_CONTEXTS: dict[tuple[str, str], ssl.SSLContext] = {}


def warm_up() -> None:
    """Load what the first registry request would: httpx, the modules it loads when its first
    client is made (~120 ms here) and the default TLS context. ``pybkd`` calls it before it
    forks, so a build that resolves ``FROM`` pays for none of it."""
    import importlib

    httpx = load_httpx()
    httpx.AsyncClient(verify=default_tls_context())
    # what httpcore loads on its first connection under asyncio
    with contextlib.suppress(ImportError):
        importlib.import_module("anyio._backends._asyncio")


class RegistryClient:
    """Talks to OCI registries for pulls and pushes.

    :param hosts_config: ``{host: RegistryConfig}`` (attributes ``mirrors``, ``http``,
        ``insecure``, ``ca``, ``keypair`` with ``key``/``cert``, optionally ``tlsconfigdir``); any
        object with these attributes works.
    :param content_store: where pulled blobs go (needed for pulls and store-backed pushes).
    :param docker_config_path: a Docker ``config.json``; default ``$DOCKER_CONFIG`` or ~/.docker.
    :param credentials: overrides config.json per host (``{host: Credentials}``).
    """

    def __init__(
        self,
        hosts_config: Mapping[str, Any] | None = None,
        content_store: ContentStore | None = None,
        docker_config_path: str | os.PathLike[str] | None = None,
        *,
        credentials: Mapping[str, Credentials] | None = None,
        retries: int = 3,
        backoff: float = 0.2,
        timeout: float = 60.0,
    ):
        self.hosts_config = dict(hosts_config or {})
        self.store = content_store
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._docker_creds = DockerCredentialStore(docker_config_path)
        self._explicit_creds = dict(credentials or {})
        self._auth = Authenticator(self._lookup_credentials, self._fetch_token)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._plain_http: set[str] = set()
        self._preferred: dict[str, _Endpoint] = {}

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    @property
    def token_requests(self) -> int:
        """How many bearer tokens were requested (tokens are cached per scope)."""
        return self._auth.token_requests

    # ---------------------------------------------------------------- pulling

    async def resolve(self, ref: str | Reference, platform: str | Platform | None = None) -> ResolvedImage:
        """Resolve ``ref`` to the manifest for ``platform`` (default: this machine's) and its config."""
        ref = _as_ref(ref)
        wanted = _as_platform(platform)
        return await self._on_pull_endpoints(ref, lambda ep: self._resolve_on(ep, ref, wanted))

    async def get_manifest(self, ref: str | Reference) -> tuple[str, str, bytes]:
        """``(digest, media type, bytes)`` of what ``ref`` names (an index stays an index)."""
        ref = _as_ref(ref)
        return await self._on_pull_endpoints(ref, lambda ep: self._get_manifest(ep, ref, ref.object))

    async def fetch_blob(self, ref: str | Reference, descriptor: Descriptor,
                         progress: Progress | None = None) -> Path:
        """Download one blob of ``ref``'s repository into the content store; returns its path."""
        ref = _as_ref(ref)
        store = self._require_store()
        if store.has(descriptor.digest):
            if progress is not None:
                progress(descriptor.size, descriptor.size)
            return store.path(descriptor.digest)
        return await self._on_pull_endpoints(ref, lambda ep: self._download(ep, ref, descriptor, progress))

    async def fetch_blob_bytes(self, ref: str | Reference, descriptor: Descriptor) -> bytes:
        """A small blob (config, cache config) verified and returned; stored too if there is a store."""
        ref = _as_ref(ref)
        if self.store is not None:
            return (await self.fetch_blob(ref, descriptor)).read_bytes()
        return await self._on_pull_endpoints(ref, lambda ep: self._blob_bytes(ep, ref, descriptor))

    async def pull(self, ref: str | Reference, platform: str | Platform | None = None,
                   progress: Callable[[Descriptor, int, int], None] | None = None,
                   *, max_concurrency: int = 4) -> ResolvedImage:
        """Resolve ``ref`` and download every layer not yet in the content store."""
        image = await self.resolve(ref, platform)
        limit = asyncio.Semaphore(max_concurrency)

        async def one(layer: Descriptor) -> None:
            callback = (lambda cur, tot: progress(layer, cur, tot)) if progress else None
            async with limit:
                await self.fetch_blob(image.ref, layer, callback)

        unique = {layer.digest: layer for layer in image.layers}  # empty layers often repeat
        await asyncio.gather(*(one(layer) for layer in unique.values()))
        return image

    async def _resolve_on(self, ep: _Endpoint, ref: Reference, wanted: Platform) -> ResolvedImage:
        digest, media_type, data = await self._get_manifest(ep, ref, ref.object)
        index_digest = None
        chosen_platform = None
        if media_type in INDEX_TYPES:
            index_digest = digest
            index = _json(data, f"{ref} index {digest}")
            entries = [Descriptor.from_dict(m) for m in index.get("manifests") or []]
            choice = select_best(wanted, [(d.platform, d) for d in entries
                                          if d.media_type in MANIFEST_TYPES or not d.media_type])
            if choice is None:
                available = ", ".join(sorted({str(d.platform) for d in entries if d.platform})) or "none"
                raise RegistryError(f"{ref}: no image for platform {wanted} (available: {available})")
            chosen_platform = choice.platform
            digest, media_type, data = await self._get_manifest(ep, ref, choice.digest)
        if media_type not in MANIFEST_TYPES:
            raise RegistryError(f"{ref}: unsupported manifest media type {media_type!r}")
        manifest = _json(data, f"{ref} manifest {digest}")
        try:
            config_desc = Descriptor.from_dict(manifest["config"])
            layers = [Descriptor.from_dict(layer) for layer in manifest.get("layers") or []]
        except (KeyError, TypeError) as exc:
            raise RegistryError(f"{ref}: manifest {digest} is malformed ({exc})") from None
        if self.store is not None:
            config_bytes = (await self._download(ep, ref, config_desc, None)
                            if not self.store.has(config_desc.digest)
                            else self.store.path(config_desc.digest)).read_bytes()
        else:
            config_bytes = await self._blob_bytes(ep, ref, config_desc)
        config = _json(config_bytes, f"{ref} config {config_desc.digest}")
        if chosen_platform is None and config.get("architecture"):
            chosen_platform = Platform.from_dict(config)
        return ResolvedImage(
            ref=ref, manifest_digest=digest, manifest_media_type=media_type, manifest=manifest,
            config_digest=config_desc.digest, config=config, layers=layers,
            platform=chosen_platform, index_digest=index_digest,
        )

    async def _get_manifest(self, ep: _Endpoint, ref: Reference, obj: str) -> tuple[str, str, bytes]:
        if self.store is not None:
            stored = await self._stored_manifest(ep, ref, obj)
            if stored is not None:
                return stored
        scopes = (f"repository:{ref.path}:pull",)
        resp = await self._send(ep, "GET", f"/{ref.path}/manifests/{obj}", scopes=scopes,
                                headers={"Accept": ACCEPT_MANIFESTS})
        if resp.status_code != 200:
            raise _status_error(resp, f"{ep.host}: manifest {ref.path}:{obj}")
        data = resp.content
        if len(data) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"{ep.host}: manifest {ref.path}:{obj} is larger than 4 MiB")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if obj.startswith("sha256:") and digest != obj:
            raise RegistryError(f"{ep.host}: manifest {obj} of {ref.path} does not verify: content has digest {digest}")
        try:
            media_type = json.loads(data).get("mediaType")
        except (ValueError, AttributeError):
            media_type = None
        media_type = media_type or resp.headers.get("content-type", "").split(";")[0].strip()
        if self.store is not None and not self.store.has(digest):
            self.store.put_bytes(data, digest)
        return digest, media_type, data

    async def _stored_manifest(self, ep: _Endpoint, ref: Reference,
                               obj: str) -> tuple[str, str, bytes] | None:
        """The manifest ``obj`` names from the content store: by digest without a request, by
        tag after one anonymous HEAD (:mod:`pybk.core.registry.probe`) names its digest; None:
        ask the registry (a proxy or an untried plain-HTTP fallback, no answer, not stored)."""
        from pybk.core.http import proxy_configured
        from pybk.core.registry.probe import head_digest, stored_manifest

        digest: str | None = obj
        if not obj.startswith("sha256:"):
            scheme = self._scheme(ep)
            if proxy_configured() or (ep.http_fallback and scheme == "https"):
                return None
            digest = await asyncio.to_thread(
                head_digest, scheme, ep.host, f"{ep.prefix}/v2/{ref.path}/manifests/{obj}",
                accept=ACCEPT_MANIFESTS, timeout=min(self.timeout, 15.0),
                tls_context=self._tls_context(ep.host) if scheme == "https" else None)
        return stored_manifest(self.store, digest, MAX_MANIFEST_SIZE)

    async def _download(self, ep: _Endpoint, ref: Reference, desc: Descriptor,
                        progress: Progress | None) -> Path:
        store = self._require_store()
        scopes = (f"repository:{ref.path}:pull",)
        what = f"blob {desc.digest} of {ref.path} from {ep.host}"
        for attempt in range(self.retries + 1):
            resp = await self._send(ep, "GET", f"/{ref.path}/blobs/{desc.digest}", scopes=scopes, stream=True)
            try:
                if resp.status_code != 200:
                    await resp.aread()
                    raise _status_error(resp, what)
                try:
                    with store.writer(expected_digest=desc.digest, expected_size=desc.size) as writer:
                        async for chunk in resp.aiter_bytes(_CHUNK):
                            writer.write(chunk)
                            if writer.size > desc.size:
                                raise RegistryError(f"{what}: larger than its descriptor's size {desc.size}")
                            if progress is not None:
                                progress(writer.size, desc.size)
                except DigestMismatchError as exc:
                    raise RegistryError(f"{what} does not verify: {exc}") from None
                return store.path(desc.digest)
            except _transport_errors() as exc:
                if attempt >= self.retries:
                    raise RegistryError(f"{what}: {_describe(exc)}") from None
                await asyncio.sleep(self.backoff * 2**attempt)
            finally:
                await resp.aclose()
        raise AssertionError("unreachable")

    async def _blob_bytes(self, ep: _Endpoint, ref: Reference, desc: Descriptor) -> bytes:
        scopes = (f"repository:{ref.path}:pull",)
        what = f"blob {desc.digest} of {ref.path} from {ep.host}"
        resp = await self._send(ep, "GET", f"/{ref.path}/blobs/{desc.digest}", scopes=scopes)
        if resp.status_code != 200:
            raise _status_error(resp, what)
        data = resp.content
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if len(data) != desc.size or actual != desc.digest:
            raise RegistryError(f"{what} does not verify: got {len(data)} bytes with digest {actual}")
        return data

    # ---------------------------------------------------------------- pushing

    async def blob_exists(self, ref: str | Reference, digest: str) -> bool:
        ref = _as_ref(ref)
        return await self._blob_exists(self._push_endpoint(ref), ref, digest,
                                       (f"repository:{ref.path}:pull,push",))

    async def push_blob(
        self,
        ref: str | Reference,
        descriptor: Descriptor,
        source: str | os.PathLike[str] | bytes | None = None,
        *,
        mount_from: str | Reference | None = None,
        chunk_size: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Upload a blob to ``ref``'s repository unless it is there; True when bytes were sent.

        ``source`` is a file path or bytes (default: the content store). ``mount_from`` names a
        repository on the same registry to mount the blob from; ``chunk_size`` switches to a
        chunked (PATCH) upload.
        """
        ref = _as_ref(ref)
        ep = self._push_endpoint(ref)
        from_path = _as_ref(mount_from).path if mount_from is not None else None
        scopes = (f"repository:{ref.path}:pull,push",)
        if from_path and from_path != ref.path:
            scopes += (f"repository:{from_path}:pull",)
        if await self._blob_exists(ep, ref, descriptor.digest, scopes):
            return False
        what = f"push of blob {descriptor.digest} to {ep.host}/{ref.path}"
        for attempt in range(self.retries + 1):
            try:
                return await self._upload(ep, ref, descriptor, source, scopes, from_path,
                                          chunk_size, progress, what)
            except _Retryable as exc:
                if attempt >= self.retries:
                    raise RegistryError(f"{what}: {exc}") from None
                await asyncio.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    async def push_manifest(self, ref: str | Reference, manifest: bytes | Mapping[str, Any],
                            media_type: str | None = None, *, tag: str | None = None,
                            by_digest: bool = False) -> str:
        """PUT a manifest or index under ``tag`` (default: ``ref``'s tag), or under its digest
        when ``by_digest`` or ``ref`` has no tag. Returns the digest."""
        ref = _as_ref(ref)
        data = manifest if isinstance(manifest, bytes) else json.dumps(
            manifest, separators=(",", ":"), sort_keys=True).encode()
        if media_type is None:
            media_type = _json(data, "manifest").get("mediaType")
            if not media_type:
                raise RegistryError("push_manifest: the manifest has no mediaType; pass media_type=")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = digest if by_digest else tag or ref.tag or digest
        ep = self._push_endpoint(ref)
        resp = await self._send(
            ep, "PUT", f"/{ref.path}/manifests/{target}", scopes=(f"repository:{ref.path}:pull,push",),
            headers={"Content-Type": media_type}, content=lambda: data,
        )
        if resp.status_code not in (200, 201):
            raise _status_error(resp, f"{ep.host}: push of manifest {ref.path}:{target}")
        answered = resp.headers.get("docker-content-digest")
        if answered and answered != digest:
            raise RegistryError(f"{ep.host}: manifest pushed as {digest} but the registry stored {answered}")
        return digest

    async def _blob_exists(self, ep: _Endpoint, ref: Reference, digest: str, scopes: tuple[str, ...]) -> bool:
        resp = await self._send(ep, "HEAD", f"/{ref.path}/blobs/{digest}", scopes=scopes)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise _status_error(resp, f"{ep.host}: HEAD blob {digest} of {ref.path}")

    def _blob_opener(self, desc: Descriptor, source: Any) -> Callable[[], Any]:
        if isinstance(source, bytes):
            return lambda: _BytesReader(source)
        path = Path(source) if source is not None else self._require_store().path(desc.digest)
        if not path.is_file():
            raise RegistryError(f"push of blob {desc.digest}: {path} does not exist")
        return lambda: open(path, "rb")

    async def _upload(self, ep: _Endpoint, ref: Reference, desc: Descriptor, source: Any,
                      scopes: tuple[str, ...], from_path: str | None, chunk_size: int | None,
                      progress: Progress | None, what: str) -> bool:
        httpx = load_httpx()

        params = {"mount": desc.digest, "from": from_path} if from_path and from_path != ref.path else None
        resp = await self._send(ep, "POST", f"/{ref.path}/blobs/uploads/", scopes=scopes, params=params,
                                headers={"Content-Length": "0"}, retry=False)
        _retry_on_status(resp)
        if resp.status_code == 201 and params:
            return False
        if resp.status_code != 202 or "location" not in resp.headers:
            raise _status_error(resp, what)
        location = self._join(ep, resp.headers["location"])
        with self._blob_opener(desc, source)() as f:
            if chunk_size:
                offset = 0
                while chunk := f.read(chunk_size):
                    resp = await self._send(
                        ep, "PATCH", location, scopes=scopes, retry=False, content=lambda c=chunk: c,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                    )
                    _retry_on_status(resp)
                    if resp.status_code != 202:
                        raise _status_error(resp, what)
                    location = self._join(ep, resp.headers.get("location") or str(location))
                    offset += len(chunk)
                    if progress is not None:
                        progress(offset, desc.size)
            def body() -> Any:
                return b"" if chunk_size else _aiter_file(f, desc.size, progress)

            put_url = httpx.URL(str(location)).copy_merge_params({"digest": desc.digest})
            headers = {"Content-Type": "application/octet-stream"}
            if not chunk_size:
                headers["Content-Length"] = str(desc.size)
            resp = await self._send(ep, "PUT", put_url, scopes=scopes, retry=False, content=body,
                                    headers=headers)
        _retry_on_status(resp)
        if resp.status_code not in (201, 204):
            raise _status_error(resp, what)
        return True

    def _join(self, ep: _Endpoint, location: str) -> httpx.URL:
        httpx = load_httpx()

        base = httpx.URL(ep.api(self._scheme(ep)))
        return base.join(location)

    # ---------------------------------------------------------------- endpoints and HTTP

    def _pull_endpoints(self, ref: Reference) -> list[_Endpoint]:
        config = self.hosts_config.get(ref.domain)
        endpoints = [self._endpoint(m, mirror=True) for m in _cfg(config, "mirrors", [])]
        endpoints.append(self._endpoint(ref.api_host, mirror=False, config_key=ref.domain))
        preferred = self._preferred.get(ref.repository)
        if preferred in endpoints:
            endpoints.remove(preferred)
            endpoints.insert(0, preferred)
        return endpoints

    def _push_endpoint(self, ref: Reference) -> _Endpoint:
        return self._endpoint(ref.api_host, mirror=False, config_key=ref.domain)

    def _endpoint(self, spec: str, *, mirror: bool, config_key: str | None = None) -> _Endpoint:
        scheme = None
        if "://" in spec:
            scheme, spec = spec.split("://", 1)
        host, _, prefix = spec.partition("/")
        config = self.hosts_config.get(config_key or host) or self.hosts_config.get(host)
        http = getattr(config, "http", None) if config is not None else None
        insecure = bool(_cfg(config, "insecure", False))
        if scheme is None:
            if http is True or http is None and _is_loopback(host):
                scheme = "http"
            else:
                scheme = "https"
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return _Endpoint(host=host, scheme=scheme, prefix=prefix, mirror=mirror,
                         http_fallback=scheme == "https" and insecure and http is None)

    async def _on_pull_endpoints(self, ref: Reference, action: Callable[[_Endpoint], Any]) -> Any:
        endpoints = self._pull_endpoints(ref)
        failures: list[str] = []
        for ep in endpoints:
            try:
                result = await action(ep)
            except RegistryError as exc:
                if len(endpoints) == 1:
                    raise
                failures.append(f"{'mirror ' if ep.mirror else ''}{ep.host}: {exc}")
                continue
            self._preferred[ref.repository] = ep
            return result
        raise RegistryError(f"{ref}: every endpoint failed:\n  " + "\n  ".join(failures))

    def _scheme(self, ep: _Endpoint) -> str:
        return "http" if ep.host in self._plain_http else ep.scheme

    def _http_client(self, host: str) -> httpx.AsyncClient:
        httpx = load_httpx()

        client = self._clients.get(host)
        if client is None:
            client = async_client(
                functools.partial(self._tls_context, host),
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 15.0)),
                follow_redirects=True,
                headers={"User-Agent": "pybk"},
            )
            self._clients[host] = client
        return client

    def _tls_context(self, host: str) -> ssl.SSLContext:
        """The TLS settings for ``host``: made once per process and settings (loading the
        system's CA bundle costs ~50 ms), the plain default shared by every host without
        ``[registry]`` TLS keys."""
        config = self.hosts_config.get(host)
        if config is None and host == "registry-1.docker.io":
            config = self.hosts_config.get("docker.io")
        if not any(_cfg(config, key, None) for key in ("ca", "insecure", "keypair",
                                                        "tlsconfigdir")):
            return default_tls_context()
        key = (host, repr(config))
        context = _TLS_CONTEXTS.get(key)
        if context is None:
            context = _TLS_CONTEXTS[key] = self._make_tls_context(host, config)
        return context

    def _make_tls_context(self, host: str, config: Any) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for ca in _cfg(config, "ca", []):
            try:
                context.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"{host}: cannot load CA file {ca}: {exc}") from None
        if _cfg(config, "insecure", False):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        pairs = [(getattr(p, "cert", None), getattr(p, "key", None)) for p in _cfg(config, "keypair", [])]
        for directory in _cfg(config, "tlsconfigdir", []):
            # containerd's certs.d layout: *.crt are CAs, *.cert + *.key are client key pairs
            for path in sorted(Path(directory).glob("*.crt")):
                context.load_verify_locations(cafile=str(path))
            pairs += [(str(p), str(p.with_suffix(".key"))) for p in sorted(Path(directory).glob("*.cert"))]
        for cert, key in pairs:
            try:
                context.load_cert_chain(certfile=str(cert), keyfile=str(key) if key else None)
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"{host}: cannot load client key pair {cert}: {exc}") from None
        return context

    def _lookup_credentials(self, host: str) -> Credentials | None:
        key = "docker.io" if host == "registry-1.docker.io" else host
        if key in self._explicit_creds:
            return self._explicit_creds[key]
        return self._docker_creds.get(key)

    async def _fetch_token(self, realm: str, params: list[tuple[str, str]],
                           creds: Credentials | None) -> dict[str, Any]:
        httpx = load_httpx()

        url = httpx.URL(realm)
        headers = {"Authorization": creds.basic_header()} if creds and creds.username else {}
        client = self._http_client(url.netloc.decode())
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                resp = await client.get(url, params=params, headers=headers)
            except _transport_errors() as exc:
                last = _describe(exc)
            else:
                if resp.status_code == 200:
                    return _json(resp.content, f"token from {realm}")
                if resp.status_code not in _RETRY_STATUS:
                    raise _status_error(resp, f"token request to {realm}")
                last = f"HTTP {resp.status_code}"
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2**attempt)
        raise RegistryError(f"token request to {realm}: {last}")

    async def _send(
        self,
        ep: _Endpoint,
        method: str,
        path_or_url: str | httpx.URL,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: Callable[[], Any] | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """One API request with auth, redirects, retries and the insecure HTTP fallback.

        Retryable failures (transport errors, 5xx/429) are retried when ``retry``; otherwise a
        transport error raises ``_Retryable`` so the caller can restart a whole sequence.
        """
        httpx = load_httpx()

        client = self._http_client(ep.host)
        auth_header = self._auth.header(ep.host, scopes)
        authorized_once = False
        attempt = 0
        while True:
            if isinstance(path_or_url, str):
                url = httpx.URL(ep.api(self._scheme(ep)) + path_or_url, params=params)
            else:
                url = path_or_url
            request_headers = dict(headers or {})
            if auth_header:
                request_headers["Authorization"] = auth_header
            request = client.build_request(method, url, headers=request_headers,
                                           content=content() if content else None)
            try:
                resp = await client.send(request, stream=stream)
            except _transport_errors() as exc:
                if ep.http_fallback and ep.host not in self._plain_http and isinstance(exc, httpx.ConnectError):
                    self._plain_http.add(ep.host)
                    if isinstance(path_or_url, httpx.URL):
                        path_or_url = path_or_url.copy_with(scheme="http")
                    continue
                if not retry:
                    raise _Retryable(f"{method} {url}: {_describe(exc)}") from None
                if attempt >= self.retries:
                    raise RegistryError(f"{method} {url}: {_describe(exc)}") from None
                await asyncio.sleep(self.backoff * 2**attempt)
                attempt += 1
                continue
            if resp.status_code == 401 and not authorized_once:
                challenge = resp.headers.get("www-authenticate", "")
                await resp.aclose()
                auth_header = await self._auth.authorize(ep.host, challenge, scopes)
                authorized_once = True
                continue
            if resp.status_code == 401:
                await resp.aread()
                self._auth.forget(ep.host, scopes)
                raise _status_error(resp, f"{ep.host}: {method} {url.path}")
            if retry and resp.status_code in _RETRY_STATUS and attempt < self.retries:
                await resp.aclose()
                await asyncio.sleep(_retry_after(resp, self.backoff * 2**attempt))
                attempt += 1
                continue
            return resp

    def _require_store(self) -> ContentStore:
        if self.store is None:
            raise RegistryError("this registry client has no content store to put blobs in")
        return self.store


class _Retryable(Exception):
    """A transient failure inside a multi-request sequence (an upload)."""


class _BytesReader:
    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def seek(self, pos: int) -> None:
        self._pos = pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk

    def __enter__(self) -> _BytesReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


async def _aiter_file(f: Any, size: int, progress: Progress | None) -> AsyncIterator[bytes]:
    f.seek(0)
    sent = 0
    while chunk := f.read(_CHUNK):
        sent += len(chunk)
        if progress is not None:
            progress(sent, size)
        yield chunk


def _retry_on_status(resp: httpx.Response) -> None:
    if resp.status_code in _RETRY_STATUS:
        raise _Retryable(f"HTTP {resp.status_code}")


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return min(float(resp.headers.get("retry-after", "")), 10.0)
    except ValueError:
        return default


def _transport_errors() -> tuple[type[BaseException], ...]:
    httpx = load_httpx()

    return (httpx.TransportError, ssl.SSLError)  # TLS 1.3 alerts can surface unwrapped


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _status_error(resp: httpx.Response, what: str) -> RegistryError:
    detail = ""
    try:
        body = json.loads(resp.content) if resp.content else {}
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError, TypeError):
        detail = ""
    reason = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(resp.status_code, "")
    text = f"{what}: HTTP {resp.status_code}"
    if reason:
        text += f" {reason}"
    if detail:
        text += f" ({detail})"
    return RegistryError(text)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return value


def _as_ref(ref: str | Reference) -> Reference:
    return parse_reference(ref) if isinstance(ref, str) else ref


def _as_platform(platform: str | Platform | None) -> Platform:
    if platform is None:
        return host_platform()
    return parse_platform(platform) if isinstance(platform, str) else platform

