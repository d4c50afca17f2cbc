"""pybk.core.http: httpx without the modules pybk never uses, and a TLS context whose CAs load
lazily but verify exactly as the default one does."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from pybk.core import http


def test_httpx_is_loaded_without_its_cli_or_trio():
    """A finder placed first records every import the interpreter attempts: without the guard,
    httpx asks for ``httpx._main`` (its CLI) and httpcore for ``trio`` whatever is installed."""
    code = (
        "import sys\n"
        "asked = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        asked.append(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from pybk.core.http import load_httpx\n"
        "httpx = load_httpx()\n"
        "httpx.AsyncClient()\n"
        "assert load_httpx() is httpx\n"
        "print('httpx._main' in asked, 'trio' in asked, 'click' in asked,\n"
        "      sys.modules.get('trio', 'gone'), sys.modules.get('httpx._main', 'gone'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "False", "False", "gone", "gone"]


def test_trio_stays_importable_after_httpx_is_loaded():
    pytest.importorskip("trio")  # the guard must not leave trio blocked where it exists
    code = ("from pybk.core.http import load_httpx\nload_httpx()\nimport trio\n"
            "print(trio.__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "trio"


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA in a hashed directory, a server certificate for 127.0.0.1 it signed, and one from
    a CA nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN=pybk {name} CA", cwd=d)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}-server.key", "-out", f"{name}-server.csr",
                 "-subj", "/CN=127.0.0.1", cwd=d)
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}-server.csr", "-CA", f"{name}.pem", "-CAkey",
                 f"{name}.key", "-CAcreateserial", "-out", f"{name}-server.pem", "-days", "2",
                 "-extfile", "san.ext", cwd=d)
    hashed = d / "certs"
    hashed.mkdir()
    (hashed / "ca.pem").write_bytes((d / "ca.pem").read_bytes())
    _openssl("rehash", str(hashed), cwd=d)
    return d


def _handshake(context: ssl.SSLContext, certfile, keyfile) -> None:
    """Connect with ``context`` to a TLS server on 127.0.0.1 presenting ``certfile``."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certfile, keyfile)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"x")
    finally:
        thread.join(10)
        listener.close()


@pytest.fixture
def fresh_context(monkeypatch):
    monkeypatch.setattr(http, "_DEFAULT_TLS", [])
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _paths(cafile, capath) -> SimpleNamespace:
    return SimpleNamespace(cafile=str(cafile), capath=str(capath),
                           openssl_cafile_env="SSL_CERT_FILE", openssl_capath_env="SSL_CERT_DIR")


def test_a_hashed_ca_directory_is_read_lazily_and_verifies(pki, fresh_context):
    fresh_context.setattr(ssl, "get_default_verify_paths",
                          lambda: _paths(pki / "ca.pem", pki / "certs"))
    context = http.default_tls_context()
    assert context is http.default_tls_context()
    assert context.cert_store_stats()["x509_ca"] == 0  # nothing parsed up front
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    _handshake(context, pki / "ca-server.pem", pki / "ca-server.key")
    assert context.cert_store_stats()["x509_ca"] == 1  # the one CA the chain needed
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, pki / "other-server.pem", pki / "other-server.key")


def test_the_environment_or_an_unhashed_directory_keep_the_standard_context(
        pki, fresh_context, tmp_path):
    fresh_context.setattr(ssl, "get_default_verify_paths",
                          lambda: _paths(pki / "ca.pem", tmp_path))  # no hash links
    assert http._hashed_ca_dir() is None
    fresh_context.setattr(ssl, "get_default_verify_paths",
                          lambda: _paths(pki / "ca.pem", pki / "certs"))
    assert http._hashed_ca_dir() == str(pki / "certs")
    fresh_context.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    assert http._hashed_ca_dir() is None
    context = http.default_tls_context()
    # the standard default context honours SSL_CERT_FILE and parses it up front
    assert context.cert_store_stats()["x509_ca"] == 1
    _handshake(context, pki / "ca-server.pem", pki / "ca-server.key")


def _serve(handler_context: ssl.SSLContext | None):
    """A one-thread HTTP(S) server on 127.0.0.1 answering every GET with ``ok``."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if handler_context is not None:
        server.socket = handler_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_tls_context_is_made_on_the_first_https_request_only(pki):
    import asyncio

    made = []

    def context() -> ssl.SSLContext:
        made.append(1)
        return ssl.create_default_context(cafile=str(pki / "ca.pem"))

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki / "ca-server.pem", pki / "ca-server.key")
    plain, tls = _serve(None), _serve(server_context)

    async def run() -> list[str]:
        async with http.async_client(context) as client:
            texts = [(await client.get(f"http://127.0.0.1:{plain.server_port}/")).text]
            assert made == []  # plain HTTP loaded no CA
            for _ in range(2):
                texts.append((await client.get(f"https://127.0.0.1:{tls.server_port}/")).text)
            return texts

    try:
        assert asyncio.run(run()) == ["ok", "ok", "ok"]
        assert made == [1]
    finally:
        plain.shutdown()
        tls.shutdown()
