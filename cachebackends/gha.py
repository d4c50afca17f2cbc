"""The GitHub Actions cache as an fsspec filesystem (protocol ``gha``).

Object names map to cache keys the way BuildKit's ``gha`` cache does (reference §5.4):

- ``blobs/<digest>`` → ``buildkit-blob-1-<digest>``: immutable, content addressed. Writing a blob
  that already exists is a successful no-op and uploads nothing.
- ``index`` → ``index-<scope>-1-<h>`` and ``manifests/<name>`` → ``index-<name>-1-<h>``, where
  ``h`` is the first 8 hex digits of sha256 of the token's last writable scope; a name starting
  with ``index-`` is used as the key itself. These are mutable: the cache cannot overwrite a key,
  so each write saves ``<key>#<n+1>`` and reads take the newest ``<key>#…``.

Every key uses BuildKit's cache version ``sha256("|go-actionscache-1.0")``, so entries are shared
with BuildKit and never collide with ``actions/cache`` entries. The service cannot list or delete
entries: ``ls`` answers only for names that exist, and entries expire on GitHub's schedule.
Protocol v1 is the REST API under ``<url>_apis/artifactcache/`` with chunked PATCH uploads; v2 is
the Twirp API under ``<url_v2>twirp/…`` with uploads to Azure Blob SAS URLs (Put Block, Put Block
List) — both described in docs/gha-cache.md.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import fsspec
from fsspec.spec import AbstractBufferedFile

from pybk.core.errors import BuildError
from pybk.core.model import Model

CACHE_VERSION = hashlib.sha256(b"|go-actionscache-1.0").hexdigest()
BLOB_KEY_PREFIX = "buildkit-blob-1-"
DEFAULT_SCOPE = "buildkit"
DEFAULT_TIMEOUT = 600.0
DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024
DEFAULT_CONCURRENCY = 4
V1_ACCEPT = "application/json;api-version=6.0-preview.1"
TWIRP_SERVICE = "twirp/github.actions.results.api.v1.CacheService/"
AZURE_VERSION = "2023-11-03"
USER_AGENT = "pybk-gha-cache/1.0"
MUTABLE_RESERVE_ATTEMPTS = 32
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class GHACacheError(BuildError):
    """The GitHub Actions cache refused a request or cannot be used; ``status`` is the HTTP code."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class _AlreadyExists(Exception):
    """The key is already reserved or saved in this scope."""


class RuntimeToken(Model):
    """The claims of an Actions runtime token (read without verifying the signature)."""

    scopes: tuple[tuple[str, int], ...]
    expires: float | None

    @classmethod
    def parse(cls, token: str) -> RuntimeToken:
        parts = token.split(".")
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            access = json.loads(claims.get("ac") or "[]")
            scopes = tuple((str(a["Scope"]), int(a["Permission"])) for a in access)
        except (IndexError, ValueError, KeyError, TypeError):
            raise GHACacheError("the gha cache token is not an Actions runtime token (a JWT with "
                                "an `ac` claim)") from None
        now = time.time()
        if "nbf" in claims and float(claims["nbf"]) > now + 60:
            raise GHACacheError("the gha cache token is not valid yet (nbf is in the future)")
        expires = float(claims["exp"]) if "exp" in claims else None
        if expires is not None and expires <= now:
            raise GHACacheError("the gha cache token has expired; pass a fresh ACTIONS_RUNTIME_TOKEN")
        return cls(scopes=scopes, expires=expires)

    @property
    def write_scope(self) -> str:
        """The last writable scope (the one the service saves into), else the last scope."""
        writable = [s for s, p in self.scopes if p & 2]
        return (writable or [s for s, _ in self.scopes] or [""])[-1]


def scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:8]


def parse_timeout(value: float | int | str | None) -> float:
    """Seconds from a number or a Go-style duration (``10m``, ``1m30s``, ``500ms``)."""
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise GHACacheError(f"gha cache timeout {value!r} is not a duration like 10m or 90s")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _error_message(response: Any) -> str:
    text = response.content.decode("utf-8-sig", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("msg") or body.get("code") or text)[:300]
    return text[:300]


def _is_conflict(response: Any) -> bool:
    if response.status_code == 409:
        return True
    text = response.text
    return "AlreadyExists" in text or "already_exists" in text


