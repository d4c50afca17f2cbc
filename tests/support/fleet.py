"""Three real pybkd nodes on 127.0.0.1 for the builder tests (``pybk builder …``, ``pybk build
--builder``), each with mutual TLS from a CA of its own, and the client's builders.json in a
directory of the test's (``$XDG_CONFIG_HOME``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.tlsdaemon import CLIENT, PKI, RemoteDaemon, client_env, tls_config

NAMES = ("alpha", "beta", "gamma")


class Nodes:
    def __init__(self, base: Path):
        self.pki = {}
        for name in NAMES:
            (base / f"pki-{name}").mkdir()
            self.pki[name] = PKI(base / f"pki-{name}")
        self.daemons = {}
        for name in NAMES:
            (base / name).mkdir()
            self.daemons[name] = RemoteDaemon(base / name, tls_config(self.pki[name]))
        self.config = base / "xdg"

    def env(self, **extra: str) -> dict[str, str]:
        return client_env(**{"XDG_CONFIG_HOME": str(self.config), **extra})

    def pybk(self, *args: str, cwd: Path | None = None, **extra: str
             ) -> subprocess.CompletedProcess:
        return subprocess.run([*CLIENT, *args], capture_output=True, text=True, cwd=cwd,
                              env=self.env(**extra), timeout=180, stdin=subprocess.DEVNULL)

    def builds(self, name: str) -> int:
        """How many builds the node's history holds."""
        history = self.daemons[name].root / "history"
        return len(list(history.iterdir())) if history.is_dir() else 0

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()


def context(base: Path, name: str) -> Path:
    """A project directory ``base/name``: a Dockerfile copying one file, ``FROM scratch``."""
    ctx = base / name
    ctx.mkdir()
    (ctx / "a.txt").write_text(name)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /\n")
    return ctx
