"""Fixtures for the OCI worker tests: a busybox rootfs and a runc executor in tmp_path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
from support.engine import runc_missing
from support.rootfs import busybox_available, make_busybox_rootfs

from pybk.core.interfaces import ExecMount, Mount, ProcessSpec, SecretMount, SSHMount


def runc_missing_reason() -> str | None:
    reason = runc_missing()
    if reason:
        return reason
    if not busybox_available():
        return "busybox-static (/bin/busybox) is not installed"
    return None


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount(2))")


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    if not busybox_available():
        pytest.skip("busybox-static (/bin/busybox) is not installed")
    return make_busybox_rootfs(tmp_path / "rootfs")


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str


class Runner:
    """Runs shell snippets (or argv tuples) in runc on the test rootfs, synchronously."""

    def __init__(self, executor, rootfs: Path):
        self.executor = executor
        self.rootfs = rootfs

    @property
    def root(self) -> list[Mount]:
        return [Mount("bind", str(self.rootfs), ("rbind",))]

    def process(self, command: str | Sequence[str], **kw) -> ProcessSpec:
        args = ("/bin/sh", "-c", command) if isinstance(command, str) else tuple(command)
        return ProcessSpec(args=args, **kw)

    async def arun(self, command: str | Sequence[str], *, root: Sequence[Mount] | None = None,
                   mounts: Sequence[ExecMount] = (), secrets: Sequence[SecretMount] = (),
                   ssh: Sequence[SSHMount] = (), **kw) -> Result:
        out: list[bytes] = []
        err: list[bytes] = []
        code = await self.executor.run(
            self.process(command, **kw), self.root if root is None else root, mounts,
            secrets=secrets, ssh=ssh, stdout=out.append, stderr=err.append)
        return Result(code, b"".join(out).decode(), b"".join(err).decode())

    def __call__(self, command: str | Sequence[str], **kw) -> Result:
        return asyncio.run(self.arun(command, **kw))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def executor(state_dir: Path):
    reason = runc_missing_reason()
    if reason:
        pytest.skip(reason)
    from pybk.workers.runc import RuncExecutor

    executor = RuncExecutor(state_dir)
    yield executor
    executor.close()


@pytest.fixture
def run(executor, rootfs: Path) -> Runner:
    return Runner(executor, rootfs)
