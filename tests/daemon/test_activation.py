"""Socket activation: pybkd serves the listening unix socket passed on descriptor 3 with
``LISTEN_FDS``/``LISTEN_PID``, as systemd passes a ``.socket`` unit's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.engine import require_runc
from support.pybkd import BASE_CONFIG, Pybkd, client_env, http_get

#: what systemd does for a .socket unit: make the socket, put it on descriptor 3, set
#: LISTEN_FDS=1 and LISTEN_PID to the pid the service will have (exec keeps it), exec
LAUNCHER = r"""
import os, socket, sys
kind, path, pid, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
os.makedirs(os.path.dirname(path), exist_ok=True)
if kind in ("unix", "unix-not-listening"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o660)
    if kind == "unix":
        s.listen(16)
    fd = s.fileno()
elif kind == "tcp":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    fd = s.fileno()
else:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
if fd != 3:
    os.dup2(fd, 3)  # inheritable
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="pybkd.socket",
                  LISTEN_PID=str(os.getpid()) if pid == "self" else pid)
os.execv(argv[0], argv)
"""


def _launcher(tmp_path: Path, kind: str, pid: str = "self") -> list[str]:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    return [sys.executable, str(script), kind, str(tmp_path / "run" / "pybkd.sock"), pid]


def _environ(pid: int) -> dict[str, str]:
    data = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(e.decode().partition("=")[::2] for e in data.split(b"\0") if e)


def test_activated_socket_is_served_and_left_in_place(tmp_path, busybox_layout):
    require_runc()
    config = BASE_CONFIG + '\n[grpc]\ndebugAddress = "unix://' + str(tmp_path / "dbg.sock") + '"\n'
    d = Pybkd(tmp_path, config, launcher=_launcher(tmp_path, "unix"), addr=False)
    try:
        text = d.stderr.read_text()
        assert f"pybkd: serving unix://{d.sock} " in text and "WARNING" not in text
        assert d.pybk("--version").stdout == b"pybk 0.1.0\n"
        # a build through it; its RUN step and the daemon's own processes see no LISTEN_*
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN env > /env.txt\n"
                                        "FROM scratch\nCOPY --from=0 /env.txt /\n")
        done = d.pybk("build", "--progress", "quiet", "--build-context",
                      f"busybox=oci-layout://{busybox_layout}", "-o",
                      f"type=local,dest={tmp_path / 'out'}", str(ctx))
        assert done.returncode == 0, done.stderr.decode()
        env = (tmp_path / "out" / "env.txt").read_text()
        assert "PATH=" in env and "LISTEN_" not in env
        status, _, body = http_get(str(tmp_path / "dbg.sock"), "/debug/state")
        assert status == 200
        started = [pid for pid in d.children()
                   if b"debugserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(started) == 1
        assert not {k for k in _environ(started[0]) if k.startswith("LISTEN_")}
        assert "LISTEN_PID" in _environ(d.proc.pid)  # what exec gave the daemon (unchanged)
    finally:
        assert d.stop() == 0
    assert d.sock.is_socket()  # systemd's: not removed
    assert d.stderr.read_text().endswith("pybkd: stopped\n")


@pytest.mark.parametrize(("kind", "message"), [
    ("tcp", "is not a unix socket (AF_INET)"),
    ("unix-not-listening", "is not listening"),
    ("file", "descriptor 3 is not a socket"),
])
def test_a_passed_descriptor_that_is_not_a_listening_unix_socket_is_refused(tmp_path, kind,
                                                                             message):
    launcher = _launcher(tmp_path, kind)
    done = subprocess.run([*launcher, sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "store")], capture_output=True, text=True,
                          env=client_env(), timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: pybkd: socket activation: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_addr_must_name_the_passed_socket(tmp_path):
    launcher = _launcher(tmp_path, "unix")
    done = subprocess.run([*launcher, sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "store"), "--addr", f"unix://{tmp_path}/other.sock"],
                          capture_output=True, text=True, env=client_env(), timeout=120)
    assert done.returncode == 2
    assert "is not the socket passed by socket activation" in done.stderr


def test_listen_pid_of_another_process_is_ignored(tmp_path):
    """Variables meant for another process: the daemon binds its own socket (here the
    launcher's, already live, so it refuses to start), and never serves descriptor 3."""
    launcher = _launcher(tmp_path, "unix", pid="1")
    sock = tmp_path / "run" / "pybkd.sock"
    done = subprocess.run([*launcher, sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "store"), "--addr", f"unix://{sock}"],
                          capture_output=True, text=True, env=client_env(), timeout=120)
    assert done.returncode == 2
    assert f"another daemon is listening on {sock}" in done.stderr
