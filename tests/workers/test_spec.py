"""OCI runtime spec generation, hosts/resolv.conf files and the exit error message."""

from __future__ import annotations

import os

import pytest

from pybk.core.errors import BuildError, ProcessFailedError, exit_error, go_quote
from pybk.core.interfaces import ExecMount, Mount, ProcessSpec
from pybk.workers import spec as ocispec
from pybk.workers.user import ResolvedUser


def _spec(process: ProcessSpec, **kw):
    return ocispec.generate_spec(process, rootfs="/b/rootfs", user=kw.pop("user", ResolvedUser()),
                                 hosts_path="/b/hosts", resolv_conf_path="/b/resolv.conf", **kw)


def _by_dest(spec):
    return {m["destination"]: m for m in spec["mounts"]}


def test_default_spec_shape():
    spec = _spec(ProcessSpec(args=("/bin/sh", "-c", "true"), env=("A=1",), cwd="/src",
                             hostname="h"),
                 user=ResolvedUser(1000, 1000, (50,)))
    proc = spec["process"]
    assert proc["args"] == ["/bin/sh", "-c", "true"]
    assert proc["env"] == [f"PATH={ocispec.DEFAULT_PATH}", "A=1"]
    assert proc["cwd"] == "/src"
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert proc["terminal"] is False and proc["noNewPrivileges"] is False
    caps = proc["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert set(caps["bounding"]) <= {f"CAP_{c}" for c in ocispec.DEFAULT_CAPABILITIES}
    assert proc["rlimits"][0]["type"] == "RLIMIT_NOFILE"
    assert proc["rlimits"][0]["hard"] <= 1048576
    assert spec["root"] == {"path": "/b/rootfs", "readonly": False}
    assert spec["hostname"] == "h"
    ns = [n["type"] for n in spec["linux"]["namespaces"]]
    assert ns == ["pid", "ipc", "uts", "mount", "network", "cgroup"]
    mounts = _by_dest(spec)
    assert [m["destination"] for m in spec["mounts"][:7]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert mounts["/etc/hosts"]["source"] == "/b/hosts"
    assert "ro" in mounts["/etc/resolv.conf"]["options"]
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert "/proc/sys" in spec["linux"]["readonlyPaths"]
    assert spec["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "devices" not in spec["linux"]


def test_capability_sets_follow_host_mask():
    everything = (1 << len(ocispec.ALL_CAPABILITIES)) - 1
    assert ocispec.capabilities("sandbox", everything) == [
        f"CAP_{c}" for c in ocispec.DEFAULT_CAPABILITIES]
    assert len(ocispec.capabilities("insecure", everything)) == len(ocispec.ALL_CAPABILITIES)
    without_sys_resource = everything & ~(1 << ocispec.ALL_CAPABILITIES.index("SYS_RESOURCE"))
    assert "CAP_SYS_RESOURCE" not in ocispec.capabilities("insecure", without_sys_resource)


def test_insecure_spec():
    spec = _spec(ProcessSpec(args=("true",), security="insecure"))
    assert spec["linux"]["maskedPaths"] == [] and spec["linux"]["readonlyPaths"] == []
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"] == "/dev/null" for d in spec["linux"]["devices"])
    assert "rw" in _by_dest(spec)["/sys"]["options"]
    assert "seccomp" not in spec["linux"]


def test_sandbox_seccomp_profile():
    from pybk.workers import seccomp

    profile = _spec(ProcessSpec(args=("true",)))["linux"]["seccomp"]
    assert profile == seccomp.default_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"][0] == {"x86_64": "SCMP_ARCH_X86_64",
                                           "aarch64": "SCMP_ARCH_AARCH64"}.get(
        os.uname().machine, profile["architectures"][0])
    denied = {name: rule for rule in profile["syscalls"] for name in rule["names"]
              if "args" not in rule}
    assert denied["unshare"]["errnoRet"] == 1 and denied["keyctl"]["errnoRet"] == 1
    assert denied["clone3"]["errnoRet"] == 38  # ENOSYS: libc falls back to clone
    clone_masks = sorted(rule["args"][0]["value"] for rule in profile["syscalls"]
                         if rule["names"] == ["clone"])
    assert 0x10000000 in clone_masks and len(clone_masks) == 8  # CLONE_NEWUSER among them
    s390 = seccomp.default_profile("s390x")
    assert {r["args"][0]["index"] for r in s390["syscalls"] if r["names"] == ["clone"]} == {1}


def test_host_network_and_netns_path():
    host = _spec(ProcessSpec(args=("true",), network="host"))
    assert "network" not in [n["type"] for n in host["linux"]["namespaces"]]
    joined = _spec(ProcessSpec(args=("true",), network="none"), netns_path="/b/netns")
    assert {"type": "network", "path": "/b/netns"} in joined["linux"]["namespaces"]


def test_no_process_sandbox():
    spec = _spec(ProcessSpec(args=("true",)), no_process_sandbox=True)
    assert "pid" not in [n["type"] for n in spec["linux"]["namespaces"]]
    assert _by_dest(spec)["/proc"] == {"destination": "/proc", "type": "bind",
                                       "source": "/proc", "options": ["rbind"]}
    assert not any(p.startswith("/proc") for p in spec["linux"]["maskedPaths"])
    assert "/sys/firmware" in spec["linux"]["maskedPaths"]


def test_invalid_modes_and_empty_args():
    with pytest.raises(BuildError, match="unknown network mode 'bridge'"):
        _spec(ProcessSpec(args=("true",), network="bridge"))
    with pytest.raises(BuildError, match="unknown security mode"):
        _spec(ProcessSpec(args=("true",), security="privileged"))
    with pytest.raises(BuildError, match="empty args"):
        _spec(ProcessSpec(args=()))


def test_user_mounts_follow_system_mounts_in_order():
    mounts = [
        *ocispec.exec_mount_entries(ExecMount("/ctx", (Mount("bind", "/snap/1", ("rw",)),),
                                              readonly=True)),
        *ocispec.exec_mount_entries(ExecMount("/cache", (Mount(
            "overlay", "overlay", ("lowerdir=/l", "upperdir=/u", "workdir=/w")),))),
        *ocispec.exec_mount_entries(ExecMount("/ro-snap", (Mount(
            "overlay", "overlay", ("lowerdir=/l1:/l2",)),), readonly=True)),
    ]
    spec = _spec(ProcessSpec(args=("true",)), mounts=mounts)
    tail = spec["mounts"][-3:]
    assert tail[0] == {"destination": "/ctx", "type": "bind", "source": "/snap/1",
                       "options": ["rbind", "ro"]}
    assert tail[1]["options"] == ["lowerdir=/l", "upperdir=/u", "workdir=/w"]
    assert tail[2]["options"] == ["lowerdir=/l1:/l2", "ro"]


def test_hosts_file():
    assert ocispec.hosts_file("box", (("db", "10.0.0.2"), ("v6", "fd00::1"))) == (
        "127.0.0.1\tlocalhost box\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.0.0.2\tdb\n"
        "fd00::1\tv6\n")


def test_resolv_conf_per_network_mode():
    host = "search example.com\nnameserver 127.0.0.1\nnameserver 10.0.0.53\noptions ndots:2\n"
    assert ocispec.resolv_conf("host", host) == host
    assert ocispec.resolv_conf("sandbox", host) == (
        "search example.com\nnameserver 10.0.0.53\noptions ndots:2\n")
    assert ocispec.resolv_conf("none", host) == "search example.com\noptions ndots:2\n"
    assert ocispec.resolv_conf("sandbox", "nameserver 127.0.0.53\n") == (
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n")


def test_dns_config_replaces_only_what_it_sets():
    from pybk.core.config.schema import DNSConfig

    host = "search example.com\nnameserver 10.0.0.53\noptions ndots:2\n"
    only_options = DNSConfig(options=["timeout:1"])
    assert ocispec.resolv_conf("bridge", host, only_options) == (
        "nameserver 10.0.0.53\nsearch example.com\noptions timeout:1\n")
    servers = DNSConfig(nameservers=["10.1.1.1", "127.0.0.1"])
    assert ocispec.resolv_conf("bridge", host, servers) == (  # loopback: unreachable there
        "nameserver 10.1.1.1\nsearch example.com\noptions ndots:2\n")
    assert ocispec.resolv_conf("host", host, servers) == (
        "nameserver 10.1.1.1\nnameserver 127.0.0.1\nsearch example.com\noptions ndots:2\n")
    assert ocispec.resolv_conf("bridge", host, DNSConfig()) == host  # nothing set: the host's


def test_exit_error_message_matches_buildkit():
    err = exit_error(ProcessSpec(args=("/bin/sh", "-c", "echo hi")), 3)
    assert isinstance(err, BuildError) and isinstance(err, ProcessFailedError)
    assert str(err) == 'process "/bin/sh -c echo hi" did not complete successfully: exit code: 3'
    assert err.status == 3 and err.command == "/bin/sh -c echo hi"
    quoted = exit_error(["/bin/sh", "-c", 'python3 -c "print(1)"\ttab\\'], 1)
    assert str(quoted) == ('process "/bin/sh -c python3 -c \\"print(1)\\"\\ttab\\\\"'
                           ' did not complete successfully: exit code: 1')


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", '"plain"'),
    ("é ü 日本", '"é ü 日本"'),
    ("nl\nbell\a\x01\x7f", '"nl\\nbell\\a\\x01\\x7f"'),
    ("\u200b", '"\\u200b"'),
    ("\U000e0001", '"\\U000e0001"'),
])
def test_go_quote(text, expected):
    assert go_quote(text) == expected
