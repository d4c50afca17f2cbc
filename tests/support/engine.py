"""What engine tests share: whether runc can run here."""

from __future__ import annotations

import os
import shutil

import pytest

from pybk.core.interfaces import Executor


def runc_missing() -> str | None:
    """Why runc-based tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (runc, mount(2))"
    if not shutil.which("runc"):
        return "runc is not installed"
    return None


def require_runc() -> None:
    """Skip the calling test (or fixture) when runc cannot run here."""
    reason = runc_missing()
    if reason:
        pytest.skip(reason)


def need_runc() -> None:
    """Like :func:`require_runc`, but under ``CI=true`` (where nothing may be missing) the
    test fails instead of being skipped."""
    reason = runc_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: required)")
        pytest.skip(reason)


class CountingExecutor(Executor):
    """Wraps a real executor and counts its runs (``calls``)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def reap_stale(self):
        return self.inner.reap_stale()

    async def run(self, process, root, mounts=(), **kw):
        self.calls += 1
        return await self.inner.run(process, root, mounts, **kw)


def counting_client(root, config=None):
    """A Client on the store ``root`` whose runc runs are counted (``client.executor.calls``)."""
    from pybk.core.config.schema import Config
    from pybk.core.engine.client import Client
    from pybk.workers.plugin import OCIWorker

    root = str(root)
    executor = CountingExecutor(OCIWorker(root=root).executor())
    client = Client(root=root, config=config or Config(root=root), executor=executor)
    client.executor = executor
    return client
