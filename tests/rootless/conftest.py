"""A test user of its own for the rootless tests: made with ``useradd``, given a subordinate
id range at a base no other entry uses, allowed through the directories between it and this
Python (ACLs), and removed with its ranges and ACLs at teardown.

Skipped (with the reason) when this is not root or the kernel refuses user namespaces;
under ``CI=true`` those fail instead.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cachefixtures import cache_azurite, cache_gha  # noqa: F401

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
#: ids each test user gets, mapped to 1..COUNT in its namespace
COUNT = 65536
#: the tests' config: no automatic GC, no network for RUN steps
CONFIG = '[worker.oci]\ngc = false\nnetworkMode = "none"\n'
REPO = Path(__file__).resolve().parents[2]


def skip_or_fail(reason: str) -> None:
    """Skip; under ``CI=true`` fail: CI must run these tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _ranges_end(*paths: str) -> int:
    end = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    end = max(end, int(parts[1]) + int(parts[2]))
    return end


def _drop_lines(path: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        lines = Path(path).read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.split(":", 1)[0] != name]
        if kept != lines:
            Path(path).write_text("".join(kept))


def _untraversable(path: Path) -> list[Path]:
    """The directories from / to ``path`` that others cannot search."""
    out = []
    for parent in [*reversed(path.parents), path]:
        if parent.is_dir() and not os.stat(parent).st_mode & 0o001:
            out.append(parent)
    return out


def _drop_acl(who: str, path: Path) -> None:
    """Remove ``who``'s ACL entry; with no named entry left, the whole ACL (the mask too), so
    the path is as it was."""
    subprocess.run(["setfacl", "-x", f"u:{who}", str(path)], check=False)
    left = subprocess.run(["getfacl", "-c", "-p", str(path)], capture_output=True, text=True)
    named = [line for line in left.stdout.splitlines()
             if line.split(":")[0] in ("user", "group") and line.split(":")[1]]
    if left.returncode == 0 and not named:
        subprocess.run(["setfacl", "-b", str(path)], check=False)


class RootlessUser:
    """The test user: runs pybk as itself (``pybk``), owns directories made by ``workdir``."""

    def __init__(self, name: str, home: Path):
        entry = pwd.getpwnam(name)
        self.name, self.uid, self.gid, self.home = name, entry.pw_uid, entry.pw_gid, home
        self.config = home / "buildkitd.toml"
        self.config.write_text(CONFIG)
        os.chown(self.config, self.uid, self.gid)
        self._dirs: list[Path] = []

    def env(self, **extra: str) -> dict[str, str]:
        home = str(self.home)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": home, "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
               "XDG_DATA_HOME": f"{home}/.local/share", "XDG_CONFIG_HOME": f"{home}/.config",
               "XDG_CACHE_HOME": f"{home}/.cache", "PYBK_CONFIG": str(self.config),
               "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(extra)
        return env

    def command(self, argv: list[str], *, cwd: Path | None = None,
                timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        """``argv`` as this user (its uid, gid and no other group)."""
        return subprocess.run(argv, cwd=cwd or self.home, env=self.env(**extra),
                              user=self.uid, group=self.gid, extra_groups=[],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def pybk(self, *args: str, cwd: Path | None = None, timeout: float = 120,
             **extra: str) -> subprocess.CompletedProcess:
        """``python -m pybk.core.cli.entry ARGS`` as this user."""
        return self.command([sys.executable, "-m", "pybk.core.cli.entry", *args], cwd=cwd,
                            timeout=timeout, **extra)

    def workdir(self, prefix: str = "pybk-rootless-") -> Path:
        """A fresh directory this user owns (removed at teardown)."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o755)
        self._dirs.append(path)
        return path

    def give(self, path: Path) -> Path:
        """Make ``path`` (a tree) this user's."""
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), self.uid, self.gid)
        os.lchown(path, self.uid, self.gid)
        return path

    def cleanup(self) -> None:
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def rootless_user() -> Iterator[RootlessUser]:
    if os.geteuid() != 0:
        skip_or_fail("the rootless tests make a test user: run them as root")
    missing = [tool for tool in ("useradd", "userdel", "newuidmap", "newgidmap", "setfacl",
                                 "unshare") if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"missing {', '.join(missing)} (scripts/setup.sh installs them)")
    name = f"pybkrt{os.getpid() % 100000}"
    home = Path(tempfile.mkdtemp(prefix="pybk-rootless-home-", dir="/tmp"))
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", name], check=True,
                   capture_output=True)
    acls: list[tuple[str, Path]] = []
    try:
        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        os.chmod(home, 0o700)
        for path in (SUBUID, SUBGID):  # useradd may have given it a range: ours only
            _drop_lines(path, name)
        base = -(-max(_ranges_end(SUBUID, SUBGID), 1 << 30) // COUNT) * COUNT
        for path in (SUBUID, SUBGID):
            with open(path, "a") as f:
                f.write(f"{name}:{base}:{COUNT}\n")
        needed = {*_untraversable(Path(sys.executable).resolve()),
                  *_untraversable(REPO), *_untraversable(Path(os.path.realpath(REPO)))}
        for path in os.environ.get("PYTHONPATH", "").split(os.pathsep):
            if path:
                needed.update(_untraversable(Path(path)))
        for path in sorted(needed):  # nobody too: it has no subordinate ids to refuse
            for who in (name, "nobody"):
                subprocess.run(["setfacl", "-m", f"u:{who}:x", str(path)], check=True)
                acls.append((who, path))
        for device in ("/dev/fuse", "/dev/net/tun"):  # fuse-overlayfs, slirp4netns
            if os.path.exists(device) and not os.stat(device).st_mode & 0o006:
                subprocess.run(["setfacl", "-m", f"u:{name}:rw", device], check=True)
                acls.append((name, Path(device)))
        user = RootlessUser(name, home)
        probe = user.command(["unshare", "-U", "true"])
        if probe.returncode != 0:
            skip_or_fail(f"the kernel refuses user namespaces: {probe.stderr.strip()}")
        yield user
        user.cleanup()
    finally:
        for who, path in acls:
            _drop_acl(who, path)
        for _ in range(50):  # a process of the user may still be exiting
            if subprocess.run(["userdel", name], capture_output=True).returncode in (0, 6):
                break
            time.sleep(0.1)
        for path in (SUBUID, SUBGID):
            _drop_lines(path, name)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def user_busybox(rootless_user: RootlessUser) -> Path:
    """The busybox OCI layout, readable by the test user."""
    from support.busybox import build_busybox_layout

    directory = rootless_user.workdir("pybk-rootless-busybox-")
    return rootless_user.give(build_busybox_layout(directory / "layout"))
