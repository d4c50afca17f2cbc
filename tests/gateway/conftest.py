"""Fixtures for the gateway tests: a store for CLI builds, the shell frontend image pushed to
the test registry, and frontends run as local processes (``run_local``)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from pathlib import Path

import pytest
from support.engine import require_runc

from pybk.frontends.gateway.runner import QueueChannel

HERE = Path(__file__).resolve().parent
SHELL_FRONTEND = HERE / "shell_frontend.sh"


class PipeChannel(QueueChannel):
    """A frontend run as a local process (no container): the protocol without the worker."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        super().__init__()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self._threads = [threading.Thread(target=self._pump_out, daemon=True),
                         threading.Thread(target=self._pump_err, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _pump_out(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            self._stdout(chunk)
        self._finished(self.proc.wait())

    def _pump_err(self) -> None:
        while chunk := self.proc.stderr.read1(65536):
            self._stderr(chunk)

    def send(self, line: bytes) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def close_input(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for thread in self._threads:
            thread.join(5)
        self.close_input()


@pytest.fixture
def pipe_channel():
    return PipeChannel


@pytest.fixture(scope="module")
def gateway_root(tmp_path_factory):
    """One store for a module's CLI builds (the frontend image is pulled once)."""
    require_runc()
    return str(tmp_path_factory.mktemp("gateway-store"))


@pytest.fixture(scope="module")
def shell_frontend_ref(gateway_root, registry, busybox_ref):
    from support.gatewayimages import push_shell_frontend

    return push_shell_frontend(gateway_root, registry, busybox_ref, "shell")
