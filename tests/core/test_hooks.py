"""One test per hook: a plugin implementing it is called with the documented arguments."""

import types

from pybk.core import hookimpl
from pybk.core.interfaces import CacheBackend, Frontend, Worker
from pybk.core.plugins import PybkPluginManager, create_plugin_manager


def _pm_with(monkeypatch, **hooks):
    monkeypatch.setenv("PYBK_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = PybkPluginManager()
    pm.load_builtins()
    mod = types.ModuleType("testplugin")
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))
    pm.register(mod, name="testplugin")
    pm.check_pending()
    pm.build_registries()
    return pm


def test_hook_pybk_addhooks(monkeypatch):
    spec_mod = types.ModuleType("extra_specs")
    from pybk.core.markers import hookspec

    def pybk_extra_event(value):
        """An extra hook."""

    spec_mod.pybk_extra_event = hookspec(pybk_extra_event)
    seen = []
    pm = _pm_with(monkeypatch, pybk_addhooks=lambda pluginmanager: pluginmanager.add_hookspecs(spec_mod))
    pm.hook.pybk_addhooks.call_historic(kwargs={"pluginmanager": pm})
    impl = types.ModuleType("impl")
    impl.pybk_extra_event = hookimpl(lambda value: seen.append(value))
    pm.register(impl, name="impl")
    pm.hook.pybk_extra_event(value=42)
    assert seen == [42]


def test_hook_pybk_register_frontends(monkeypatch):
    class Toy(Frontend):
        """A toy frontend."""

        name = "toy"

        def solve(self, request, bridge):
            return None

    pm = _pm_with(monkeypatch, pybk_register_frontends=lambda: [Toy])
    assert pm.frontends().get("toy") is Toy
    assert pm.frontends().owner("toy") == ("testplugin", "?")
    assert "dockerfile.v0" in pm.frontends()


def test_hook_pybk_register_workers(monkeypatch):
    class Fake(Worker):
        """A fake worker."""

        name = "fake"

    pm = _pm_with(monkeypatch, pybk_register_workers=lambda: Fake)
    assert pm.workers().get("fake") is Fake


def test_hook_pybk_register_exporters(monkeypatch):
    from pybk.exporters.local import LocalExporter

    class Other(LocalExporter):
        """Another exporter."""

        name = "other"

    pm = _pm_with(monkeypatch, pybk_register_exporters=lambda: [Other])
    assert pm.exporters().get("other") is Other
    assert pm.exporters().get("local") is LocalExporter


def test_hook_pybk_register_cache_backends(monkeypatch):
    class Bucket(CacheBackend):
        """A bucket cache."""

        name = "bucket"

    pm = _pm_with(monkeypatch, pybk_register_cache_backends=lambda: [Bucket])
    assert pm.cache_backends().get("bucket") is Bucket


def test_hook_pybk_select_frontend(monkeypatch):
    pm = _pm_with(monkeypatch, pybk_select_frontend=lambda filename, directives:
                  "toy" if filename.endswith(".toy") else None)
    assert pm.hook.pybk_select_frontend(filename="x.toy", directives={}) == "toy"
    assert pm.hook.pybk_select_frontend(filename="Dockerfile", directives={}) == "dockerfile.v0"


def test_hook_pybk_select_worker(monkeypatch):
    class W(Worker):
        name = "w"

        def __init__(self, plats):
            self._plats = plats

        def platforms(self):
            return self._plats

        def executor(self):
            raise AssertionError("not used in selection")

        def snapshotter(self, store):
            raise AssertionError("not used in selection")

    arm, amd = W(["linux/arm64"]), W(["linux/amd64"])
    pm = create_plugin_manager()
    assert pm.hook.pybk_select_worker(platform="linux/amd64", workers=[arm, amd]) is amd
    assert pm.hook.pybk_select_worker(platform="linux/s390x", workers=[arm, amd]) is None
    pm2 = _pm_with(monkeypatch, pybk_select_worker=lambda platform, workers: workers[0])
    assert pm2.hook.pybk_select_worker(platform="linux/amd64", workers=[arm, amd]) is arm
