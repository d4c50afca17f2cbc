"""``pybk debug rootless``: run as root and as an ordinary user made by the test (with and
without a subordinate id range), the lines and the exit code match this machine."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support.testuser import TestUser, missing_tools

COMMAND = [sys.executable, "-m", "pybk.core.cli.commands", "debug", "rootless"]
CGROUP_V1 = ("missing  cgroups: cgroup v1, no delegation: resource limits refused rootless; "
             "fix: boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2) and delegate "
             "controllers to the user (systemd: Delegate=yes for user@.service)")


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() == 0 and not missing_tools():
        return
    reason = ("needs root (to make a user)" if os.geteuid() != 0 else
              f"{', '.join(missing_tools())} not found (scripts/setup.sh installs acl)")
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _user(subids: bool) -> Iterator[TestUser]:
    with TestUser(subids=subids) as made:
        yield made


@pytest.fixture
def user_with_range() -> Iterator[TestUser]:
    yield from _user(True)


@pytest.fixture
def user_without_range() -> Iterator[TestUser]:
    yield from _user(False)


def _root_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYBK_REAL_UID", "XDG_RUNTIME_DIR", "PYBK_ROOT")}


def _has_range(name: str, path: str) -> bool:
    with open(path) as f:
        return any(ln.split(":")[0] in (name, "0") and int(ln.split(":")[2]) >= 65536
                   for ln in f if ln.count(":") == 2)


def _lines(text: str) -> dict[str, str]:
    """Each check's line by its name (``ok       NAME: ...``)."""
    return {m.group(2): m.group(0) for m in re.finditer(r"^(ok|missing) +([^:]+): .*$", text,
                                                         re.M)}


def _common(lines: dict[str, str]) -> None:
    """What holds on this machine for root and an ordinary user alike."""
    assert lines["user namespaces"].startswith("ok       user namespaces: "
                                               "user.max_user_namespaces = ")
    assert lines["user namespaces"].endswith("; a child entered one")
    assert lines["newuidmap"] == "ok       newuidmap: /usr/bin/newuidmap, setuid root"
    assert lines["newgidmap"] == "ok       newgidmap: /usr/bin/newgidmap, setuid root"
    assert lines["OCI runtime"].startswith("ok       OCI runtime: runc (")
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        assert lines["cgroups"] == CGROUP_V1


def test_as_root(tmp_path):
    done = subprocess.run(COMMAND, capture_output=True, text=True, env=_root_env(),
                          timeout=120)
    lines = _lines(done.stdout)
    _common(lines)
    ready = _has_range("root", "/etc/subuid") and _has_range("root", "/etc/subgid")
    assert done.returncode == (0 if ready else 1), done.stdout + done.stderr
    if not ready:
        assert re.search(r"^missing  /etc/sub[ug]id: no range for root; fix: usermod "
                         r"--add-subuids (\d+)-\d+ --add-subgids \1-\d+ root \(as root\)$",
                         done.stdout, re.M), done.stdout
        assert done.stdout.endswith("rootless builds cannot run as root: fix "
                                    + ", ".join(n for n in ("/etc/subuid", "/etc/subgid")
                                                if not _has_range("root", n)) + "\n")
    assert lines["slirp4netns"] == ("ok       slirp4netns: /usr/bin/slirp4netns, "
                                    "/dev/net/tun usable")
    assert lines["XDG_RUNTIME_DIR"].startswith("missing  XDG_RUNTIME_DIR: not set")
    assert "\nnetworkMode auto: slirp4netns\n" in done.stdout

    as_json = subprocess.run([*COMMAND, "--format", "json"], capture_output=True, text=True,
                             env=_root_env(), timeout=120)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == done.returncode and report["ready"] is ready
    assert report["user"] == "root" and report["uid"] == 0
    assert report["network"] == "slirp4netns"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["newuidmap"] == {"name": "newuidmap", "status": "ok", "needed": True,
                                   "detail": "/usr/bin/newuidmap, setuid root", "fix": ""}
    assert checks["cgroups"]["needed"] is False
    assert [c["name"] for c in report["checks"]] == list(lines)