class GHACacheFileSystem(fsspec.AbstractFileSystem):
    """fsspec access to the GitHub Actions cache, keyed the way BuildKit keys it."""

    protocol = "gha"
    root_marker = ""

    def __init__(self, url: str | None = None, url_v2: str | None = None, token: str | None = None,
                 scope: str = DEFAULT_SCOPE, version: str | int | None = None,
                 timeout: float | str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 upload_concurrency: int = DEFAULT_CONCURRENCY, **kwargs: Any):
        super().__init__(**kwargs)
        token = token or os.environ.get("ACTIONS_RUNTIME_TOKEN")
        if not token:
            raise GHACacheError("the gha cache needs a token (token=… or $ACTIONS_RUNTIME_TOKEN)")
        self.token = token
        self.runtime_token = RuntimeToken.parse(token)
        self.scope = scope or DEFAULT_SCOPE
        self.timeout = parse_timeout(timeout)
        self.chunk_size = int(chunk_size)
        self.upload_concurrency = max(1, int(upload_concurrency))
        self.version = self._select_version(str(version) if version not in (None, "") else None,
                                            url, url_v2)
        if self.version == 2:
            base = url_v2 or os.environ.get("ACTIONS_RESULTS_URL")
        else:
            base = url or os.environ.get("ACTIONS_CACHE_URL") or os.environ.get("ACTIONS_RESULTS_URL")
        if not base:
            name = "url_v2 ($ACTIONS_RESULTS_URL)" if self.version == 2 else "url ($ACTIONS_CACHE_URL)"
            raise GHACacheError(f"the gha cache (protocol v{self.version}) needs {name}")
        self.base_url = base if base.endswith("/") else base + "/"
        self._client_lock = threading.Lock()
        self._http: Any = None

    @staticmethod
    def _select_version(version: str | None, url: str | None, url_v2: str | None) -> int:
        if version is not None:
            if version.lstrip("v") not in ("1", "2"):
                raise GHACacheError(f"gha cache version must be 1 or 2, not {version!r}")
            return int(version.lstrip("v"))
        if os.environ.get("ACTIONS_CACHE_SERVICE_V2", "").lower() in ("1", "true"):
            return 2
        if "results-receiver.actions.githubusercontent.com" in (url or url_v2 or ""):
            return 2
        return 2 if url_v2 and not url else 1

    # --- names -----------------------------------------------------------------------------
    def index_key(self, name: str | None = None, scope: str | None = None) -> str:
        """The mutable index key for ``name`` (default: the ``scope`` option) and a token scope."""
        token_scope = self.runtime_token.write_scope if scope is None else scope
        return f"index-{name or self.scope}-1-{scope_hash(token_scope)}"

    def index_paths(self) -> list[str]:
        """The index object of every scope the token can read, as BuildKit imports them."""
        return [self.index_key(scope=s) for s, p in self.runtime_token.scopes if p & 1]

    def cache_key(self, path: str) -> tuple[str, bool]:
        """(cache key, mutable) for an object name."""
        name = self._strip_protocol(path)
        if name.startswith("blobs/") and ":" in name:
            return BLOB_KEY_PREFIX + name[len("blobs/"):], False
        if name == "index":
            return self.index_key(), True
        if name.startswith("manifests/") and len(name) > len("manifests/"):
            return self.index_key(name[len("manifests/"):]), True
        if name.startswith("index-"):
            return name, True
        raise GHACacheError(f"{path!r} is not an object the gha cache stores (blobs/<digest>, "
                            "index, manifests/<name> or index-…)")

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("gha://"):
            path = path[len("gha://"):]
        return path.strip("/")

    # --- HTTP ------------------------------------------------------------------------------
    @property
    def http(self) -> Any:
        with self._client_lock:
            if self._http is None:
                from pybk.core.http import load_httpx

                httpx = load_httpx()
                self._http = httpx.Client(timeout=httpx.Timeout(self.timeout),
                                          headers={"User-Agent": USER_AGENT})
            return self._http

    def _send(self, method: str, url: str, *, api: bool = True, **kwargs: Any) -> Any:
        """One request with the retry policy: 429 honours Retry-After, 5xx and network errors back
        off, all within ``timeout``; other answers are returned."""
        from pybk.core.http import load_httpx

        httpx = load_httpx()
        headers = dict(kwargs.pop("headers", None) or {})
        if api:
            headers["Authorization"] = f"Bearer {self.token}"
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            attempt += 1
            delay = min(0.2 * 2 ** attempt, 10.0)
            try:
                response = self.http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as err:
                if time.monotonic() + delay > deadline:
                    raise GHACacheError(f"gha cache: {method} {_redact(url)} failed: {err}") from None
                time.sleep(delay)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                delay = _retry_after(response, delay)
                if time.monotonic() + delay <= deadline and attempt < 10:
                    time.sleep(delay)
                    continue
            return response

    def _fail(self, response: Any, what: str) -> GHACacheError:
        status = response.status_code
        message = _error_message(response)
        if status == 401:
            text = (f"gha cache rejected the token while trying to {what} (401 Unauthorized: "
                    f"{message}); check the cache token (ACTIONS_RUNTIME_TOKEN)")
        elif status == 403:
            scopes = ", ".join(f"{s} ({'rw' if p & 2 else 'r'})" for s, p in self.runtime_token.scopes)
            text = (f"gha cache refused to {what} (403 Forbidden: {message}); the token's "
                    f"scopes are: {scopes or 'none'}")
        else:
            text = f"gha cache failed to {what}: HTTP {status}: {message}"
        return GHACacheError(text, status=status)

    def _api(self, method: str, resource: str, **kwargs: Any) -> Any:
        headers = {"Accept": V1_ACCEPT}
        if "json" in kwargs:
            headers["Content-Type"] = "application/json"
        return self._send(method, f"{self.base_url}_apis/artifactcache/{resource}",
                          headers=headers | kwargs.pop("headers", {}), **kwargs)

    def _twirp(self, method: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        response = self._send("POST", f"{self.base_url}{TWIRP_SERVICE}{method}",
                              headers={"Content-Type": "application/json"},
                              content=json.dumps(body).encode())
        if response.status_code == 409 or _twirp_code(response) == "already_exists":
            raise _AlreadyExists(body.get("key"))
        if response.status_code != 200:
            raise self._fail(response, what)
        return response.json()

    # --- protocol operations ---------------------------------------------------------------
    def _lookup(self, keys: list[str]) -> tuple[str, str] | None:
        """(matched key, download URL) of the newest entry matching ``keys`` (prefixes)."""
        what = f"look up {keys[0]!r}"
        if self.version == 2:
            answer = self._twirp("GetCacheEntryDownloadURL",
                                 {"key": keys[0], "restore_keys": keys, "version": CACHE_VERSION}, what)
            if not answer.get("ok"):
                return None
            return answer.get("matched_key", ""), answer["signed_download_url"]
        query = urllib.parse.urlencode({"keys": ",".join(keys), "version": CACHE_VERSION})
        response = self._api("GET", f"cache?{query}")
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise self._fail(response, what)
        answer = json.loads(response.content.decode("utf-8-sig"))
        return answer.get("cacheKey", ""), answer["archiveLocation"]

    def _find(self, path: str) -> tuple[str, str] | None:
        key, mutable = self.cache_key(path)
        if mutable:
            return self._lookup([key + "#"])
        found = self._lookup([key])
        # Lookups match prefixes: ``…:<hex>`` must not resolve to ``…:<hex>-sig``.
        return found if found and found[0] == key else None

    def _resolve(self, path: str) -> tuple[str, str]:
        found = self._find(path)
        if found is None:
            raise FileNotFoundError(path)
        return found

    def _download(self, url: str, path: str, start: int | None = None, end: int | None = None,
                  method: str = "GET") -> Any:
        headers = {"x-ms-version": AZURE_VERSION}
        if start is not None:
            headers["Range"] = f"bytes={start}-" + (str(end - 1) if end is not None else "")
        response = self._send(method, url, api=False, headers=headers)
        if response.status_code in (401, 403):
            # A signed URL expired: ask for a fresh one once, as BuildKit does.
            _, url = self._resolve(path)
            response = self._send(method, url, api=False, headers=headers)
        if response.status_code == 404:
            raise FileNotFoundError(path)
        if response.status_code == 416:
            return response
        if response.status_code not in (200, 206):
            raise self._fail(response, f"download {path!r}")
        return response

    # --- fsspec API ------------------------------------------------------------------------
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        name = self._strip_protocol(path)
        if name in ("", "blobs", "manifests"):
            return {"name": name, "size": 0, "type": "directory"}
        key, url = self._resolve(name)
        response = self._download(url, name, method="HEAD")
        return {"name": name, "size": int(response.headers.get("Content-Length", 0)),
                "type": "file", "key": key}

    def exists(self, path: str, **kwargs: Any) -> bool:
        name = self._strip_protocol(path)
        if name in ("", "blobs", "manifests"):
            return True
        return self._find(name) is not None

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        name = self._strip_protocol(path)
        if name in ("", "blobs", "manifests"):
            raise GHACacheError("the GitHub Actions cache cannot list its entries; look objects "
                                "up by name (blobs/<digest>, index, manifests/<name>)")
        entry = self.info(name)
        return [entry] if detail else [entry["name"]]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        name = self._strip_protocol(path)
        _, url = self._resolve(name)
        if start is not None and start < 0 or end is not None and end < 0:
            size = self.info(name)["size"]
            start = size + start if start is not None and start < 0 else start
            end = size + end if end is not None and end < 0 else end
        if start is None and end is None:
            return self._download(url, name).content
        response = self._download(url, name, start or 0, end)
        if response.status_code == 416:
            return b""
        return response.content

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Directories are implied by object names."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Directories are implied by object names."""

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict[str, Any] | None = None,
              **kwargs: Any) -> AbstractBufferedFile:
        name = self._strip_protocol(path)
        if mode == "rb":
            _, url = self._resolve(name)
            size = int(self._download(url, name, method="HEAD").headers.get("Content-Length", 0))
            return GHACacheReadFile(self, name, url, size, block_size=block_size or self.chunk_size,
                                    cache_options=cache_options)
        if mode in ("wb", "xb"):
            self.cache_key(name)
            return GHACacheWriteFile(self, name, mode=mode, block_size=block_size or self.chunk_size)
        raise GHACacheError(f"gha cache objects open as 'rb' or 'wb', not {mode!r}")


