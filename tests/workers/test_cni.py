"""The CNI invoker: configuration files as the CNI specification writes them, and plugin
failures reported with the plugin's own message (real plugins from containernetworking-plugins
where they run)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from pybk.workers import cni
from pybk.workers.network import create_netns, remove_netns

PLUGINS = "/usr/lib/cni"


def test_a_single_plugin_conf_becomes_a_list(tmp_path):
    path = tmp_path / "10-one.conf"
    path.write_text(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge",
                                "bridge": "br-one"}))
    assert cni.load_config_file(str(path)) == {
        "cniVersion": "0.4.0", "name": "one", "plugins": [{"type": "bridge",
                                                            "bridge": "br-one"}]}


@pytest.mark.parametrize(("text", "message"), [
    ("{", "is not valid JSON"),
    ("[]", "a CNI config is a JSON object"),
    ('{"name": "x"}', 'neither "plugins" nor "type" is set'),
    ('{"name": "x", "plugins": []}', '"plugins" must be a non-empty list'),
    ('{"plugins": [{"type": "bridge"}]}', "the network has no name"),
])
def test_a_bad_config_file_is_named_in_the_error(tmp_path, text, message):
    path = tmp_path / "cni.json"
    path.write_text(text)
    with pytest.raises(cni.CNIError, match=message) as caught:
        cni.load_config_file(str(path))
    assert str(path) in str(caught.value)


def test_a_missing_config_file_and_a_missing_plugin(tmp_path):
    with pytest.raises(cni.CNIError, match=f"cannot read CNI config {tmp_path}/none.json"):
        cni.load_config_file(str(tmp_path / "none.json"))
    network = cni.CNINetwork({"name": "n", "plugins": [{"type": "nosuch"}]}, [str(tmp_path)])
    with pytest.raises(cni.CNIError, match=f'CNI plugin "nosuch" not found in {tmp_path}'):
        asyncio.run(network.add("c", "/proc/self/ns/net"))


def test_search_path(monkeypatch):
    assert cni.binary_dirs("/a:/b:") == ["/a", "/b"]
    monkeypatch.setenv("PATH", "/x:/y")
    assert cni.binary_dirs("") == [*cni.DEFAULT_BINARY_DIRS, "/x", "/y"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_a_plugin_failure_carries_the_plugins_message(tmp_path):
    if not os.access(os.path.join(PLUGINS, "bridge"), os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("the CNI plugins are not installed (scripts/setup.sh installs them)")
        pytest.skip("the CNI plugins are not installed")
    netns = str(tmp_path / "ns")
    create_netns(netns)
    try:
        network = cni.CNINetwork({"cniVersion": "1.0.0", "name": "bad", "plugins": [
            {"type": "bridge", "bridge": "pybkbad0",
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": "not-a-subnet"}]]}}]}, [PLUGINS])
        with pytest.raises(cni.CNIError) as caught:
            asyncio.run(network.add("c1", netns))
        message = str(caught.value)
        assert message.startswith("CNI ADD failed in plugin bridge of network bad: ")
        assert "not-a-subnet" in message
    finally:
        remove_netns(netns)
        subprocess.run(["ip", "link", "del", "pybkbad0"], capture_output=True)
