"""A real ``pybkd`` for tests, as ``tests/daemon/test_daemon.py`` starts it, with a config file
of the test's own, its stderr kept apart from its stdout, and an optional launcher in front
(socket activation); plus the thin client, an HTTP GET over TCP or a unix socket, and a free
loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLIENT = [sys.executable, "-c",
          "import sys; from pybk.core.cli.entry import main; sys.exit(main())"]
#: the tests' defaults (tests/conftest.py): no automatic GC, no network for RUN steps
BASE_CONFIG = '[worker.oci]\ngc = false\nnetworkMode = "none"\n'


def client_env(**extra: str) -> dict[str, str]:
    """This environment without what names a daemon or a store."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}
    return {**env, **extra}


class Pybkd:
    """``pybkd --root ROOT --config CONFIG`` (``--addr unix://SOCK`` unless ``addr=False``),
    started by ``launcher`` (argv put in front) if given; ready once ``sock`` exists."""

    def __init__(self, tmp: Path, config: str = BASE_CONFIG, *, launcher: list[str] = (),
                 addr: bool = True, extra: list[str] = ()):
        self.root, self.sock = tmp / "store", tmp / "run" / "pybkd.sock"
        self.addr = f"unix://{self.sock}"
        self.config = tmp / "pybkd.toml"
        self.config.write_text(config)
        self.launcher = list(launcher)
        self.stdout, self.stderr = tmp / "pybkd.out", tmp / "pybkd.err"
        argv = [sys.executable, "-m", "pybk.core.cli.daemon", "--root", str(self.root),
                "--config", str(self.config), *(["--addr", self.addr] if addr else []),
                *extra]
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen([*launcher, *argv], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=client_env())
        deadline = time.monotonic() + 60
        while not self.serving():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"pybkd did not start: {self.stderr.read_text()}")
            time.sleep(0.05)

    def serving(self) -> bool:
        """Whether the daemon serves: its socket exists (with a launcher, which makes the
        socket first: the daemon said so)."""
        if self.launcher:
            return "serving unix://" in self.stderr.read_text()
        return self.sock.exists()

    def pybk(self, *args: str, input: bytes | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*CLIENT, "--addr", self.addr, *args], input=input,
                              capture_output=True, env=client_env(), timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*CLIENT, "--addr", self.addr, *args], env=client_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self) -> int:
        return stop_process(self.proc)

    def children(self) -> list[int]:
        """The pids of the daemon's child processes."""
        with contextlib.suppress(OSError):
            path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
            return [int(pid) for pid in Path(path).read_text().split()]
        return []


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaps counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def read_until(proc: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """``proc``'s standard error, line by line, until a line holds ``marker`` (asserted);
    what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen += line
    assert marker in seen, seen.decode(errors="replace")
    return seen


def stop_process(proc: subprocess.Popen) -> int:
    """SIGTERM, a minute to go, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(where: str | tuple[str, int], path: str, timeout: float = 30) -> tuple[int, dict, str]:
    """GET ``path`` from ``where`` (a unix socket path or ``(host, port)``): status, headers
    (lower-case names) and body."""
    family = socket.AF_UNIX if isinstance(where, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(where)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict((k.lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]))
    return int(lines[0].split()[1]), headers, body.decode()
