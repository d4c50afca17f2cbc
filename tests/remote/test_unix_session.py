"""pybkd's unix socket: the local protocol for the daemon's own user, sessions for the users
``[grpc] uid``/``gid`` name, everyone else refused (peers checked with SO_PEERCRED)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

#: a client process that drops to UID:GID (after importing what it needs: the interpreter's
#: files may not be readable by that user) and speaks a session on the socket by hand
RAW_CLIENT = r"""
import os, socket, sys
from pybk.core.remote.frames import encode, prefixed, read_message, decode
from pybk.core.remote.clientside import SESSION_MAGIC
path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
except OSError as exc:
    print("connect:", exc.strerror)
    sys.exit(0)
s.sendall(SESSION_MAGIC + prefixed(encode({"t": "start", "version": 1, "command": "argv",
                                          "argv": ["du"], "client": "x"})))
out, code = b"", None
while True:
    try:
        m = read_message(s)
    except OSError:
        m = None
    if m is None:
        break
    h, d = decode(m)
    if h["t"] == "stdout":
        out += d
    elif h["t"] == "exit":
        code = h["code"]
        break
print("exit:", code)
sys.stdout.write(out.decode())
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYBK_HOST", "BUILDKIT_HOST", "PYBK_ROOT")}


@pytest.fixture
def daemon(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: clients of other users")
    config = tmp_path / "buildkitd.toml"
    config.write_text("[grpc]\nuid = 65534\ngid = 4242\n[worker.oci]\ngc = false\n")
    sockdir = Path(tempfile.mkdtemp(prefix="pybkd-sock-"))  # reachable by other users
    os.chmod(sockdir, 0o755)
    sock = sockdir / "pybkd.sock"
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pybk.core.cli.daemon", "--root", str(tmp_path / "store"),
             "--config", str(config), "--addr", f"unix://{sock}"], stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield sock, log
    proc.terminate()
    proc.wait(60)
    shutil.rmtree(sockdir, ignore_errors=True)


def _raw(sock: Path, uid: int, gid: int) -> str:
    done = subprocess.run([sys.executable, "-c", RAW_CLIENT, str(sock), str(uid), str(gid)],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_socket_is_owned_by_grpc_uid_and_gid(daemon):
    sock, _ = daemon
    st = sock.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 4242, 0o660)


def test_grpc_uid_runs_commands_in_a_session(daemon):
    sock, _ = daemon
    out = _raw(sock, 65534, 65534)
    assert out.startswith("exit: 0\n"), out
    assert "Total:" in out


def test_grpc_gid_member_runs_commands_and_others_are_refused(daemon):
    sock, log = daemon
    assert _raw(sock, 1234, 4242).startswith("exit: 0\n")
    os.chmod(sock, 0o666)  # let anyone connect: the daemon's own check must refuse them
    out = _raw(sock, 1235, 1235)
    assert out.startswith("exit: None"), out
    assert "refused pid" in log.read_text() and "(uid 1235)" in log.read_text()


def test_another_users_local_protocol_is_refused(daemon, tmp_path):
    """The local protocol would run commands as root with the client's paths: only the
    daemon's own user gets it."""
    sock, log = daemon
    os.chmod(sock, 0o666)
    script = ("import os, sys; from pybk.core.cli.remote import run_remote; os.setgroups([]); "
              "os.setgid(1236); os.setuid(1236); "
              "from pybk.core.cli import remote; remote._peer_uid = lambda s: os.geteuid(); "
              f"sys.exit(run_remote('unix://{sock}', ['du']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert done.returncode == 1
    assert "refused pid" in log.read_text() and "the local protocol serves" in log.read_text()


def test_the_client_speaks_a_session_to_another_users_daemon(daemon, tmp_path):
    """pybk's own client picks a session when the daemon is not its user (here the check is
    made to see another user, the daemon being root like the test)."""
    sock, _ = daemon
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("alpha\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /\n")
    script = ("import sys; from pybk.core.cli import remote; remote._peer_uid = lambda s: -1; "
              f"sys.exit(remote.run_remote('unix://{sock}', sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "build", "-q", "-o",
                           f"type=local,dest={tmp_path / 'out'}", str(ctx)],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.txt").read_text() == "alpha\n"


def test_a_grpc_client_of_the_unix_socket(daemon):
    """pybkd's unix socket speaks gRPC too (the control API, relayed to its listener), for
    the same peers as sessions."""
    import threading

    import grpc

    from pybk.core.remote.frames import SESSION_METHOD, decode, encode

    sock, _ = daemon
    done = threading.Event()

    def requests():
        yield encode({"t": "start", "version": 1, "command": "argv", "argv": ["du"],
                      "client": "grpc-test"})
        done.wait(60)

    with grpc.insecure_channel(f"unix:{sock}") as channel:
        out, code = b"", None
        for message in channel.stream_stream(SESSION_METHOD)(requests(), timeout=60):
            header, data = decode(message)
            if header["t"] == "stdout":
                out += data
            elif header["t"] == "exit":
                code = header["code"]
                done.set()
                break
    assert code == 0
    assert b"Total:" in out
