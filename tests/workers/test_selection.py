"""Workers from the plugin registry: ``from_config`` with ``[worker.oci]`` (enabled, platforms,
labels), the ``pybk_select_worker`` choice, and what the engine takes from the chosen one."""

from __future__ import annotations

import asyncio
import os
import stat
import types

import pytest

from pybk.core import hookimpl, plugins
from pybk.core.config.loader import load_config_text
from pybk.core.engine.client import Client, OnFirstRun
from pybk.core.engine.workers import load_workers, select_worker
from pybk.core.errors import PluginValidationError, UsageError
from pybk.core.interfaces import WORKER_LABEL_PREFIX, Executor, ProcessSpec, Worker
from pybk.core.platform import host_platform
from pybk.workers.plugin import OCIWorker

HOST = str(host_platform())


class FakeExecutor(Executor):
    runs = 0

    async def run(self, process, root, mounts=(), **kw):
        type(self).runs += 1
        return 0


class Toy(Worker):
    """A worker for tests: native snapshots, an executor that runs nothing."""

    name = "toy"
    closed = 0

    def __init__(self, options=None, *, root=None, platforms=("linux/s390x",)):
        super().__init__(options, root=root)
        self._platforms = list(platforms)
        self._executor = FakeExecutor()

    def platforms(self):
        return self._platforms

    def executor(self):
        return self._executor

    def snapshotter(self, store):
        from pybk.core.store.snapshotters import make_snapshotter

        return make_snapshotter(store.db, "native")

    def gc_policy(self, disk_total):
        from pybk.core.config.gc import PruneRule

        return [PruneRule(all=True)]

    def close(self):
        type(self).closed += 1


def _config(text: str = ""):
    config, _ = load_config_text(text)
    return config


@pytest.fixture
def pm(monkeypatch):
    """The process-wide plugin manager with a plugin registering ``Toy`` (and ``select``, a
    list the test may fill with a choice function)."""
    monkeypatch.setenv("PYBK_DISABLE_PLUGIN_AUTOLOAD", "1")
    manager = plugins.create_plugin_manager()
    module = types.ModuleType("toyworker")
    module.choices = []
    module.pybk_register_workers = hookimpl(lambda: Toy)
    module.pybk_select_worker = hookimpl(
        lambda platform, workers: module.choices[0](platform, workers) if module.choices
        else None)
    manager.register(module, name="toyworker")
    manager.toy = module
    monkeypatch.setattr(plugins, "_PM", manager)
    Toy.closed = 0
    return manager


def test_every_enabled_worker_in_registration_order(pm, tmp_path):
    workers = load_workers(_config(), str(tmp_path), pm)
    assert [type(w) for w in workers] == [OCIWorker, Toy]
    workers = load_workers(_config("[worker.oci]\nenabled = false\n"), str(tmp_path), pm)
    assert [type(w) for w in workers] == [Toy]
    assert all(w.root == str(tmp_path) for w in workers)


def test_no_worker_left_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PYBK_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = plugins.create_plugin_manager()
    with pytest.raises(UsageError, match=r"no worker to build with: every worker is disabled "
                                         r"\(oci; e.g. \[worker.oci\] enabled = false\)"):
        load_workers(_config("[worker.oci]\nenabled = false\n"), str(tmp_path), pm)
    monkeypatch.setattr(plugins, "_PM", pm)
    client = Client(root=tmp_path, config=_config("[worker.oci]\nenabled = false\n"))
    with pytest.raises(UsageError, match="no worker to build with"):
        client.worker()
    client.close()


def test_config_platforms_and_labels_are_the_oci_workers(tmp_path):
    config = _config('[worker.oci]\nplatforms = ["linux/arm64", "linux/amd64"]\n'
                     'snapshotter = "native"\nnetworkMode = "none"\n'
                     '[worker.oci.labels]\nteam = "build"\n'
                     '"org.mobyproject.buildkit.worker.hostname" = "builder-1"\n')
    worker = OCIWorker.from_config(config, root=str(tmp_path))
    assert worker.platforms() == ["linux/arm64", "linux/amd64"]
    labels = worker.labels()
    assert labels["team"] == "build"
    assert labels[WORKER_LABEL_PREFIX + "hostname"] == "builder-1"  # the config wins
    assert labels[WORKER_LABEL_PREFIX + "executor"] == "oci"
    assert labels[WORKER_LABEL_PREFIX + "snapshotter"] == "native"
    assert labels[WORKER_LABEL_PREFIX + "network"] == "none"
    assert labels[WORKER_LABEL_PREFIX + "oci.process-mode"] == "sandbox"
    default = OCIWorker.from_config(_config(), root=str(tmp_path))
    assert default.platforms() == [HOST]
    assert OCIWorker.from_config(_config("[worker.oci]\nenabled = false\n"),
                                 root=str(tmp_path)) is None