def test_a_bad_format_is_a_usage_error():
    done = subprocess.run([*COMMAND, "--format", "yaml"], capture_output=True, text=True,
                          env=_root_env(), timeout=60)
    assert done.returncode == 2
    assert done.stderr == "error: --format: unknown format 'yaml' (text or json)\n"
    assert done.stdout == ""


def _device_line(path: str) -> str:
    """How the check names a device node this user may not open."""
    mode = os.stat(path).st_mode
    return "usable" if mode & stat.S_IROTH and mode & stat.S_IWOTH else "not readable"


def test_as_a_user_with_a_subordinate_range(user_with_range):
    user = user_with_range
    done = user.run(COMMAND)
    lines = _lines(done.stdout)
    _common(lines)
    first, count = user.subids
    assert lines["/etc/subuid"] == f"ok       /etc/subuid: {user.name} has " \
                                   f"{first}-{first + count - 1}"
    assert lines["/etc/subgid"] == f"ok       /etc/subgid: {user.name} has " \
                                   f"{first}-{first + count - 1}"
    assert lines["overlayfs in a user namespace"] == ("ok       overlayfs in a user namespace:"
                                                      " a child mounted one")
    if _device_line("/dev/net/tun") != "usable":
        assert lines["slirp4netns"] == (
            "missing  slirp4netns: /dev/net/tun is not readable and writable by this user: "
            "RUN steps would use the host's network; fix: chmod 0666 /dev/net/tun")
        assert "\nnetworkMode auto: host\n" in done.stdout
    if _device_line("/dev/fuse") != "usable":
        assert lines["fuse-overlayfs"] == (
            "missing  fuse-overlayfs: /usr/bin/fuse-overlayfs, but /dev/fuse is not readable "
            "and writable by this user; fix: modprobe fuse; chmod 0666 /dev/fuse")
    assert lines["XDG_RUNTIME_DIR"] == (
        f"missing  XDG_RUNTIME_DIR: not set and no /run/user/{user.uid}: the daemon's socket "
        "goes in the store; fix: log in through systemd-logind (pam_systemd), or export "
        "XDG_RUNTIME_DIR")
    assert "\nsnapshotter auto: overlayfs\n" in done.stdout
    assert done.stdout.endswith(f"rootless builds can run as {user.name}\n")
    assert done.returncode == 0, done.stdout + done.stderr

    with_runtime = user.run(COMMAND, env=user.env(XDG_RUNTIME_DIR=f"{user.home}/run"))
    assert _lines(with_runtime.stdout)["XDG_RUNTIME_DIR"] == (
        f"ok       XDG_RUNTIME_DIR: {user.home}/run: the daemon's socket goes in "
        f"{user.home}/run/pybk")


def test_as_a_user_without_a_subordinate_range(user_without_range):
    user = user_without_range
    done = user.run(COMMAND)
    assert done.returncode == 1, done.stdout + done.stderr
    fix = re.search(r"^missing  /etc/subuid: no range for (\S+); fix: usermod --add-subuids "
                    r"(\d+)-(\d+) --add-subgids \2-\3 (\S+) \(as root\)$", done.stdout, re.M)
    assert fix and fix.group(1) == fix.group(4) == user.name, done.stdout
    assert int(fix.group(3)) - int(fix.group(2)) + 1 == 65536
    assert f"\nmissing  /etc/subgid: no range for {user.name}; fix: usermod" in done.stdout
    assert done.stdout.endswith(f"rootless builds cannot run as {user.name}: fix "
                                "/etc/subuid, /etc/subgid\n")
    report = json.loads(user.run([*COMMAND, "--format", "json"]).stdout)
    assert report["ready"] is False and report["user"] == user.name
    assert {c["name"] for c in report["checks"] if c["status"] == "missing" and c["needed"]} \
        == {"/etc/subuid", "/etc/subgid"}
