"""The plugin core: built-ins from plugins.toml, registries, blocking, errors, entry points."""

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import pybk.core
from pybk.core import hookimpl
from pybk.core.errors import (
    DuplicatePluginError,
    PluginLoadError,
    PluginValidationError,
    UnknownPluginError,
)
from pybk.core.interfaces import Exporter, ExporterInstance, NoOptions
from pybk.core.plugins import (
    PybkPluginManager,
    create_plugin_manager,
    plugins_toml_path,
    read_builtin_plugins,
)

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "tests" / "plugins" / "pybk-hello"


def test_plugins_toml_found_next_to_core():
    path = plugins_toml_path()
    assert path == Path(pybk.core.__file__).resolve().parent.parent / "plugins.toml"
    names = [p.name for p in read_builtin_plugins()]
    assert names[0] == "core" and "dockerfile" in names and "exporters" in names


def test_builtins_registered():
    pm = create_plugin_manager()
    assert "dockerfile.v0" in pm.frontends()
    assert {"local", "tar"} <= set(pm.exporters().names())
    rows = {(r.name, r.kind) for r in pm.describe()}
    assert ("dockerfile.v0", "frontend") in rows and ("local", "exporter") in rows


def _fake_exporter(name):
    class Fake(Exporter):
        """A test exporter."""

        Options = NoOptions

        def resolve(self, options):
            return None

    Fake.name = name
    return Fake


def _module(name, **hooks):
    mod = types.ModuleType(name)
    for key, value in hooks.items():
        setattr(mod, key, value)
    return mod


