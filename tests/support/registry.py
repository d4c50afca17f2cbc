"""A real Distribution registry (Debian's ``docker-registry``) for tests, on 127.0.0.1.

``RegistryServer(workdir).start()`` writes its own config (storage under ``workdir``, deletes
enabled, loopback only), optionally with htpasswd basic auth or as a pull-through mirror of
another registry, and waits until ``GET /v2/`` answers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY_BINARY = "/usr/bin/docker-registry"


def registry_available() -> bool:
    return os.access(REGISTRY_BINARY, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd line made by apache2-utils' ``htpasswd -Bbn``."""
    proc = subprocess.run(["htpasswd", "-Bbn", username, password], check=True,
                          capture_output=True, text=True)
    return proc.stdout.strip() + "\n"


class RegistryServer:
    """One registry process; ``host`` is ``127.0.0.1:PORT``, ``url`` its base URL."""

    def __init__(self, workdir: str | os.PathLike[str], *, username: str | None = None,
                 password: str | None = None, proxy_remote_url: str | None = None,
                 tls: tuple[str, str] | None = None, client_ca: str | None = None):
        """``tls`` = (certificate, key) serves HTTPS; ``client_ca`` then requires client certs."""
        self.workdir = Path(workdir)
        self.tls = tls
        self.client_ca = client_ca
        self.username = username
        self.password = password
        self.proxy_remote_url = proxy_remote_url
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def blob_data_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to corrupt it in tests)."""
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def start(self, timeout: float = 20.0) -> RegistryServer:
        if not registry_available():
            raise RuntimeError(f"{REGISTRY_BINARY} is missing (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        config: dict = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True}},
            "http": {"addr": "", "secret": "pybk-test-secret"},
        }
        if self.username is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.username, self.password or ""))
            config["auth"] = {"htpasswd": {"realm": "pybk-test", "path": str(htpasswd)}}
        if self.tls:
            config["http"]["tls"] = {"certificate": self.tls[0], "key": self.tls[1]}
            if self.client_ca:
                config["http"]["tls"]["clientcas"] = [self.client_ca]
        if self.proxy_remote_url:
            config["proxy"] = {"remoteurl": self.proxy_remote_url}
        last_log = ""
        for _ in range(5):  # a free port can be taken between probing and binding
            self.port = free_port()
            config["http"]["addr"] = self.host
            config_path = self.workdir / "config.yml"
            config_path.write_text(json.dumps(config))  # JSON is YAML
            with open(self.workdir / "registry.log", "wb") as log:
                self.process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config_path)],
                                                stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready(timeout):
                return self
            last_log = (self.workdir / "registry.log").read_text(errors="replace")[-2000:]
            self.stop()
            if "address already in use" not in last_log:
                break
        raise RuntimeError(f"registry did not start on {self.host}:\n{last_log}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if self.tls:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return True
                except OSError:
                    time.sleep(0.05)
                    continue
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wipe(self) -> None:
        """Stop and delete all stored data."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