def test_bad_platform_in_config_is_an_error():
    from pybk.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r'worker.oci.platforms\[0\]: "a/b/c/d" is not a '
                                          "platform"):
        _config('[worker.oci]\nplatforms = ["a/b/c/d"]\n')


def test_gc_policy_follows_the_config(tmp_path):
    on = OCIWorker.from_config(_config(), root=str(tmp_path))
    assert len(on.gc_policy(100 * 10**9)) == 4
    off = OCIWorker.from_config(_config("[worker.oci]\ngc = false\n"), root=str(tmp_path))
    assert off.gc_policy(100 * 10**9) == []


def test_worker_id_is_stable_per_root_and_name(tmp_path):
    a = OCIWorker(root=tmp_path / "one")
    assert len(a.id) == 25 and a.id.isalnum() and a.id == a.id.lower()
    assert OCIWorker(root=tmp_path / "one").id == a.id
    assert OCIWorker(root=tmp_path / "two").id != a.id
    assert Toy(root=tmp_path / "one").id != a.id
    path = tmp_path / "one" / "workers" / "oci" / "workerid"
    assert path.read_text() == a.id
    assert stat.S_IMODE(path.stat().st_mode) == 0o400


def test_builtin_choice_is_the_first_listing_the_platform(pm, tmp_path):
    arm = Toy(root=tmp_path, platforms=["linux/arm64"])
    amd = Toy(root=tmp_path, platforms=["linux/x86_64"])  # compared normalised
    assert select_worker([arm, amd], "linux/amd64", pm) is amd
    assert select_worker([arm, amd], "arm64", pm) is arm
    # nobody lists it: the first builds (an emulated platform runs on the host's worker)
    assert select_worker([arm, amd], "linux/s390x", pm) is arm


def test_a_plugin_hook_chooses_first(pm, tmp_path):
    arm = Toy(root=tmp_path, platforms=["linux/arm64"])
    amd = Toy(root=tmp_path, platforms=["linux/amd64"])
    seen = []
    pm.toy.choices.append(lambda platform, workers: seen.append(platform) or workers[-1])
    assert select_worker([amd, arm], None, pm) is arm
    assert seen == [HOST]
    pm.toy.choices[0] = lambda platform, workers: Toy(root=tmp_path)
    with pytest.raises(PluginValidationError, match="not one of those offered"):
        select_worker([amd, arm], None, pm)


def test_client_builds_on_the_selected_worker(pm, tmp_path):
    pm.toy.choices.append(lambda platform, workers: workers[-1])
    config = _config("[worker.oci]\nsnapshotter = \"overlayfs\"\n")
    client = Client(root=tmp_path, config=config)
    try:
        assert [type(w) for w in client.workers()] == [OCIWorker, Toy]
        engine = client.worker()
        assert isinstance(client.selected_worker(), Toy)
        # the worker's executor runs the steps, asked for when the first one runs
        before = FakeExecutor.runs
        assert asyncio.run(engine.executor.run(ProcessSpec(args=("true",)), [])) == 0
        assert FakeExecutor.runs == before + 1
        assert engine.store.snapshotter.name == "native"  # the worker's, not [worker.oci]'s
        assert client.collect_garbage(force=True) == []  # the worker's policy ran: empty store
    finally:
        client.close()
    assert Toy.closed == 1
    assert client._workers is None and client._worker is None


def test_an_injected_executor_still_runs_the_steps(pm, tmp_path):
    injected = FakeExecutor()
    client = Client(root=tmp_path, config=_config("[worker.oci]\nenabled = false\n"),
                    executor=injected)
    try:
        assert client.worker().executor is injected
        assert client.worker().store.snapshotter.name == "native"
    finally:
        client.close()


def test_the_executor_is_made_when_the_first_step_runs(tmp_path):
    made = []

    def make():
        made.append(FakeExecutor())
        return made[-1]

    lazy = OnFirstRun(make)
    assert made == []
    assert asyncio.run(lazy.run(ProcessSpec(args=("true",)), [])) == 0
    assert asyncio.run(lazy.run(ProcessSpec(args=("true",)), [])) == 0
    assert len(made) == 1


def test_no_oci_executor_is_made_until_a_step_needs_it(tmp_path):
    client = Client(root=tmp_path, config=_config(), executor=FakeExecutor())
    try:
        client.worker()
        assert not os.path.exists(tmp_path / "executor")
    finally:
        client.close()


def test_a_worker_must_give_its_executor_and_snapshotter():
    class Half(Worker):
        name = "half"

        def executor(self):
            return FakeExecutor()

    with pytest.raises(TypeError, match="snapshotter"):
        Half()
