"""The pieces of rootless pybk that need no root: sub-id ranges, the map arguments, the spec
conversion, the network choice, which commands enter a namespace."""

from __future__ import annotations

import resource

import pytest

from pybk.core.cli.entry import _command_at, _needs_engine
from pybk.core.errors import BuildError, ConfigError
from pybk.core.userns import in_user_namespace, map_arguments, overlay_opaque_xattr, sub_ranges
from pybk.workers import rootless
from pybk.workers.network import NetworkOptions


def test_sub_ranges_by_name_or_uid_in_file_order(tmp_path):
    path = tmp_path / "subuid"
    path.write_text("alice:100000:65536\n# bob:1:2\nbob:200000:1000\n1001:300000:10\n"
                    "alice:400000:0\nbroken\nalice:x:1\n")
    assert sub_ranges(str(path), "alice", 1000) == [(100000, 65536)]
    assert sub_ranges(str(path), "carol", 1001) == [(300000, 10)]
    assert sub_ranges(str(path), "bob", 1001) == [(200000, 1000), (300000, 10)]
    assert sub_ranges(str(tmp_path / "missing"), "alice", 1000) == []


def test_map_arguments_put_the_user_at_0_and_the_ranges_from_1():
    assert map_arguments(1000, [(100000, 65536), (300000, 10)]) == [
        "0", "1000", "1", "1", "100000", "65536", "65537", "300000", "10"]


def test_user_namespace_detection_and_the_opaque_xattr_it_chooses():
    with open("/proc/self/uid_map") as f:
        initial = f.read().split() == ["0", "0", "4294967295"]
    assert in_user_namespace() is not initial
    assert overlay_opaque_xattr() == (
        "trusted.overlay.opaque" if initial else "user.overlay.opaque")


@pytest.mark.parametrize(("argv", "enters"), [
    (["build", "."], True), (["--root", "/x", "du"], True), (["prune"], True),
    (["history", "ls"], True), (["debug", "workers"], True), (["images", "ls"], True),
    (["debug", "rootless"], False), (["plugins"], False), (["builder", "ls"], False),
    (["build", "--help"], False), ([], False), (["--version"], False)])
def test_which_commands_enter_a_namespace(argv, enters):
    assert _needs_engine(argv, _command_at(argv)) is enters


def spec(network: bool) -> dict:
    namespaces = [{"type": "pid"}, {"type": "mount"}] + ([{"type": "network"}] if network else [])
    return {
        "process": {"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1 << 40, "soft": 1 << 40}]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro"]},
        ],
        "linux": {"namespaces": namespaces, "cgroupsPath": "/a/b",
                  "resources": {"memory": {"limit": 1}}},
    }


def test_spec_conversion_drops_cgroups_and_binds_sys_on_the_hosts_network():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    host = rootless.convert_spec(spec(network=False))
    assert "cgroupsPath" not in host["linux"] and "resources" not in host["linux"]
    assert [(m["destination"], m["type"]) for m in host["mounts"]] == [
        ("/proc", "proc"), ("/sys", "bind")]
    assert host["mounts"][1]["source"] == "/sys" and "ro" in host["mounts"][1]["options"]
    nofile = host["process"]["rlimits"][0]
    assert nofile["hard"] == nofile["soft"] == (
        1 << 40 if hard == resource.RLIM_INFINITY else min(1 << 40, hard))
    own = rootless.convert_spec(spec(network=True))
    assert [(m["destination"], m["type"]) for m in own["mounts"]] == [
        ("/proc", "proc"), ("/sys", "sysfs")]


def test_network_choice_of_a_rootless_worker(monkeypatch):
    from pybk.core import userns

    # root with rootless = true keeps every mode (it can still make veths)
    monkeypatch.setattr(userns, "in_user_namespace", lambda: False)
    for mode in ("auto", "none", "host", "bridge", "cni", "slirp4netns"):
        assert rootless.network_options(NetworkOptions(mode=mode)).mode == mode
    # in a user namespace: cni is refused; bridge and auto are left for resolve_mode
    monkeypatch.setattr(userns, "in_user_namespace", lambda: True)
    for mode in ("auto", "none", "host", "bridge", "slirp4netns"):
        assert rootless.network_options(NetworkOptions(mode=mode)).mode == mode
    with pytest.raises(ConfigError, match='networkMode = "cni" needs root'):
        rootless.network_options(NetworkOptions(mode="cni"))


def test_step_checks():
    rootless.check_step("", (), [("nofile", 16, 32)])
    with pytest.raises(BuildError, match="cgroups are not delegated.*cgroup parent '/ci'"):
        rootless.check_step("/ci", (), ())
    with pytest.raises(BuildError, match=r"resource settings \(cpu_quota\)"):
        rootless.check_step("", (("cpu_quota", 5000),), ())


def test_runtime_flags_of_a_rootless_worker():
    assert rootless.runtime_flags("runc", False) == ()
    assert rootless.runtime_flags("/usr/sbin/runc", True) == ("--rootless", "true")
    assert rootless.runtime_flags("/usr/bin/crun", True) == (
        "--rootless=true", "--cgroup-manager=disabled")
