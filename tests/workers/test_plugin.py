"""The ``oci`` worker plugin class and its registration."""

from __future__ import annotations

import os

import attrs
import pytest

from pybk.core.interfaces import Worker
from pybk.core.paths import default_root
from pybk.core.plugins import Registry
from pybk.workers import plugin


def test_registered_worker_class():
    cls = plugin.pybk_register_workers()
    assert cls is plugin.OCIWorker
    assert issubclass(cls, Worker) and cls.name == "oci"
    registry = Registry("worker", Worker)
    registry.add(cls, plugin="workers", distribution="pybk")
    assert registry.get("oci") is cls
    assert cls.describe() == "Runs build steps in an OCI runtime (runc or crun) on snapshot mounts."


def test_options_defaults_and_fields():
    opts = plugin.OCIWorker.Options()
    assert (opts.binary, opts.no_process_sandbox, opts.platforms) == ("runc", False, ())
    assert [f.name for f in attrs.fields(plugin.OCIWorker.Options)] == [
        "binary", "no_process_sandbox", "platforms", "network", "snapshotter", "rootless",
        "labels", "gc", "dns", "limits", "pybk"]
    assert plugin.OCIWorker.Options(platforms=["linux/arm64"]).platforms == ("linux/arm64",)


def test_network_options_come_from_the_config(tmp_path):
    from pybk.core.config.loader import load_config_text
    from pybk.workers.network import NetworkOptions

    config, _ = load_config_text('[worker.oci]\nnetworkMode = "host"\ncniPoolSize = 3\n'
                                 '[dns]\nnameservers = ["10.0.0.1"]\n')
    worker = plugin.OCIWorker.from_config(config, root=tmp_path)
    options = worker.network_options()
    assert (options.mode, options.pool_size, options.dns.nameservers) == ("host", 3, ["10.0.0.1"])
    assert options == NetworkOptions.from_config(config)
    # given ones win; with no config section at all, the defaults
    given = NetworkOptions(mode="none")
    assert plugin.OCIWorker(plugin.OCIWorker.Options(network=given)).network_options() is given
    assert plugin.OCIWorker().network_options() == NetworkOptions()


def test_platforms(monkeypatch):
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(
        (real.sysname, real.nodename, real.release, real.version, "aarch64")))
    assert plugin.OCIWorker().platforms() == ["linux/arm64"]
    worker = plugin.OCIWorker(plugin.OCIWorker.Options(platforms=("linux/amd64",)))
    assert worker.platforms() == ["linux/amd64"]


def test_executor_uses_options(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (the executor's state directory is private to root)")
    worker = plugin.OCIWorker(
        plugin.OCIWorker.Options(binary="crun", no_process_sandbox=True), root=tmp_path)
    executor = worker.executor()
    assert executor is worker.executor()
    assert executor.binary == "crun" and executor.no_process_sandbox
    assert executor.state_dir == str(tmp_path / "executor")
    assert sorted(os.listdir(tmp_path / "executor")) == ["bundles", "net", "runc"]


def test_default_store_root(monkeypatch):
    monkeypatch.delenv("PYBK_ROOT", raising=False)
    monkeypatch.setattr(plugin.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/home/u/.data")
    assert default_root() == "/home/u/.data/pybk"
    monkeypatch.setattr(plugin.os, "geteuid", lambda: 0)
    assert default_root() == "/var/lib/pybk"
