"""TLS contexts of the registry client: made once per process and per settings."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

from pybk.core.registry.client import RegistryClient, default_tls_context


def test_hosts_without_tls_settings_share_the_default_context():
    first = RegistryClient({})._tls_context("registry.example:5000")
    assert first is default_tls_context()
    assert RegistryClient({"other.example": SimpleNamespace(http=True)})._tls_context(
        "other.example") is first


def test_hosts_with_tls_settings_get_their_own_context_once(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out",
                    "ca.pem", "-days", "2", "-subj", "/CN=pybk test CA"],
                   cwd=tmp_path, check=True, capture_output=True)
    hosts = {"secure.example": SimpleNamespace(ca=[str(tmp_path / "ca.pem")])}
    own = RegistryClient(hosts)._tls_context("secure.example")
    assert own is not default_tls_context()
    assert RegistryClient(hosts)._tls_context("secure.example") is own  # made once
    assert any(c["subject"] == ((("commonName", "pybk test CA"),),)
               for c in own.get_ca_certs())
    insecure = RegistryClient({"secure.example": SimpleNamespace(insecure=True)})._tls_context(
        "secure.example")
    assert insecure is not own and insecure.verify_mode.name == "CERT_NONE"


def test_warm_up_loads_what_the_first_request_would():
    """pybkd calls it before forking: its builds then import nothing of httpx's on their first
    registry request."""
    import sys

    code = ("import sys\n"
            "from pybk.core.registry.client import default_tls_context, warm_up\n"
            "warm_up()\n"
            "import pybk.core.http as h\n"
            "assert h._DEFAULT_TLS and h._DEFAULT_TLS[0] is default_tls_context()\n"
            "print(' '.join(m for m in ('httpx', 'httpcore', 'h11', 'anyio._backends._asyncio')"
            " if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["httpx", "httpcore", "h11", "anyio._backends._asyncio"]
