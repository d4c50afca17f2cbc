"""A faithful GitHub Actions cache service for tests, on 127.0.0.1.

It speaks both protocols the real clients use (reference §5):

- v1 REST under ``<url>_apis/artifactcache/``: lookup ``GET cache?keys=…&version=…`` (200 with
  ``archiveLocation`` or 204), list ``GET caches?key=…``, reserve ``POST caches`` (409
  ``ArtifactCacheAlreadyExistsException`` when the key is reserved or saved), chunk upload
  ``PATCH caches/<id>`` with ``Content-Range: bytes a-b/*`` (any order, concurrently), commit
  ``POST caches/<id>`` ``{"size": n}`` (checked against the chunks). ``archiveLocation`` is a
  pre-signed URL on this server (GET/HEAD with ``Range``) or, for entries saved through v2, an
  Azurite SAS URL.
- v2 Twirp JSON under ``<url_v2>twirp/github.actions.results.api.v1.CacheService/``:
  ``CreateCacheEntry`` (an Azurite SAS upload URL), ``FinalizeCacheEntryUpload`` (the blob's size
  must equal ``size_bytes``), ``GetCacheEntryDownloadURL`` (``ok=false`` on a miss).

Both share one store of entries, as on GitHub. Tokens are JWTs (HS256 with a per-server secret)
carrying GitHub's ``ac`` claim: a JSON string ``[{"Scope": ref, "Permission": bits}]`` with
read=1, write=2. A token the server did not mint, or an expired one, gets 401; a write without a
writable scope gets 403. Entries are saved in the token's last writable scope and are visible to
tokens that can read that scope; lookups try the token's scopes from the last to the first, and
within a scope each key in order: an exact match, else the newest entry whose key starts with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
from support.azurite import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer

TWIRP_PREFIX = "/twirp/github.actions.results.api.v1.CacheService/"
V1_MARKER = "/_apis/artifactcache/"
MAX_KEY_LENGTH = 512
READ, WRITE = 1, 2


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define
class Entry:
    """One cache entry; ``blob`` names its Azurite blob when it was saved through v2."""

    id: int
    scope: str
    key: str
    version: str
    created: int
    declared_size: int | None = None
    chunks: dict[int, bytes] = attrs.field(factory=dict, repr=False)
    data: bytes | None = attrs.field(default=None, repr=False)
    blob: str | None = None
    size: int | None = None
    committed: bool = False


class ServiceError(Exception):
    """An error answer: HTTP ``status``, v1 ``type_key`` / Twirp ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class GHACacheServer:
    """The cache service; ``url`` is the v1 base URL, ``url_v2`` the Twirp base URL."""

    def __init__(self, azurite: AzuriteServer | None = None, *, container: str = "actions-cache"):
        self.azurite = azurite
        self.container = container
        self.secret = secrets.token_bytes(32)
        self.entries: list[Entry] = []
        self.stats: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._container_client: Any = None

    # --- lifecycle -------------------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """Like ``$ACTIONS_CACHE_URL``: a per-run prefix ending in ``/``."""
        return f"{self.base}/runs/1/"

    @property
    def url_v2(self) -> str:
        """Like ``$ACTIONS_RESULTS_URL``."""
        return f"{self.base}/"

    def start(self) -> GHACacheServer:
        if self.azurite is not None:
            from azure.storage.blob import BlobServiceClient

            service = BlobServiceClient.from_connection_string(self.azurite.connection_string)
            self._container_client = service.get_container_client(self.container)
            if not self._container_client.exists():
                self._container_client.create_container()
        handler = type("Handler", (_Handler,), {"service": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="gha-cache-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset(self) -> None:
        """Forget every entry and counter (Azurite blobs stay, unreachable)."""
        with self.lock:
            self.entries.clear()
            self.stats.clear()

    # --- tokens ----------------------------------------------------------------------------
    def mint_token(self, scopes: Sequence[tuple[str, int]] = (("refs/heads/main", READ | WRITE),),
                   *, expires_in: float = 3600, not_before: float | None = None) -> str:
        """A runtime token for ``scopes`` = [(ref, permission bits)], like GitHub's."""
        now = int(time.time())
        claims = {
            "ac": json.dumps([{"Scope": s, "Permission": p} for s, p in scopes]),
            "iat": now, "nbf": int(not_before if not_before is not None else now - 60),
            "exp": int(now + expires_in), "iss": "vstoken.actions.githubusercontent.com",
        }
        header = _b64url(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        signature = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def token_scopes(self, authorization: str | None) -> list[tuple[str, int]]:
        """The (scope, permission) list of a verified bearer token, else a 401 error."""
        if not authorization or not authorization.startswith("Bearer "):
            raise ServiceError(401, "unauthenticated", "missing bearer token")
        parts = authorization[len("Bearer "):].strip().split(".")
        if len(parts) != 3:
            raise ServiceError(401, "unauthenticated", "malformed token")
        expected = hmac.new(self.secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(expected, _b64url_decode(parts[2]))
            claims = json.loads(_b64url_decode(parts[1]))
            scopes = [(item["Scope"], int(item["Permission"])) for item in json.loads(claims["ac"])]
        except (ValueError, KeyError, TypeError):
            raise ServiceError(401, "unauthenticated", "malformed token") from None
        if not valid:
            raise ServiceError(401, "unauthenticated", "token signature is invalid")
        now = time.time()
        if claims.get("exp", now + 1) <= now or claims.get("nbf", now) > now + 1:
            raise ServiceError(401, "unauthenticated", "token is expired or not yet valid")
        return scopes

    @staticmethod
    def write_scope(scopes: list[tuple[str, int]]) -> str:
        writable = [s for s, p in scopes if p & WRITE]
        if not writable:
            raise ServiceError(403, "permission_denied", "token has no writable cache scope")
        return writable[-1]

    # --- entries ---------------------------------------------------------------------------
    def lookup(self, scopes: list[tuple[str, int]], keys: Sequence[str], version: str) -> Entry | None:
        readable = [s for s, p in reversed(scopes) if p & READ]
        if not readable:
            raise ServiceError(403, "permission_denied", "token has no readable cache scope")
        with self.lock:
            for scope in readable:
                saved = [e for e in self.entries
                         if e.committed and e.scope == scope and e.version == version]
                for key in keys:
                    exact = [e for e in saved if e.key == key]
                    prefixed = [e for e in saved if e.key.startswith(key)]
                    if exact or prefixed:
                        return max(exact or prefixed, key=lambda e: e.created)
        return None

    def reserve(self, scope: str, key: str, version: str, size: int | None) -> Entry:
        if not key or not version:
            raise ServiceError(400, "invalid_argument", "key and version are required")
        if len(key) > MAX_KEY_LENGTH or "," in key:
            raise ServiceError(400, "invalid_argument", f"invalid cache key {key!r}")
        with self.lock:
            if any(e.scope == scope and e.key == key and e.version == version
                   for e in self.entries):
                raise ServiceError(409, "already_exists",
                                   f"Cache already exists. Scope: {scope}, Key: {key}, "
                                   f"Version: {version}")
            entry = Entry(id=next(self._ids), scope=scope, key=key, version=version,
                          created=next(self._clock), declared_size=size)
            self.entries.append(entry)
            return entry

    def entry_by_id(self, scope: str, entry_id: int) -> Entry:
        with self.lock:
            for e in self.entries:
                if e.id == entry_id and e.scope == scope:
                    return e
        raise ServiceError(404, "not_found", f"cache entry {entry_id} not found")

    def saved_keys(self, scope: str | None = None) -> list[str]:
        """Keys of committed entries (in ``scope`` when given), oldest first."""
        with self.lock:
            return [e.key for e in sorted(self.entries, key=lambda e: e.created)
                    if e.committed and (scope is None or e.scope == scope)]

    # --- signed URLs -----------------------------------------------------------------------
    def _signature(self, entry_id: int) -> str:
        return hmac.new(self.secret, f"download:{entry_id}".encode(), hashlib.sha256).hexdigest()

    def download_url(self, entry: Entry) -> str:
        if entry.blob is not None:
            return self._blob_sas(entry.blob, write=False)
        return f"{self.base}/_download/{entry.id}?sig={self._signature(entry.id)}"

    def _require_azurite(self) -> Any:
        if self._container_client is None:
            raise ServiceError(503, "unavailable", "cache service v2 needs Azurite")
        return self._container_client

    def _blob_sas(self, blob: str, *, write: bool) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        assert self.azurite is not None
        permission = BlobSasPermissions(read=not write, create=write, write=write)
        token = generate_blob_sas(ACCOUNT_NAME, self.container, blob, account_key=ACCOUNT_KEY,
                                  permission=permission,
                                  expiry=datetime.now(UTC) + timedelta(hours=1))
        return f"{self.azurite.blob_endpoint}/{self.container}/{urllib.parse.quote(blob)}?{token}"

    # --- v1 REST ---------------------------------------------------------------------------
    def v1(self, method: str, resource: str, query: dict[str, list[str]], headers: Any,
           body: bytes) -> tuple[int, Any]:
        scopes = self.token_scopes(headers.get("Authorization"))
        if method == "GET" and resource == "cache":
            self.stats["lookup"] += 1
            keys = [k for k in query.get("keys", [""])[0].split(",") if k]
            version = query.get("version", [""])[0]
            if not keys or not version:
                raise ServiceError(400, "invalid_argument", "keys and version are required")
            entry = self.lookup(scopes, keys, version)
            if entry is None:
                return 204, None
            return 200, {"scope": entry.scope, "cacheKey": entry.key, "cacheVersion": entry.version,
                         "creationTime": _iso(entry.created), "archiveLocation": self.download_url(entry)}
        if method == "GET" and resource == "caches":
            key = query.get("key", [""])[0]
            readable = {s for s, p in scopes if p & READ}
            with self.lock:
                found = [e for e in self.entries if e.committed and e.scope in readable and e.key == key]
            return 200, {"totalCount": len(found), "artifactCaches": [
                {"scope": e.scope, "cacheKey": e.key, "cacheVersion": e.version,
                 "creationTime": _iso(e.created)} for e in found]}
        if method == "POST" and resource == "caches":
            scope = self.write_scope(scopes)
            request = _json(body)
            self.stats["reserve"] += 1
            size = request.get("cacheSize")
            entry = self.reserve(scope, str(request.get("key") or ""), str(request.get("version") or ""),
                                 int(size) if size is not None else None)
            return 200, {"cacheId": entry.id}
        match = re.fullmatch(r"caches/(\d+)", resource)
        if match and method in ("PATCH", "POST"):
            entry = self.entry_by_id(self.write_scope(scopes), int(match.group(1)))
            if entry.committed or entry.blob is not None:
                raise ServiceError(400, "invalid_argument", f"cache entry {entry.id} is not open")
            if method == "PATCH":
                return self._upload_chunk(entry, headers.get("Content-Range", ""), body)
            return self._commit(entry, _json(body).get("size"))
        raise ServiceError(404, "not_found", f"no route {method} {resource}")

    def _upload_chunk(self, entry: Entry, content_range: str, body: bytes) -> tuple[int, Any]:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\*|\d+)", content_range.strip())
        if not match:
            raise ServiceError(400, "invalid_argument", f"bad Content-Range {content_range!r}")
        start, end = int(match.group(1)), int(match.group(2))
        if end - start + 1 != len(body):
            raise ServiceError(400, "invalid_argument",
                               f"Content-Range {content_range} does not match {len(body)} bytes")
        with self.lock:
            entry.chunks[start] = body
            self.stats["upload_chunk"] += 1
            self.stats["upload_bytes"] += len(body)
        return 204, None

    def _commit(self, entry: Entry, size: Any) -> tuple[int, Any]:
        if not isinstance(size, int):
            raise ServiceError(400, "invalid_argument", "commit needs an integer size")
        with self.lock:
            data = bytearray()
            for start in sorted(entry.chunks):
                if start != len(data):
                    raise ServiceError(400, "invalid_argument",
                                       f"uploaded chunks leave a gap or overlap at byte {len(data)}")
                data += entry.chunks[start]
            if len(data) != size:
                raise ServiceError(400, "invalid_argument",
                                   f"size {size} does not match the {len(data)} bytes uploaded")
            if entry.declared_size is not None and entry.declared_size != size:
                raise ServiceError(400, "invalid_argument",
                                   f"size {size} differs from the reserved {entry.declared_size}")
            entry.data, entry.size, entry.chunks, entry.committed = bytes(data), size, {}, True
            self.stats["commit"] += 1
        return 204, None

    # --- v2 Twirp --------------------------------------------------------------------------
    def twirp(self, method: str, headers: Any, body: bytes) -> dict[str, Any]:
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise ServiceError(404, "bad_route", f"unsupported Content-Type {content_type!r}")
        scopes = self.token_scopes(headers.get("Authorization"))
        request = _json(body)
        key = str(request.get("key") or "")
        version = str(request.get("version") or "")
        if method == "CreateCacheEntry":
            self._require_azurite()
            entry = self.reserve(self.write_scope(scopes), key, version, None)
            entry.blob = f"{entry.id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
            self.stats["create"] += 1
            return {"ok": True, "signed_upload_url": self._blob_sas(entry.blob, write=True)}
        if method == "FinalizeCacheEntryUpload":
            scope = self.write_scope(scopes)
            size = int(request.get("size_bytes", request.get("sizeBytes", -1)))
            with self.lock:
                open_entries = [e for e in self.entries if e.scope == scope and e.key == key
                                and e.version == version and e.blob and not e.committed]
            if not open_entries:
                raise ServiceError(404, "not_found", f"no cache entry being created for key {key!r}")
            entry = open_entries[0]
            actual = self._blob_size(entry.blob)
            if actual is None:
                raise ServiceError(400, "invalid_argument", f"nothing was uploaded for key {key!r}")
            if actual != size:
                raise ServiceError(400, "invalid_argument",
                                   f"size_bytes {size} does not match the uploaded {actual} bytes")
            with self.lock:
                entry.size, entry.committed = size, True
                self.stats["finalize"] += 1
            return {"ok": True, "entry_id": str(entry.id)}
        if method == "GetCacheEntryDownloadURL":
            self.stats["lookup"] += 1
            restore = request.get("restore_keys", request.get("restoreKeys")) or []
            entry = self.lookup(scopes, [key, *restore], version)
            if entry is None:
                return {"ok": False, "signed_download_url": "", "matched_key": ""}
            return {"ok": True, "signed_download_url": self.download_url(entry),
                    "matched_key": entry.key}
        raise ServiceError(404, "bad_route", f"no method {method}")

    def _blob_size(self, blob: str | None) -> int | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return int(self._require_azurite().get_blob_client(blob).get_blob_properties().size)
        except ResourceNotFoundError:
            return None

    def entry_for_download(self, entry_id: int, signature: str) -> Entry:
        if not hmac.compare_digest(signature, self._signature(entry_id)):
            raise ServiceError(403, "permission_denied", "bad download signature")
        with self.lock:
            for e in self.entries:
                if e.id == entry_id and e.committed and e.data is not None:
                    return e
        raise ServiceError(404, "not_found", f"cache entry {entry_id} not found")


def _iso(tick: int) -> str:
    return datetime.fromtimestamp(1_700_000_000 + tick, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8-sig") or "{}")
    except ValueError:
        raise ServiceError(400, "malformed", "request body is not JSON") from None
    if not isinstance(value, dict):
        raise ServiceError(400, "malformed", "request body is not a JSON object")
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service: GHACacheServer

    def setup(self) -> None:
        # Headers and body go out in separate writes; without this, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every keep-alive request.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, *, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        body = self._body()
        twirp = parsed.path.startswith(TWIRP_PREFIX)
        try:
            if twirp:
                if self.command != "POST":
                    raise ServiceError(404, "bad_route", "Twirp methods are POST only")
                self._send(200, self.service.twirp(parsed.path[len(TWIRP_PREFIX):], self.headers, body))
            elif V1_MARKER in parsed.path:
                resource = parsed.path.split(V1_MARKER, 1)[1]
                status, payload = self.service.v1(self.command, resource,
                                                  urllib.parse.parse_qs(parsed.query), self.headers, body)
                self._send(status, payload)
            elif parsed.path.startswith("/_download/") and self.command in ("GET", "HEAD"):
                self._download(parsed)
            else:
                raise ServiceError(404, "not_found", f"no route {self.command} {parsed.path}")
        except ServiceError as err:
            if twirp:
                self._send(err.status, {"code": err.code, "msg": err.message})
            else:
                type_key = {409: "ArtifactCacheAlreadyExistsException"}.get(err.status, err.code)
                self._send(err.status, {"$id": "1", "innerException": None, "message": err.message,
                                        "typeName": f"GitHub.Services.{type_key}", "typeKey": type_key,
                                        "errorCode": 0, "eventId": 3000})

    def _download(self, parsed: urllib.parse.SplitResult) -> None:
        entry_id = int(parsed.path.rsplit("/", 1)[1] or 0)
        signature = urllib.parse.parse_qs(parsed.query).get("sig", [""])[0]
        entry = self.service.entry_for_download(entry_id, signature)
        data = entry.data or b""
        self.service.stats["download"] += 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", (self.headers.get("Range") or "").strip())
        if not match:
            self._send(200, body=data, headers={"Content-Type": "application/octet-stream",
                                                "Accept-Ranges": "bytes"})
            return
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data) and data:
            self._send(416, body=b"", headers={"Content-Range": f"bytes */{len(data)}"})
            return
        self._send(206, body=data[start:end + 1],
                   headers={"Content-Type": "application/octet-stream",
                            "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _dispatch
