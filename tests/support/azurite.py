"""Azurite (the Azure Storage emulator from npm) serving Blob storage on 127.0.0.1 for tests.

``AzuriteServer().start()`` runs ``azurite-blob`` on a free port with in-memory storage and waits
until the port answers. ``find_azurite_blob()`` looks for the binary on ``$PATH``, then under
``$PYBK_AZURITE_DIR`` and ``/tmp/pybk-azurite`` (``npm install --prefix DIR azurite@3.35``).
Accounts use Azurite's well-known development account and key.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
AZURITE_SEARCH_DIRS = ("/tmp/pybk-azurite", "/usr/local/lib/azurite", "/opt/azurite")
SKIP_REASON = ("azurite-blob not found (install it with `npm install -g azurite@3.35` or "
               "`npm install --prefix /tmp/pybk-azurite azurite@3.35`)")


def find_azurite_blob() -> str | None:
    """Path of the ``azurite-blob`` launcher, or None when Azurite is not installed."""
    found = shutil.which("azurite-blob")
    if found:
        return found
    dirs = [os.environ["PYBK_AZURITE_DIR"]] if os.environ.get("PYBK_AZURITE_DIR") else []
    for base in [*dirs, *AZURITE_SEARCH_DIRS]:
        candidate = Path(base) / "node_modules" / ".bin" / "azurite-blob"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AzuriteServer:
    """One ``azurite-blob`` process; ``blob_endpoint`` is ``http://127.0.0.1:PORT/devstoreaccount1``."""

    def __init__(self, binary: str | None = None):
        self.binary = binary or find_azurite_blob()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
                f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.blob_endpoint};")

    def start(self, timeout: float = 30.0) -> AzuriteServer:
        if not self.binary:
            raise RuntimeError(SKIP_REASON)
        self.port = _free_port()
        self.process = subprocess.Popen(
            [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"azurite-blob exited with {self.process.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"azurite-blob did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._log.close()
