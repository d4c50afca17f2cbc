"""Resource limits of RUN containers in real runc: the values the step's cgroups get, the
cgroup parent, the op's ulimits, and the error of a step stopped by its memory or pids limit
(the next step on the same executor runs normally)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import uuid
from pathlib import Path

import pytest
from support.engine import need_runc
from support.rootfs import busybox_available, make_busybox_rootfs

from pybk.core.errors import StepLimitError
from pybk.workers.limits import StepLimits

from .conftest import Runner

pytestmark = pytest.mark.runc

MEMORY = 64 << 20
PIDS = 64


def _runner(tmp_path: Path, limits: StepLimits):
    need_runc()
    if not busybox_available():
        pytest.skip("busybox-static (/bin/busybox) is not installed")
    from pybk.workers.runc import RuncExecutor

    executor = RuncExecutor(tmp_path / "state", limits=limits)
    return executor, Runner(executor, make_busybox_rootfs(tmp_path / "rootfs"))


@pytest.fixture
def limited(tmp_path):
    executor, runner = _runner(tmp_path, StepLimits(memory=MEMORY, pids=PIDS))
    yield runner
    executor.close()


@pytest.fixture
def parent():
    """A cgroup parent of the test's own, removed (in every hierarchy) afterwards."""
    name = f"pybk-test-{uuid.uuid4().hex[:8]}"
    yield name
    for path in sorted(glob.glob(f"/sys/fs/cgroup/*/{name}/**/", recursive=True) +
                       glob.glob(f"/sys/fs/cgroup/{name}/**/", recursive=True),
                       key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def test_the_step_sees_its_limits_in_its_cgroups(limited):
    result = limited("cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                     "/sys/fs/cgroup/pids/pids.max")
    assert result.code == 0, result.stderr
    assert result.stdout.split() == [str(MEMORY), str(PIDS)]


def test_out_of_memory_fails_with_the_limit_named(limited):
    with pytest.raises(StepLimitError) as caught:
        limited("dd if=/dev/zero of=/dev/null bs=200M count=1")
    assert caught.value.status == 137
    assert str(caught.value).endswith(
        ": the step ran out of memory (limit 64 MiB, [pybk] step-memory)")
    after = limited("echo fine")
    assert (after.code, after.stdout) == (0, "fine\n")


def test_a_fork_bomb_stops_at_the_pids_limit(limited):
    with pytest.raises(StepLimitError) as caught:
        limited("f() { f | f & }; f; sleep 2; exit 1")
    assert "the step hit its process limit" in str(caught.value)
    assert "(limit 64 processes and threads, [pybk] step-pids)" in str(caught.value)
    after = limited("echo fine")
    assert (after.code, after.stdout) == (0, "fine\n")


def test_a_failure_no_limit_caused_is_the_usual_error(limited):
    assert limited("exit 3").code == 3  # the executor returns it; nothing is added


def test_the_op_ulimits_are_the_process_rlimits(limited):
    result = limited("ulimit -Sn; ulimit -Hn; ulimit -u",
                     ulimits=(("nofile", 1000, 2000), ("nproc", 77, 77)))
    assert result.stdout.split() == ["1000", "2000", "77"]


def _command(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _host_cgroup_during(runner: Runner, parent: str, **kw) -> tuple[str, str]:
    """Run a step that waits, and read from the host, while it runs, the memory cgroup its
    process is in and that cgroup's limit."""

    async def main() -> tuple[str, str]:
        step = asyncio.ensure_future(runner.arun("sleep 30", **kw))
        try:
            for _ in range(400):
                if step.done():
                    raise AssertionError(f"the step ended: {step.result()}")
                procs = glob.glob(f"/sys/fs/cgroup/memory/{parent}/buildkit/*/cgroup.procs")
                pids = [p for f in procs for p in Path(f).read_text().split()
                        if _command(p).startswith(b"sleep")]  # runc is done setting up
                if pids:
                    line = next(ln for ln in Path(f"/proc/{pids[0]}/cgroup").read_text()
                                .splitlines() if ":memory:" in ln)
                    limit = Path(procs[0]).with_name("memory.limit_in_bytes").read_text()
                    return line.split(":", 2)[2], limit.strip()
                await asyncio.sleep(0.05)
            raise AssertionError("no container appeared under the parent")
        finally:
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)

    return asyncio.run(main())


def test_default_cgroup_parent_holds_the_containers(tmp_path, parent):
    executor, runner = _runner(tmp_path, StepLimits(memory=MEMORY, cgroup_parent=parent))
    try:
        path, limit = _host_cgroup_during(runner, parent)
    finally:
        executor.close()
    assert path.startswith(f"/{parent}/buildkit/pybk-{os.getpid()}-")
    assert limit == str(MEMORY)
    assert glob.glob(f"/sys/fs/cgroup/memory/{parent}/buildkit/*/") == []  # removed after


def test_the_ops_cgroup_parent_wins(tmp_path, parent):
    executor, runner = _runner(tmp_path, StepLimits(cgroup_parent="pybk-test-unused"))
    try:
        path, _ = _host_cgroup_during(runner, f"{parent}/sub", cgroup_parent=f"{parent}/sub")
    finally:
        executor.close()
    assert path.startswith(f"/{parent}/sub/buildkit/pybk-")
    assert not os.path.exists("/sys/fs/cgroup/memory/pybk-test-unused")