def test_duplicate_name_is_one_line_error(monkeypatch):
    monkeypatch.setenv("PYBK_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = PybkPluginManager()
    pm.load_builtins()
    pm.register(_module("dup", pybk_register_exporters=hookimpl(lambda: _fake_exporter("local"))),
                name="dup")
    with pytest.raises(DuplicatePluginError) as err:
        pm.build_registries()
    message = str(err.value)
    assert "\n" not in message
    assert "'local'" in message and "'exporters'" in message and "'dup'" in message


def test_unknown_name_lists_choices():
    pm = create_plugin_manager()
    with pytest.raises(UnknownPluginError) as err:
        pm.exporters().get("locl")
    message = str(err.value)
    assert "\n" not in message
    assert "did you mean 'local'" in message and "available: " in message and ", local, " in message


def test_class_without_name_rejected(monkeypatch):
    pm = PybkPluginManager()
    nameless = _fake_exporter("x")
    del nameless.name
    pm.register(_module("bad", pybk_register_exporters=hookimpl(lambda: nameless)), name="bad")
    with pytest.raises(PluginValidationError, match="has no 'name'"):
        pm.build_registries()


def test_misspelled_hook_fails_at_startup(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text(textwrap.dedent("""
        from pybk.core import hookimpl

        @hookimpl
        def pybk_register_exporter():
            return []
    """))
    toml = tmp_path / "plugins.toml"
    toml.write_text('[[plugin]]\nname = "typo"\nmodule = "typo_plugin"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYBK_DISABLE_PLUGIN_AUTOLOAD", "1")
    with pytest.raises(PluginLoadError, match="pybk_register_exporter"):
        create_plugin_manager(toml)


def test_broken_builtin_import_names_plugin(tmp_path, monkeypatch):
    toml = tmp_path / "plugins.toml"
    toml.write_text('[[plugin]]\nname = "ghost"\nmodule = "no_such_module_xyz"\n')
    with pytest.raises(PluginLoadError, match="'ghost'.*no_such_module_xyz"):
        create_plugin_manager(toml)


def test_essential_plugin_cannot_be_blocked(monkeypatch):
    monkeypatch.setenv("PYBK_DISABLED_PLUGINS", "core")
    with pytest.raises(PluginLoadError, match="essential"):
        create_plugin_manager()


def test_disabled_builtin(monkeypatch):
    monkeypatch.setenv("PYBK_DISABLED_PLUGINS", "exporters")
    pm = create_plugin_manager()
    assert pm.exporters().names() == [] or "local" not in pm.exporters().names()


def test_plugin_exception_gets_note(monkeypatch):
    monkeypatch.setenv("PYBK_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = PybkPluginManager()

    def boom():
        raise RuntimeError("kaput")

    pm.register(_module("boomer", pybk_register_exporters=hookimpl(boom)), name="boomer")
    with pytest.raises(RuntimeError) as err:
        pm.build_registries()
    assert any("in plugin 'boomer'" in note for note in err.value.__notes__)


# -- the real third-party distribution ---------------------------------------------------------


@pytest.fixture(scope="module")
def hello_venv(tmp_path_factory):
    """A throwaway venv seeing pybk (system site-packages) with pybk-hello pip-installed."""
    venv = tmp_path_factory.mktemp("hello-venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(HELLO)], check=True)
    return py


def _pybk(py, *args, env=None):
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYBK_")}
    full_env.update(env or {})
    return subprocess.run([str(py), "-m", "pybk.core.cli.commands", *args], capture_output=True, text=True,
                          env=full_env)


@pytest.mark.slow
def test_hello_discovered_listed_and_blockable(hello_venv):
    out = _pybk(hello_venv, "plugins")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("hello "))
    assert line.split() == ["hello", "exporter", "pybk-hello", "1.0.0"]
    blocked = _pybk(hello_venv, "plugins", env={"PYBK_DISABLED_PLUGINS": "hello"})
    assert blocked.returncode == 0
    assert "hello" not in blocked.stdout.split()
    assert "local" in blocked.stdout.split()
    noauto = _pybk(hello_venv, "plugins", env={"PYBK_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "pybk-hello" not in noauto.stdout


@pytest.mark.slow
def test_hello_usable_by_name_as_output_type(hello_venv, tmp_path):
    ok = _pybk(hello_venv, "build", "--print-llb", "-o", f"type=hello,dest={tmp_path}/x",
               str(tmp_path))
    assert "unknown output type" not in ok.stderr
    missing = _pybk(hello_venv, "build", "-o", "type=hello", str(tmp_path))
    assert missing.returncode == 2
    assert "--output" in missing.stderr and "dest" in missing.stderr
    blocked = _pybk(hello_venv, "build", "-o", f"type=hello,dest={tmp_path}/x", str(tmp_path),
                    env={"PYBK_DISABLED_PLUGINS": "hello"})
    assert blocked.returncode == 2 and "unknown output type 'hello'" in blocked.stderr


def test_instances_are_exporters():
    pm = create_plugin_manager()
    for cls in pm.exporters():
        assert issubclass(cls, Exporter)
        assert ExporterInstance is not None


@pytest.mark.slow
@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root for the store's mounts")
def test_hello_exports_a_real_build(hello_venv, tmp_path):
    from pybk.core import llb

    graph = llb.scratch().file(llb.mkdir("/etc", 0o755).mkfile("/etc/a", 0o644, "a")
                               .mkfile("/b", 0o600, "b"))
    definition = tmp_path / "graph.json"
    definition.write_bytes(graph.marshal().to_bytes())
    out = tmp_path / "hello.txt"
    run = _pybk(hello_venv, "--root", str(tmp_path / "store"), "build", "--llb", str(definition),
                "--progress", "quiet", "-o", f"type=hello,dest={out},greeting=hi")
    assert run.returncode == 0, run.stderr
    assert out.read_text() == "hi from pybk-hello: 2 files\n"


def test_registries_import_plugin_classes_on_first_use():
    # a build that names no exporter or cache never imports their modules
    code = textwrap.dedent("""
        import sys
        from pybk.core.plugins import create_plugin_manager
        pm = create_plugin_manager()
        before = [m for m in ("pybk.exporters.image", "pybk.cachebackends.s3") if m in sys.modules]
        assert "image" in pm.exporters() and "s3" in pm.cache_backends()
        after = [m for m in ("pybk.exporters.image", "pybk.cachebackends.s3") if m in sys.modules]
        print(before, after)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "[] ['pybk.exporters.image', 'pybk.cachebackends.s3']"
