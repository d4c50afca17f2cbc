"""``pip install`` inside a RUN step, through the default (bridge) network, from a PEP 503
simple index served by the test on the bridge's gateway address.

The index and the wheel live on this machine only: the server binds ``10.10.0.1`` with
IP_FREEBIND before the bridge exists, and pip is given that index and nothing else
(``--trusted-host`` only lets it use plain HTTP there).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.netserver import StepServer

from pybk.core.cli.commands import main

CNI_BRIDGE = "/usr/lib/cni/bridge"
GATEWAY = "10.10.0.1"
WHEEL = "pybkdemo-1.0-py3-none-any.whl"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: missing tools fail instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _needs_bridge() -> None:
    if os.geteuid() != 0 or not shutil.which("runc"):
        _skip_or_fail("needs root and runc")
    if not os.access(CNI_BRIDGE, os.X_OK):
        _skip_or_fail(f"{CNI_BRIDGE} is missing (apt-get install containernetworking-plugins)")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(directory: Path, token: str) -> Path:
    """A pure-Python wheel of the module ``pybkdemo`` with ``VALUE = token``, written by hand."""
    files = {
        "pybkdemo.py": f'VALUE = "{token}"\n'.encode(),
        "pybkdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pybkdemo\n"
                                           b"Version: 1.0\nSummary: pybk test package\n",
        "pybkdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: pybk-tests\n"
                                        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files["pybkdemo-1.0.dist-info/RECORD"] = (record + "pybkdemo-1.0.dist-info/RECORD,,\n").encode()
    path = directory / WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return path


class IndexServer:
    """A PEP 503 simple index of one wheel on ``host`` (bound with IP_FREEBIND), in a thread;
    ``requests`` lists (client address, path) of every GET."""

    def __init__(self, host: str, wheel: Path):
        data = wheel.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        pages = {
            "/simple/": b'<!DOCTYPE html><html><body><a href="pybkdemo/">pybkdemo</a></body></html>',
            "/simple/pybkdemo/": (f'<!DOCTYPE html><html><body><a href="/files/{wheel.name}'
                                  f'#sha256={sha}">{wheel.name}</a></body></html>').encode(),
            f"/files/{wheel.name}": data,
        }
        self.server = StepServer(
            host, lambda req: (200, pages[req.path]) if req.path in pages
            else (404, b"not found\n"),
            lambda path: "application/octet-stream" if path.endswith(".whl") else "text/html")
        self.requests = self.server.requests
        self.index_url = f"{self.server.url}/simple/"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[IndexServer, str]]:
    token = secrets.token_hex(12)
    server = IndexServer(GATEWAY, make_wheel(tmp_path, token))
    yield server, token
    server.close()


@pytest.mark.slow  # about 5 s: pip compiles its own bytecode on first import in the step
def test_pip_install_from_an_index_on_the_bridge_gateway(python_layout, index, tmp_path, capsys):
    server, token = index
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM pybase\n"
        "RUN python3 -m pip install --no-cache-dir"
        f" --index-url {server.index_url} --trusted-host {GATEWAY} pybkdemo"
        ' && python3 -c "import pybkdemo; print(pybkdemo.VALUE)" > /out.txt\n')
    config = tmp_path / "buildkitd.toml"
    config.write_text("[worker.oci]\ngc = false\n")  # networkMode: the default (auto)
    out = tmp_path / "out"
    code = main(["--root", str(tmp_path / "store"), "--config", str(config), "build",
                 "--progress", "plain", "--build-context", f"pybase=oci-layout://{python_layout}",
                 "-o", f"type=local,dest={out}", str(context)])
    err = capsys.readouterr().err
    assert code == 0, err[-4000:]
    assert (out / "out.txt").read_text() == f"{token}\n"
    paths = [path for _client, path in server.requests]
    assert "/simple/pybkdemo/" in paths
    assert f"/files/{WHEEL}" in paths, server.requests
    # the step came through the bridge: its address is in 10.10.0.0/16, not the host's
    clients = {client for client, _path in server.requests}
    assert all(c.startswith("10.10.") and c != GATEWAY for c in clients), clients
