"""pybkd keeps to what is its own: it never deletes a file that is not a socket at its socket
path, and a command it runs for a client sees the daemon's ``PYBK_*`` variables, none of the
client's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.engine import require_runc
from support.pybkd import CLIENT, Pybkd, client_env


def test_a_regular_file_at_the_socket_path_is_left_alone(tmp_path):
    """Only a stale *socket* is replaced: a file there survives and pybkd exits 2."""
    sock = tmp_path / "run" / "pybkd.sock"
    sock.parent.mkdir()
    sock.write_text("precious\n")
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "store"), "--addr", f"unix://{sock}"],
                          capture_output=True, text=True, env=client_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{sock} exists and is not a socket" in done.stderr
    assert sock.read_text() == "precious\n"
    assert sock.is_file() and not sock.is_symlink()


def test_a_symlink_at_the_socket_path_is_left_alone(tmp_path):
    target = tmp_path / "target"
    target.write_text("kept\n")
    sock = tmp_path / "pybkd.sock"
    sock.symlink_to(target)
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "store"), "--addr", f"unix://{sock}"],
                          capture_output=True, text=True, env=client_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "is not a socket" in done.stderr
    assert sock.is_symlink() and target.read_text() == "kept\n"


def test_the_clients_pybk_variables_are_not_the_commands(tmp_path):
    """``PYBK_ROOT`` and ``PYBK_CONFIG`` of the client change nothing: the daemon's config is
    printed, nothing of the file the client named, and nothing is made at its root."""
    daemon = Pybkd(tmp_path, '[worker.oci]\ngc = false\nnetworkMode = "none"\n'
                             '[pybk]\ndaemon-idle-timeout = "17m"\n')
    elsewhere = tmp_path / "elsewhere"
    secret = tmp_path / "shadow"
    secret.write_text('root = "/from-the-clients-config"\n[worker.oci]\ngc = true\n')
    try:
        done = subprocess.run(
            [*CLIENT, "--addr", daemon.addr, "debug", "config"], capture_output=True,
            env=client_env(PYBK_ROOT=str(elsewhere), PYBK_CONFIG=str(secret)), timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        shown = json.loads(done.stdout)
        assert shown["pybk"]["daemon-idle-timeout"] == "17m0s"  # the daemon's file
        assert shown["root"] != "/from-the-clients-config"
        assert b"from-the-clients-config" not in done.stdout + done.stderr
        assert not elsewhere.exists()
    finally:
        daemon.stop()


def _runc_processes(root: Path) -> list[int]:
    """Pids of the OCI runtime processes working on the store ``root``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if os.path.basename(argv[0]) == b"runc" and str(root).encode() in b" ".join(argv):
                found.append(int(pid))
    return found


def test_a_running_step_sees_none_of_the_clients_pybk_variables(tmp_path, busybox_layout):
    """What the command starts (the OCI runtime) inherits the command's environment: the
    client's ``PYBK_*`` variables are not in it, its other variables are."""
    require_runc()
    daemon = Pybkd(tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started && sleep 60\n")
    env = client_env(PYBK_ROOT=str(tmp_path / "elsewhere"), PYBK_GATEWAY_TIMEOUT="4242s",
                     PYBK_ANYTHING="client", CLIENT_MARK="kept")
    client = subprocess.Popen(
        [*CLIENT, "--addr", daemon.addr, "build", "--no-cache", "--progress", "plain",
         "--build-context", f"busybox=oci-layout://{busybox_layout}", str(ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 90
        runtimes: list[int] = []
        while not runtimes and time.monotonic() < deadline and client.poll() is None:
            runtimes = _runc_processes(daemon.root)
            time.sleep(0.1)
        assert runtimes, client.stderr.read().decode() if client.poll() is not None else ""
        environ = Path(f"/proc/{runtimes[0]}/environ").read_bytes().split(b"\0")
        assert b"CLIENT_MARK=kept" in environ
        daemons_own = sorted(f"{k}={v}".encode() for k, v in client_env().items()
                             if k.startswith("PYBK_"))
        assert sorted(v for v in environ if v.startswith(b"PYBK_")) == daemons_own
    finally:
        client.send_signal(signal.SIGINT)
        client.communicate(timeout=60)
        daemon.stop()


def test_users_of_a_daemon_in_the_store_reach_its_socket_and_nothing_else(tmp_path):
    """A daemon on the store's own socket (``ROOT/pybkd.sock``) for ``[grpc] uid``: the root is
    searchable (0711) so that user connects; every directory in it stays 0700."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a client of another user")
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pybkd-store-"))  # tmp_path's parents are private
    os.chmod(base, 0o755)
    try:
        root, sock = base / "store", base / "store" / "pybkd.sock"
        (base / "pybkd.toml").write_text('[grpc]\nuid = 65534\n[worker.oci]\ngc = false\n')
        daemon = subprocess.Popen([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                                   str(root), "--config", str(base / "pybkd.toml")],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=client_env())
        try:
            deadline = time.monotonic() + 60
            while not sock.exists() and time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(0.05)
            assert sock.is_socket(), daemon.stderr.read().decode() if daemon.poll() else ""
            assert stat.S_IMODE(root.stat().st_mode) == 0o711
            assert {stat.S_IMODE(p.lstat().st_mode) for p in root.iterdir()
                    if p.is_dir() and not p.is_symlink()} == {0o700}
            probe = ("import os, socket, sys; os.setgroups([]); os.setgid(65534); "
                     "os.setuid(65534); s = socket.socket(socket.AF_UNIX); "
                     "s.connect(sys.argv[1]); print('connected'); "
                     "print(sorted(os.listdir(sys.argv[2])) if os.access(sys.argv[2], os.R_OK) "
                     "else 'unlisted')")
            done = subprocess.run([sys.executable, "-c", probe, str(sock), str(root)],
                                  capture_output=True, text=True, timeout=60)
            assert done.stdout == "connected\nunlisted\n", done.stderr
        finally:
            daemon.terminate()
            daemon.communicate(timeout=60)
    finally:
        shutil.rmtree(base, ignore_errors=True)
