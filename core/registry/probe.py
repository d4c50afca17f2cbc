"""A tag's current digest from one anonymous ``HEAD`` request over the standard library's
:mod:`http.client`.

A rebuild resolves ``FROM``'s tag again, as BuildKit does; when the tag still names a manifest
the content store holds, that one request is all the resolution needs. Made with the standard
library it spares a short-lived ``pybk`` process the import of the async HTTP stack (httpx,
httpcore, h11, anyio: ~70-100 ms here), which is loaded only when something has to be fetched.

The probe answers only what it can answer plainly: a ``200`` with a well-formed
``Docker-Content-Digest``. Anything else — a redirect, an authentication challenge, an error, a
timeout, a missing header — is None, and the caller asks the full client, which handles all of
them (and reports them).
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
from typing import Any

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def head_digest(scheme: str, host: str, path: str, *, accept: str, timeout: float,
                tls_context: ssl.SSLContext | None = None) -> str | None:
    """The ``Docker-Content-Digest`` of ``HEAD scheme://host/path``, or None (see above)."""
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, timeout=timeout, context=tls_context)
    elif scheme == "http":
        conn = http.client.HTTPConnection(host, timeout=timeout)
    else:
        return None
    try:
        conn.request("HEAD", path, headers={"Accept": accept, "User-Agent": "pybk"})
        resp = conn.getresponse()
        digest = resp.getheader("Docker-Content-Digest") or ""
        if resp.status != 200 or not _DIGEST.fullmatch(digest):
            return None
        return digest
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def stored_manifest(store: Any, digest: str | None,
                    max_size: int) -> tuple[str, str, bytes] | None:
    """``(digest, media type, bytes)`` of a manifest the content store holds (its content was
    verified when stored), or None when it is not there or names no media type of its own."""
    if store is None or digest is None or not store.has(digest):
        return None
    data = store.path(digest).read_bytes()
    try:
        media_type = json.loads(data).get("mediaType")
    except (ValueError, AttributeError):
        return None
    if not isinstance(media_type, str) or len(data) > max_size:
        return None
    return digest, media_type, data
