"""HTTP plumbing shared by the registry client, HTTP sources and cache backends: httpx loaded
lean, and the default TLS context made cheaply.

Both exist for start-up time. An embedded ``pybk build`` that resolves ``FROM`` pays for
everything here once per process, so:

- :func:`load_httpx` imports httpx without the two things it imports but pybk never uses:
  its command-line client (``httpx._main``, which pulls in click, rich and pygments when they
  are installed) and trio (which httpcore imports, when installed, to support trio
  applications; pybk runs on asyncio). Together they cost ~150 ms on a machine that has both.
- :func:`default_tls_context` verifies against the system's hashed CA directory, which OpenSSL
  reads lazily (a certificate when a chain needs it), instead of parsing the whole CA bundle
  up front (~30–50 ms). It falls back to the standard default context when
  ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are set or the directory is not a hashed one.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: modules httpx imports that pybk never uses; kept out when httpx is first imported here
_UNUSED = ("httpx._main", "trio")
_LOCK = threading.Lock()
_DEFAULT_TLS: list[ssl.SSLContext] = []
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def load_httpx() -> ModuleType:
    """``httpx`` (and httpcore, which it imports when its first client is made), imported
    without httpx's CLI and without trio unless something else already imported them. The
    modules are kept out only while httpx and httpcore load: an application that imports trio
    later gets it as usual (httpcore then lacks only its trio backend)."""
    module = sys.modules.get("httpx")
    if module is not None:
        return module
    with _LOCK:
        blocked = [name for name in _UNUSED if name not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # makes the import fail
        try:
            # httpx imports httpcore when its first client is made: load it now, inside the
            # guard (it is what imports trio)
            import httpcore  # noqa: F401
            import httpx
        finally:
            for name in blocked:
                if sys.modules.get(name, ...) is None:
                    del sys.modules[name]
    return httpx


def _hashed_ca_dir() -> str | None:
    """The OpenSSL CA directory when it is a hashed one (``c_rehash``/``update-ca-certificates``
    links such as ``002c0b4f.0``) and no environment variable overrides the defaults."""
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env) or os.environ.get(paths.openssl_capath_env):
        return None
    capath = paths.capath
    if not capath or not paths.cafile:
        return None
    try:
        with os.scandir(capath) as entries:
            for entry in entries:
                name = entry.name
                if len(name) == 10 and name[8] == "." and name[9].isdigit():
                    return capath
    except OSError:
        return None
    return None


def default_tls_context() -> ssl.SSLContext:
    """The system's default TLS client context, made once per process (``pybkd`` makes it
    before it forks). Verification, hostname checks and protocol defaults are those of
    :func:`ssl.create_default_context`; only how the CAs are loaded differs (see above)."""
    if not _DEFAULT_TLS:
        with _LOCK:
            if not _DEFAULT_TLS:
                capath = _hashed_ca_dir()
                if capath is not None:
                    context = ssl.create_default_context(capath=capath)
                else:
                    context = ssl.create_default_context()
                _DEFAULT_TLS.append(context)
    return _DEFAULT_TLS[0]


def proxy_configured() -> bool:
    """Whether the environment names an HTTP proxy (``http_proxy``, ``https_proxy``,
    ``all_proxy``, either case)."""
    return any(os.environ.get(name) or os.environ.get(name.upper())
               for name in _PROXY_VARIABLES)


def async_client(tls_context: Callable[[], ssl.SSLContext], **options: Any) -> Any:
    """An ``httpx.AsyncClient`` whose TLS context ``tls_context()`` is made when the client
    first connects over ``https://``, not when the client is made: a client that only ever
    talks plain HTTP (a loopback registry) never loads a CA. Plain-HTTP connections get a
    context with no CA at all, so a redirect to ``https://`` could not go unverified even
    through that transport. When the environment names a proxy the client is made the usual
    way (httpx mounts its proxy transports by URL pattern, which a lazy ``https://`` mount
    would hide)."""
    httpx = load_httpx()
    if proxy_configured():
        return httpx.AsyncClient(verify=tls_context(), **options)
    no_ca = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts nobody
    return httpx.AsyncClient(verify=no_ca, mounts={"https://": _lazy_transport(tls_context)},
                             **options)


def _lazy_transport(tls_context: Callable[[], ssl.SSLContext]) -> Any:
    httpx = load_httpx()

    class LazyTLSTransport(httpx.AsyncBaseTransport):
        """The default transport, made with ``tls_context()`` on the first request."""

        def __init__(self) -> None:
            self._transport: Any = None

        async def handle_async_request(self, request: Any) -> Any:
            if self._transport is None:
                self._transport = httpx.AsyncHTTPTransport(verify=tls_context())
            return await self._transport.handle_async_request(request)

        async def aclose(self) -> None:
            if self._transport is not None:
                await self._transport.aclose()

    return LazyTLSTransport()
