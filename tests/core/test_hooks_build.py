"""The lifecycle and event hooks, called by a real build through the Client."""

import os
import types

import pytest

from pybk.core import hookimpl, llb
from pybk.core.plugins import get_plugin_manager, reset_plugin_manager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the store's mounts")


@pytest.fixture
def recorder_plugin():
    reset_plugin_manager()
    pm = get_plugin_manager()
    calls = []
    mod = types.ModuleType("recorder")
    mod.pybk_configure = hookimpl(lambda config: calls.append(("configure", config)))
    mod.pybk_unconfigure = hookimpl(lambda config: calls.append(("unconfigure", config)))
    mod.pybk_build_started = hookimpl(lambda request: calls.append(("started", request)))
    mod.pybk_progress = hookimpl(lambda event: calls.append(("progress", event)))
    mod.pybk_build_finished = hookimpl(
        lambda request, result, error: calls.append(("finished", result, error)))
    pm.register(mod, name="recorder")
    yield calls
    reset_plugin_manager()


def _solve(tmp_path, graph, calls, **kw):
    from pybk.core.engine.client import Client

    client = Client(root=str(tmp_path / "store"))
    try:
        return client, client.solve(graph, progress=None, **kw)
    finally:
        client.close()


def _graph(text):
    return llb.scratch().file(llb.mkfile("/hello.txt", 0o644, text))


def test_hook_pybk_configure(tmp_path, recorder_plugin):
    client, _ = _solve(tmp_path, _graph("a"), recorder_plugin)
    configured = [c for c in recorder_plugin if c[0] == "configure"]
    assert configured == [("configure", client.config)]
    assert recorder_plugin.index(configured[0]) < recorder_plugin.index(
        next(c for c in recorder_plugin if c[0] == "started"))


def test_hook_pybk_unconfigure(tmp_path, recorder_plugin):
    client, _ = _solve(tmp_path, _graph("a"), recorder_plugin)
    assert recorder_plugin[-1] == ("unconfigure", client.config)


def test_hook_pybk_build_started(tmp_path, recorder_plugin):
    from pybk.core.engine.request import BuildRequest

    request = BuildRequest(context=str(tmp_path))
    _solve(tmp_path, _graph("a"), recorder_plugin, request=request)
    assert ("started", request) in recorder_plugin


def test_hook_pybk_progress(tmp_path, recorder_plugin):
    _solve(tmp_path, _graph("b"), recorder_plugin)
    events = [c[1] for c in recorder_plugin if c[0] == "progress"]
    vertexes = [v for e in events for v in e.vertexes]
    assert any(v.completed is not None for v in vertexes)
    assert all(e.to_json() for e in events)


def test_hook_pybk_build_finished(tmp_path, recorder_plugin):
    _, result = _solve(tmp_path, _graph("c"), recorder_plugin)
    finished = [c for c in recorder_plugin if c[0] == "finished"]
    assert finished == [("finished", result, None)]
    with result.mount() as root, open(os.path.join(root, "hello.txt")) as f:
        assert f.read() == "c"
    recorder_plugin.clear()
    bad = llb.scratch().file(llb.copy(llb.scratch(), "/missing", "/x"))
    with pytest.raises(Exception) as err:
        _solve(tmp_path, bad, recorder_plugin)
    finished = [c for c in recorder_plugin if c[0] == "finished"]
    assert len(finished) == 1 and finished[0][1] is None and finished[0][2] is err.value
