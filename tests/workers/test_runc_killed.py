"""A build killed outright (SIGKILL: no cancellation runs) takes its running container with it:
the executor's watcher force-deletes it as soon as the build process is gone; its mounts and
bundle are cleaned up by the next process that runs a step on the store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.engine import require_runc
from support.pybkd import CLIENT, client_env

pytestmark = pytest.mark.runc


def _runc(root: Path, *args: str) -> str:
    return subprocess.run(["runc", "--root", str(root / "executor" / "runc"), *args],
                          capture_output=True, text=True, timeout=30).stdout


def _container_pids(root: Path) -> list[int]:
    """The pids of every process of every container of the store (``runc ps``)."""
    pids = []
    for container in _runc(root, "list", "-q").split():
        out = _runc(root, "ps", "--format", "json", container).strip()
        pids += [int(p) for p in out.strip("[]").split(",") if p.strip().isdigit()]
    return pids


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _runtime_processes(root: Path) -> list[int]:
    """Live ``runc`` processes working on the store ``root`` (``runc run`` included)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"runc" and str(root).encode() in b" ".join(argv) \
                and _alive(int(pid)):
            found.append(int(pid))
    return found


def _mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(real + "/")]


def test_sigkilled_build_leaves_no_container_running(tmp_path, busybox_layout):
    require_runc()
    root = tmp_path / "store"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo $((6*7))-running && sleep 600\n")
    build = subprocess.Popen(
        [*CLIENT, "--addr", "", "--root", str(root), "build", "--no-cache", "--progress",
         "plain", "--build-context", f"busybox=oci-layout://{busybox_layout}", str(ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=client_env())
    try:
        seen = b""
        deadline = time.monotonic() + 90
        while b"42-running" not in seen and time.monotonic() < deadline:
            line = build.stderr.readline()
            if not line:
                break
            seen += line
        assert b"42-running" in seen, seen.decode()  # the step's output: it runs
        pids = _container_pids(root)
        assert pids and all(_alive(pid) for pid in pids)
        assert any(Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00600\x00"
                   for pid in pids)
        build.send_signal(signal.SIGKILL)  # the build process only, none of its children
        build.wait(30)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == []
        while _runtime_processes(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _runtime_processes(root) == []  # runc run ended with its container
        listed = _runc(root, "list", "-q").split()
        assert listed == [] or all("stopped" in _runc(root, "state", c) for c in listed)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        build.stderr.close()
    # the next process to run a step on the store cleans up the mounts and the bundle
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    done = subprocess.run(
        [*CLIENT, "--addr", "", "--root", str(root), "build", "--build-context",
         f"busybox=oci-layout://{busybox_layout}", str(ctx)],
        capture_output=True, env=client_env(), timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert _mounts_under(root) == []
    assert os.listdir(root / "executor" / "bundles") == []


def test_the_watcher_lives_as_long_as_its_executor(run, executor):
    """One watcher per process, started with the first step, gone once the executor closes
    (its pipe closed: no container of this process is left to delete)."""
    assert run("true").code == 0
    owner, _, watcher = executor._watcher
    assert owner == os.getpid() and _alive(watcher.pid)
    assert run("true").code == 0
    assert executor._watcher[2] is watcher  # the same one for every step
    assert os.getsid(watcher.pid) == watcher.pid  # its own session: no terminal signal
    executor.close()
    assert watcher.poll() is not None and not _alive(watcher.pid)


def test_sigkilled_daemon_command_leaves_no_container_running(tmp_path, busybox_layout):
    """The same for a build pybkd runs: its forked command process, SIGKILLed, takes the
    container with it (the daemon itself lives on)."""
    require_runc()
    from support.pybkd import Pybkd

    daemon = Pybkd(tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo $((6*7))-running && sleep 600\n")
    client = subprocess.Popen(
        [*CLIENT, "--addr", daemon.addr, "build", "--no-cache", "--progress", "plain",
         "--build-context", f"busybox=oci-layout://{busybox_layout}", str(ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=client_env())
    try:
        seen = b""
        deadline = time.monotonic() + 90
        while b"42-running" not in seen and time.monotonic() < deadline:
            line = client.stderr.readline()
            if not line:
                break
            seen += line
        assert b"42-running" in seen, seen.decode()
        pids = _container_pids(daemon.root)
        assert pids and all(_alive(pid) for pid in pids)
        parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                   for pid in _runtime_processes(daemon.root)}
        (command,) = parents & set(daemon.children())  # the child running the build
        os.kill(command, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == []
        assert daemon.proc.poll() is None
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate(timeout=60)
        daemon.stop()
        from pybk.core.store.mounts import cleanup_stale_mounts

        cleanup_stale_mounts(str(daemon.root))  # what the killed command left mounted