class GHACacheReadFile(AbstractBufferedFile):
    """Reads one entry with HTTP Range requests on its download URL."""

    def __init__(self, fs: GHACacheFileSystem, path: str, url: str, size: int, **kwargs: Any):
        self.url = url
        super().__init__(fs, path, mode="rb", size=size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        response = self.fs._download(self.url, self.path, start, end)
        return b"" if response.status_code == 416 else response.content


class GHACacheWriteFile(AbstractBufferedFile):
    """Saves one entry on close: reserve (v1) or create (v2), upload chunks with up to
    ``upload_concurrency`` in flight, then commit / finalize with the total size."""

    fs: GHACacheFileSystem

    def __init__(self, fs: GHACacheFileSystem, path: str, **kwargs: Any):
        super().__init__(fs, path, **kwargs)
        self.key: str | None = None
        self.skipped = False
        self._cache_id: int | None = None
        self._upload_url: str | None = None
        self._blocks: list[str] = []
        self._pending: list[Future[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        name = self.path[len("blobs/"):] if self.path.startswith("blobs/") else ""
        self._expected_digest = name if re.fullmatch(r"sha256:[0-9a-f]{64}", name) else None
        self._hasher = hashlib.sha256()

    def __exit__(self, exc_type: Any, *args: Any) -> None:
        if exc_type is not None:
            self.discard()
        self.close()

    def discard(self) -> None:
        """Abandon the write: nothing is committed (a reserved v1 entry expires unused)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.forced = True
        self.closed = True

    def _initiate_upload(self) -> None:
        key, mutable = self.fs.cache_key(self.path)
        if not mutable:
            if self.fs._find(self.path) is not None:
                self.key, self.skipped = key, True
                return
            try:
                self._reserve(key)
            except _AlreadyExists:
                self.key, self.skipped = key, True
            return
        found = self.fs._lookup([key + "#"])
        number = _mutable_number(found[0]) if found else 0
        for _ in range(MUTABLE_RESERVE_ATTEMPTS):
            number += 1
            try:
                self._reserve(f"{key}#{number}")
                return
            except _AlreadyExists:
                continue
        raise GHACacheError(f"gha cache: could not reserve a new version of {key!r} after "
                            f"{MUTABLE_RESERVE_ATTEMPTS} attempts")

    def _reserve(self, key: str) -> None:
        self.key = key
        if self.fs.version == 2:
            answer = self.fs._twirp("CreateCacheEntry", {"key": key, "version": CACHE_VERSION},
                                    f"create {key!r}")
            if not answer.get("ok") or not answer.get("signed_upload_url"):
                raise GHACacheError(f"gha cache refused to create {key!r}: "
                                    f"{answer.get('message') or 'ok=false'}")
            self._upload_url = answer["signed_upload_url"]
            return
        response = self.fs._api("POST", "caches", json={"key": key, "version": CACHE_VERSION})
        if _is_conflict(response):
            raise _AlreadyExists(key)
        if response.status_code not in (200, 201):
            raise self.fs._fail(response, f"reserve {key!r}")
        answer = json.loads(response.content.decode("utf-8-sig"))
        cache_id = next((v for k, v in answer.items() if k.lower() == "cacheid"), None)
        if not isinstance(cache_id, int):
            raise GHACacheError(f"gha cache: reserve {key!r} answered without a cache id: {answer}")
        self._cache_id = cache_id

    def _submit(self, task: Callable[[], None]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.fs.upload_concurrency, thread_name_prefix="gha-upload")
        running = [f for f in self._pending if not f.done()]
        if len(running) >= self.fs.upload_concurrency:
            wait(running, return_when=FIRST_COMPLETED)
        self._pending.append(self._pool.submit(task))

    def _upload_chunk(self, final: bool = False) -> bool:
        if self.skipped:
            return True
        data = self.buffer.getvalue()
        self._hasher.update(data)
        step = max(1, self.fs.chunk_size)
        for start in range(0, len(data), step):
            self._submit(self._chunk_task(self.offset + start, data[start:start + step]))
        if final:
            try:
                for future in self._pending:
                    future.result()
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                    self._pool = None
            digest = f"sha256:{self._hasher.hexdigest()}"
            if self._expected_digest and digest != self._expected_digest:
                raise GHACacheError(f"gha cache: refusing to save {self.path!r}: its content has "
                                    f"digest {digest}")
            self._commit(self.offset + len(data))
        return True

    def _chunk_task(self, offset: int, data: bytes) -> Callable[[], None]:
        fs = self.fs
        if fs.version == 2:
            block_id = base64.b64encode(f"pybk-block-{len(self._blocks):010d}".encode()).decode()
            self._blocks.append(block_id)
            url = _with_query(self._upload_url or "", comp="block", blockid=block_id)

            def put_block() -> None:
                response = fs._send("PUT", url, api=False, content=data,
                                    headers={"x-ms-version": AZURE_VERSION})
                if response.status_code != 201:
                    raise fs._fail(response, f"upload a block of {self.key!r}")
            return put_block

        def patch() -> None:
            response = fs._api("PATCH", f"caches/{self._cache_id}", content=data,
                               headers={"Content-Type": "application/octet-stream",
                                        "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*"})
            if response.status_code not in (200, 204):
                raise fs._fail(response, f"upload a chunk of {self.key!r}")
        return patch

    def _commit(self, size: int) -> None:
        fs = self.fs
        if fs.version == 2:
            blocks = "".join(f"<Latest>{b}</Latest>" for b in self._blocks)
            response = fs._send("PUT", _with_query(self._upload_url or "", comp="blocklist"), api=False,
                                content=f'<?xml version="1.0" encoding="utf-8"?><BlockList>{blocks}'
                                        "</BlockList>".encode(),
                                headers={"x-ms-version": AZURE_VERSION, "Content-Type": "application/xml",
                                         "x-ms-blob-content-type": "application/octet-stream"})
            if response.status_code != 201:
                raise fs._fail(response, f"commit the blocks of {self.key!r}")
            answer = fs._twirp("FinalizeCacheEntryUpload",
                               {"key": self.key, "size_bytes": str(size), "version": CACHE_VERSION},
                               f"finalize {self.key!r}")
            if not answer.get("ok"):
                raise GHACacheError(f"gha cache refused to finalize {self.key!r}: "
                                    f"{answer.get('message') or 'ok=false'}")
            return
        response = fs._api("POST", f"caches/{self._cache_id}", json={"size": size})
        if response.status_code not in (200, 204):
            raise fs._fail(response, f"commit {self.key!r}")


def _mutable_number(key: str) -> int:
    suffix = key.rsplit("#", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def _twirp_code(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("code", "")) if isinstance(body, dict) else ""


def _with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"


def _redact(url: str) -> str:
    return url.split("?", 1)[0]


def _retry_after(response: Any, default: float) -> float:
    value = response.headers.get("Retry-After")
    if not value:
        return default
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return max(0.0, when - time.time())


fsspec.register_implementation("gha", GHACacheFileSystem, clobber=True)
