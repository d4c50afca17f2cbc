"""The command-line hooks: plugins add ``pybk`` commands; ``pybkd`` lets them warm up."""

import types

import pytest

from pybk.core import hookimpl
from pybk.core.cli import commands
from pybk.core.errors import PluginValidationError
from pybk.core.plugins import get_plugin_manager, reset_plugin_manager


@pytest.fixture
def plugin():
    """Register a module as a plugin of the process-wide manager; parsers are rebuilt."""
    reset_plugin_manager()
    commands.shared_parser.cache_clear()

    def register(**hooks):
        mod = types.ModuleType("cliplugin")
        for name, fn in hooks.items():
            setattr(mod, name, hookimpl(fn))
        get_plugin_manager().register(mod, name="cliplugin")

    yield register
    reset_plugin_manager()
    commands.shared_parser.cache_clear()


def test_hook_pybk_add_commands(plugin, capsys):
    seen = []

    def hello(ns):
        seen.append((ns.names, ns.root))
        print("hello", *ns.names)
        return 3

    def add(commands):
        commands.add("hello", hello, help="say hello",
                     arguments=lambda p: p.add_argument("names", nargs="*"))
        commands.add("greeting", "json:dumps", help="never run", parent="debug")

    plugin(pybk_add_commands=add)
    assert commands.main(["hello", "a", "b"]) == 3
    assert seen == [(["a", "b"], None)]
    assert capsys.readouterr().out == "hello a b\n"
    with pytest.raises(SystemExit):
        commands.main(["--help"])
    listed = capsys.readouterr().out
    # after the core's build and plugins, before prune, du, debug; built-in plugins first
    order = [listed.index(f"    {name} ") for name in
             ("build", "plugins", "images", "hello", "prune", "du", "debug")]
    assert order == sorted(order)
    assert commands.main(["debug"]) == 2
    assert capsys.readouterr().err == ("error: pybk debug: choose one of config, dump-llb, "
                                       "workers, context, fsck, dump-ast, yaml-schema, rootless, "
                                       "greeting\n")


def test_plugin_command_errors_name_the_plugin(plugin):
    def broken(ns):
        raise RuntimeError("boom")

    plugin(pybk_add_commands=lambda commands: commands.add("broken", broken, help="fails"))
    with pytest.raises(RuntimeError) as info:
        commands.main(["broken"])
    assert "in plugin 'cliplugin' (? ?)" in info.value.__notes__


@pytest.mark.parametrize("name,parent", [("build", None), ("images", None),
                                         ("config", "debug"), ("dump-ast", "debug"),
                                         ("x", "images")])
def test_a_plugin_cannot_take_a_command_name(plugin, name, parent):
    plugin(pybk_add_commands=lambda commands: commands.add(name, print, help="",
                                                           parent=parent))
    with pytest.raises(PluginValidationError, match="cliplugin"):
        commands.make_parser()


def test_core_commands_need_no_plugins():
    assert not commands.needs_plugins(["build", "."])
    assert not commands.needs_plugins(["--root", "/x", "--config=c", "--debug", "du"])
    assert not commands.needs_plugins(["--version", "images"])
    assert not commands.needs_plugins(["debug", "config"])
    for argv in ([], ["--help"], ["images", "ls"], ["debug"], ["debug", "dump-ast"],
                 ["--ro", "/x", "build"], ["--root"], ["-h", "build"], ["--", "build"]):
        assert commands.needs_plugins(argv), argv


def test_hook_pybk_warm_up(plugin, tmp_path):
    from pybk.core.cli.daemon import warm_up
    from pybk.core.config.schema import Config
    from pybk.frontends.dockerfile.parser import _lark_parser

    seen = []
    plugin(pybk_warm_up=lambda config: seen.append(config))
    config = Config()
    _lark_parser.cache_clear()
    warm_up(str(tmp_path / "store"), config)
    assert seen == [config]
    assert _lark_parser.cache_info().currsize == 2  # the Dockerfile plugin built both parsers
