"""Hostile RUN steps in whole builds: out of memory, a fork bomb, a disk filled up. Each fails
its build alone (exit code 1) with a message naming the limit; the store stays consistent and
the next build, embedded or on the same ``pybkd``, succeeds. Also ``--ulimit`` and
``--cgroup-parent`` reaching the step."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support.engine import need_runc
from support.pybkd import BASE_CONFIG, CLIENT, Pybkd, client_env

pytestmark = pytest.mark.runc

LIMITS = BASE_CONFIG + '[pybk]\nstep-memory = "64MiB"\nstep-pids = 64\n'
OOM = "RUN dd if=/dev/zero of=/dev/null bs=200M count=1"
BOMB = "RUN f() { f | f & }; f; sleep 2; exit 1"
OOM_MESSAGE = "the step ran out of memory (limit 64 MiB, [pybk] step-memory)"
BOMB_MESSAGE = "(limit 64 processes and threads, [pybk] step-pids)"


class Builds:
    """Embedded ``pybk build``s on one store with a config file; busybox as a named
    context."""

    def __init__(self, tmp: Path, layout: Path, config: str, root: Path | None = None):
        need_runc()
        self.tmp, self.layout = tmp, layout
        self.root = root or tmp / "store"
        self.config = tmp / "pybk.toml"
        self.config.write_text(config)
        self.count = 0

    def context(self, dockerfile: str) -> Path:
        self.count += 1
        ctx = self.tmp / f"ctx{self.count}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(dockerfile)
        return ctx

    def args(self, dockerfile: str, *flags: str) -> list[str]:
        return ["build", "--progress", "plain", "--build-context",
                f"busybox=oci-layout://{self.layout}", *flags, str(self.context(dockerfile))]

    def pybk(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLIENT, "--addr", "", "--root", str(self.root), "--config",
                               str(self.config), *args], capture_output=True, text=True,
                              env=client_env(), timeout=120)

    def build(self, dockerfile: str, *flags: str) -> subprocess.CompletedProcess:
        return self.pybk(*self.args(dockerfile, *flags))

    def output(self, dockerfile: str, *flags: str) -> Path:
        out = self.tmp / f"out{self.count + 1}"
        result = self.build(dockerfile, "-o", f"type=local,dest={out}", *flags)
        assert result.returncode == 0, result.stderr
        return out


def test_out_of_memory_fails_the_build_alone(tmp_path, busybox_layout):
    b = Builds(tmp_path, busybox_layout, LIMITS)
    result = b.build(f"FROM busybox\n{OOM}\n")
    assert result.returncode == 1
    assert f"exit code: 137: {OOM_MESSAGE}" in result.stderr
    assert f" > [2/2] {OOM}:" in result.stderr  # the step is named
    out = b.output("FROM busybox\nRUN echo next > /next\n")
    assert (out / "next").read_text() == "next\n"
    assert b.pybk("debug", "fsck").returncode == 0


def test_a_fork_bomb_fails_the_build_alone(tmp_path, busybox_layout):
    b = Builds(tmp_path, busybox_layout, LIMITS)
    result = b.build(f"FROM busybox\n{BOMB}\n")
    assert result.returncode == 1
    assert "the step hit its process limit: " in result.stderr
    assert BOMB_MESSAGE in result.stderr
    out = b.output("FROM busybox\nRUN cat /sys/fs/cgroup/pids/pids.max "
                   "/sys/fs/cgroup/memory/memory.limit_in_bytes > /limits\n")
    assert (out / "limits").read_text().split() == ["64", str(64 << 20)]


def test_ulimit_flag_sets_the_steps_rlimits(tmp_path, busybox_layout):
    b = Builds(tmp_path, busybox_layout, BASE_CONFIG)
    out = b.output("FROM busybox\nRUN ulimit -Sn > /n && ulimit -Hn >> /n\n",
                   "--ulimit", "nofile=1000:2000")
    assert (out / "n").read_text().split() == ["1000", "2000"]
    bad = b.build("FROM busybox\nRUN true\n", "--ulimit", "nofile")
    assert bad.returncode == 2
    assert "--ulimit: invalid value 'nofile'" in bad.stderr
    unknown = b.build("FROM busybox\nRUN true\n", "--ulimit", "files=1")
    assert unknown.returncode != 0
    assert 'unknown name "files"' in unknown.stderr


def test_resource_flag_sets_the_steps_cgroup_limits(tmp_path, busybox_layout):
    b = Builds(tmp_path, busybox_layout, LIMITS)
    out = b.output("FROM busybox\nRUN cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                   "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
                   "> /limits\n",
                   "--resource", "memory=32m,cpu-quota=50000,cpu-period=100000")
    assert (out / "limits").read_text().split() == [str(32 << 20), "50000", "100000"]
    # above the daemon's [pybk] step-memory: that one applies
    out = b.output("FROM busybox\nRUN cat /sys/fs/cgroup/memory/memory.limit_in_bytes > /m\n",
                   "--resource", "memory=1g")
    assert (out / "m").read_text().split() == [str(64 << 20)]
    result = b.build(f"FROM busybox\n{OOM} && echo again\n", "--resource", "memory=32m")
    assert result.returncode == 1
    assert "the step ran out of memory (limit 32 MiB, --resource memory)" in result.stderr
    bad = b.build("FROM busybox\nRUN true\n", "--resource", "memory=lots")
    assert bad.returncode == 2
    assert "--resource: invalid value 'memory=lots'" in bad.stderr


def test_cgroup_parent_flag_places_the_container(tmp_path, busybox_layout):
    b = Builds(tmp_path, busybox_layout, BASE_CONFIG)
    parent = f"pybk-test-{uuid.uuid4().hex[:8]}"
    build = subprocess.Popen(
        [*CLIENT, "--addr", "", "--root", str(b.root), "--config", str(b.config),
         *b.args("FROM busybox\nRUN sleep 60\n", "--cgroup-parent", parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=client_env())
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not lines and time.monotonic() < deadline and build.poll() is None:
            for procs in glob.glob(f"/sys/fs/cgroup/pids/{parent}/buildkit/*/cgroup.procs"):
                for pid in Path(procs).read_text().split():
                    # the runtime's short-lived processes come and go: a pid still there
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        lines = lines or Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            time.sleep(0.05)
        assert lines, build.stderr.read().decode() if build.poll() is not None else ""
        pids_line = next(ln for ln in lines if ":pids:" in ln)
        assert pids_line.split(":", 2)[2].startswith(f"/{parent}/buildkit/pybk-")
    finally:
        build.send_signal(signal.SIGINT)
        build.communicate(timeout=60)
        for path in sorted(glob.glob(f"/sys/fs/cgroup/*/{parent}/**/", recursive=True),
                           key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)


@pytest.fixture
def small_disk(tmp_path):
    """A 640 MiB tmpfs (pybk keeps 512 MiB free while unpacking layers), unmounted after."""
    need_runc()
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_filling_the_disk_fails_the_step_and_frees_the_space(tmp_path, busybox_layout,
                                                              small_disk):
    store = small_disk / "store"
    b = Builds(tmp_path, busybox_layout, BASE_CONFIG, root=store)
    result = b.build("FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M\n")
    assert result.returncode == 1
    assert "No space left on device" in result.stderr  # dd's own
    assert (f"exit code: 1: no space left on device: the store at {store} is full"
            in result.stderr)
    assert "the step's snapshot was discarded" in result.stderr
    assert _used(small_disk) < 64 << 20  # the partial snapshot is gone
    fsck = b.pybk("debug", "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = b.output("FROM busybox\nRUN echo next > /next\n")
    assert (out / "next").read_text() == "next\n"


def test_a_step_that_fills_the_disk_and_succeeds_is_not_kept(tmp_path, busybox_layout,
                                                             small_disk):
    """Ignoring ENOSPC (``; true``) leaves a full disk the store's database cannot be written
    to: the step fails all the same, cleanly, and its snapshot is discarded."""
    store = small_disk / "store"
    b = Builds(tmp_path, busybox_layout, BASE_CONFIG, root=store)
    result = b.build("FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M; true\nRUN echo x\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert ('process "/bin/sh -c dd if=/dev/zero of=/big bs=1M; true" completed, but no space '
            f"left on device: the store at {store} is full") in result.stderr
    assert _used(small_disk) < 64 << 20
    fsck = b.pybk("debug", "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = b.output("FROM busybox\nRUN echo next > /next\n")
    assert (out / "next").read_text() == "next\n"


def test_the_daemon_survives_hostile_steps(tmp_path, busybox_layout):
    need_runc()
    daemon = Pybkd(tmp_path, LIMITS)
    b = Builds(tmp_path, busybox_layout, LIMITS)
    try:
        oom = daemon.pybk(*b.args(f"FROM busybox\n{OOM}\n"))
        assert oom.returncode == 1
        assert OOM_MESSAGE in oom.stderr.decode()
        bomb = daemon.pybk(*b.args(f"FROM busybox\n{BOMB}\n"))
        assert bomb.returncode == 1
        assert BOMB_MESSAGE in bomb.stderr.decode()
        assert daemon.proc.poll() is None
        out = tmp_path / "out"
        ok = daemon.pybk(*b.args(
            "FROM busybox\nRUN echo alive > /alive && ulimit -n >> /alive && "
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes >> /alive\n",
            "-o", f"type=local,dest={out}", "--ulimit", "nofile=1000:2000",
            "--resource", "memory=32m"))
        assert ok.returncode == 0, ok.stderr.decode()
        # the flags reach the daemon's steps
        assert (out / "alive").read_text().split() == ["alive", "1000", str(32 << 20)]
    finally:
        assert daemon.stop() == 0


def test_a_pipelines_runs_get_the_flags_too(tmp_path, busybox_layout):
    b = Builds(tmp_path, busybox_layout, BASE_CONFIG)
    ctx = tmp_path / "pipeline"
    ctx.mkdir()
    (ctx / "pipeline.yaml").write_text(
        "version: 1\nstages:\n  main:\n    from: busybox\n    steps:\n"
        "      - run: 'ulimit -n > /n && cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us >> /n'\n")
    out = tmp_path / "out"
    result = b.pybk("build", "--progress", "plain", "--build-context",
                    f"busybox=oci-layout://{busybox_layout}", "-f", str(ctx / "pipeline.yaml"),
                    "-o", f"type=local,dest={out}", "--ulimit", "nofile=999",
                    "--resource", "cpu-quota=70000", str(ctx))
    assert result.returncode == 0, result.stderr
    assert (out / "n").read_text().split() == ["999", "70000"]
