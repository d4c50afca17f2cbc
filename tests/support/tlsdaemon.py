"""pybkd on ``tcp://127.0.0.1`` with mutual TLS for tests: a CA made with trustme, the daemon's
certificate, client certificates good and bad (:class:`PKI`), and a real ``pybkd`` serving gRPC
(:class:`RemoteDaemon`, its config from :func:`tls_config`)."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from support.pybkd import stop_process

CLIENT = [sys.executable, "-c", "import sys; from pybk.core.cli.entry import main; sys.exit(main())"]


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYBK_HOST", "BUILDKIT_HOST", "PYBK_ROOT", "SOURCE_DATE_EPOCH",
                         "PYBK_BUILDER")}
    return {**env, **extra}


class PKI:
    """A CA, the daemon's certificate, and client certificates good and bad."""

    def __init__(self, base: Path):
        self.base = base
        ca = trustme.CA()
        self.ca = self._write(ca.cert_pem, "ca.pem")
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self._write(server.cert_chain_pems[0], "server.pem")
        self.server_key = self._write(server.private_key_pem, "server-key.pem")
        self.good = self._tlsdir("good", ca, ca.issue_cert("client.example",
                                                          common_name="client-one"))
        now = datetime.datetime.now(datetime.UTC)
        self.expired = self._tlsdir("expired", ca, ca.issue_cert(
            "client.example", not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1)))
        stranger = trustme.CA()
        self.stranger = self._tlsdir("stranger", ca, stranger.issue_cert("client.example"))

    def _write(self, blob: trustme.Blob, name: str) -> Path:
        path = self.base / name
        blob.write_to_path(str(path))
        return path

    def _tlsdir(self, name: str, ca: trustme.CA, leaf: trustme.LeafCert) -> Path:
        directory = self.base / name
        directory.mkdir()
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(directory / "key.pem"))
        return directory


class RemoteDaemon:
    def __init__(self, base: Path, config: str):
        self.root = base / "store"
        self.config = base / "buildkitd.toml"
        self.config.write_text(config)
        self.log = base / "pybkd.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pybk.core.cli.daemon", "--root", str(self.root),
                 "--config", str(self.config)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=client_env())
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r"serving tcp://(\S+) ", self.log.read_text())
            if found and "serving unix://" in self.log.read_text():
                self.target = found.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"pybkd did not start: {self.log.read_text()}")
            time.sleep(0.05)
        self.addr = f"tcp://{self.target}"

    def pybk(self, *args: str, tls: list[str] | None = None, cwd: Path | None = None,
             env: dict | None = None, timeout: float = 180,
             input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CLIENT, "--addr", self.addr, *(tls or []), *args], cwd=cwd,
                              capture_output=True, env=env or client_env(), timeout=timeout,
                              input=input if input is not None else b"")

    def stop(self) -> int:
        return stop_process(self.proc)


def tls_config(pki: PKI, extra: str = "") -> str:
    return (f'[grpc]\naddress = ["tcp://127.0.0.1:0"]\n[grpc.tls]\ncert = "{pki.server_cert}"\n'
            f'key = "{pki.server_key}"\nca = "{pki.ca}"\n[worker.oci]\ngc = false\n'
            f'networkMode = "none"\n{extra}')
