"""What a running step leaves on the host is the engine's alone: the executor's directories and
a run's bundle are 0700, its ``config.json`` (the step's environment: secret values) 0600,
whatever the umask, and the bundle is gone once the step ends."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.runc


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    """Run the test with umask 0: modes must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_bundle_and_config_are_private_while_the_step_runs(open_umask, state_dir, executor,
                                                           run):
    bundles = state_dir / "bundles"
    seen: dict[str, object] = {}

    async def watch_and_run() -> int:
        step = asyncio.ensure_future(run.arun("echo started; sleep 2", user="nobody",
                                              env=("TOKEN=hunter2-secret",)))
        deadline = time.monotonic() + 30
        while not step.done() and time.monotonic() < deadline:
            found = [b for b in bundles.iterdir() if (b / "config.json").exists()]
            if found:
                bundle = found[0]
                seen["bundle"] = _mode(bundle)
                seen["config"] = _mode(bundle / "config.json")
                seen["owner"] = os.lstat(bundle / "config.json").st_uid
                seen["holds-secret"] = b"hunter2-secret" in (bundle / "config.json").read_bytes()
                break
            await asyncio.sleep(0.02)
        return (await step).code

    assert asyncio.run(watch_and_run()) == 0
    assert seen == {"bundle": 0o700, "config": 0o600, "owner": 0, "holds-secret": True}
    for path in (state_dir, bundles, state_dir / "runc"):
        assert _mode(path) == 0o700, path
    assert os.listdir(bundles) == []


def test_a_private_bundle_still_runs_steps_as_another_user(open_umask, run, state_dir):
    """The container's user never walks the host's path to the bundle (the rootfs is its
    root): a step as ``nobody`` reads and writes its own root and working directory."""
    res = run("id -u; echo hi > /tmp/x; cat /tmp/x; pwd", user="nobody", cwd="/tmp")
    assert res.code == 0, res.stderr
    assert res.stdout == "65534\nhi\n/tmp\n"
    assert _mode(state_dir / "bundles") == 0o700
