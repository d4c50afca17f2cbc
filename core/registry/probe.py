"""A tag's current digest from one anonymous ``HEAD`` request, written on a socket.

A rebuild resolves ``FROM``'s tag again, as BuildKit does; when the tag still names a manifest
the content store holds, that one request is all the resolution needs. Made with the standard
library it spares a short-lived ``pybk`` process the import of the async HTTP stack (httpx,
httpcore, h11, anyio: ~70-100 ms here), which is loaded only when something has to be fetched;
written on a socket it spares http.client's too (email, calendar, urllib: ~8 ms). One request,
``Connection: close``, a response without a body: the status line and the headers are all there
is to read.

The probe answers only what it can answer plainly: a ``200`` with a well-formed
``Docker-Content-Digest``. Anything else — a redirect, an authentication challenge, an error, a
timeout, a missing header — is None, and the caller asks the full client, which handles all of
them (and reports them).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from typing import Any

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")
#: the most a HEAD response's status line and headers may take
_MAX_HEAD = 64 * 1024


def _address(host: str, default_port: int) -> tuple[str, int] | None:
    """``(name, port)`` of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
    if not name or (port and not port.isdigit()):
        return None
    return name, int(port) if port else default_port


def head_digest(scheme: str, host: str, path: str, *, accept: str, timeout: float,
                tls_context: ssl.SSLContext | None = None) -> str | None:
    """The ``Docker-Content-Digest`` of ``HEAD scheme://host/path``, or None (see above)."""
    if scheme not in ("http", "https") or any(c in host + path for c in "\r\n "):
        return None
    address = _address(host, 443 if scheme == "https" else 80)
    if address is None:
        return None
    request = (f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n"
               "User-Agent: pybk\r\nConnection: close\r\n\r\n").encode("latin-1")
    try:
        # an ASCII name as bytes: a str host goes through the idna codec (and stringprep)
        host_key: str | bytes = address[0].encode("ascii") if address[0].isascii() else address[0]
        with socket.create_connection((host_key, address[1]), timeout=timeout) as raw:  # type: ignore[arg-type]
            conn = raw
            if scheme == "https":
                context = tls_context or ssl.create_default_context()
                conn = context.wrap_socket(raw, server_hostname=address[0])
            with conn:
                conn.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                    chunk = conn.recv(8192)
                    if not chunk:
                        break
                    head += chunk
    except (OSError, ValueError, UnicodeError):
        return None
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    status = _STATUS.match(lines[0] + b"\r")
    if status is None or status.group(1) != b"200":
        return None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"docker-content-digest":
            digest = value.strip().decode("latin-1")
            return digest if _DIGEST.fullmatch(digest) else None
    return None


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
