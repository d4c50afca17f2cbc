"""The rootless worker's refusals and settings, as the test user and as root (``rootless =
true``): limits refused because cgroups are not delegated, ``noProcessSandbox``, the
``fuse-overlayfs`` snapshotter, and what entering the namespace needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runc

PROCS_DOCKERFILE = """\
FROM busybox
RUN cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' > /procs; echo done > /ran
"""
NOT_DELEGATED = "cgroups are not delegated to a rootless pybk"


def context(user, text: str) -> Path:
    work = user.workdir()
    (work / "ctx").mkdir()
    (work / "ctx" / "Dockerfile").write_text(text)
    return user.give(work)


def config(user, work: Path, text: str) -> Path:
    path = work / "buildkitd.toml"
    path.write_text('[worker.oci]\ngc = false\nnetworkMode = "none"\n' + text)
    user.give(path)
    return path


def as_root(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybk.core.cli.entry", *args],
                          capture_output=True, text=True, timeout=120)


def build(work: Path, busybox: Path, *more: str) -> list[str]:
    return ["build", "--progress", "plain", "--no-cache",
            "--build-context", f"busybox=oci-layout://{busybox}", *more, str(work / "ctx")]


@pytest.mark.parametrize("who", ["user", "root"])
def test_limits_are_refused_where_cgroups_are_not_delegated(who, rootless_user, user_busybox):
    work = context(rootless_user, PROCS_DOCKERFILE)
    extra = "rootless = true\n" if who == "root" else ""

    def run(*args: str, conf: str = "") -> subprocess.CompletedProcess:
        path = config(rootless_user, work, extra + conf)
        argv = ["--root", str(work / f"store-{who}"), "--config", str(path), *args]
        return as_root(*argv) if who == "root" else rootless_user.pybk(*argv)

    plain = run(*build(work, user_busybox, "-o", f"type=local,dest={work / 'out'}"))
    assert plain.returncode == 0, plain.stderr  # the default limits are not applied
    assert (work / "out" / "ran").read_text() == "done\n"
    for conf, named in (('\n[pybk]\nstep-memory = "1GiB"\n', "[pybk] step-memory"),
                        ('defaultCgroupParent = "/ci"\n', "defaultCgroupParent")):
        refused = run(*build(work, user_busybox), conf=conf)
        assert refused.returncode != 0
        assert NOT_DELEGATED in refused.stderr and named in refused.stderr, refused.stderr
    for flags, named in ((["--cgroup-parent", "/ci"], "cgroup parent '/ci'"),
                         (["--resource", "memory=512m"], "resource settings (memory)"),
                         (["--ulimit", "nofile=1024:4294967295"], "above the hard limit")):
        refused = run(*build(work, user_busybox, *flags))
        assert refused.returncode == 1, refused.stderr
        assert named in refused.stderr, refused.stderr
    allowed = run(*build(work, user_busybox, "--ulimit", "nofile=512:1024"))
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize("who", ["user", "root"])
def test_no_process_sandbox_shows_the_engines_processes(who, rootless_user, user_busybox):
    work = context(rootless_user, PROCS_DOCKERFILE)
    seen = {}
    for sandbox in (False, True):
        path = config(rootless_user, work, f"noProcessSandbox = {str(sandbox).lower()}\n")
        out = work / f"out-{sandbox}"
        argv = ["--root", str(work / "store"), "--config", str(path),
                *build(work, user_busybox, "-o", f"type=local,dest={out}")]
        done = as_root(*argv) if who == "root" else rootless_user.pybk(*argv)
        assert done.returncode == 0, done.stderr
        seen[sandbox] = (out / "procs").read_text()
    assert "pybk.core.cli.entry" not in seen[False]
    assert "pybk.core.cli.entry" in seen[True]


@pytest.mark.parametrize("who", ["user", "root"])
def test_fuse_overlayfs_snapshotter(who, rootless_user, user_busybox):
    work = context(rootless_user, """\
FROM busybox
RUN mkdir -p /d/sub && echo x > /d/sub/a && echo kept > /kept
RUN --mount=type=bind,from=busybox,target=/b rm -rf /d && mkdir /d && echo y > /d/b && ls /b/bin/busybox > /d/seen
""")
    path = config(rootless_user, work, 'snapshotter = "fuse-overlayfs"\n')
    argv = ["--root", str(work / "store"), "--config", str(path),
            *build(work, user_busybox, "-o", f"type=local,dest={work / 'out'}")]
    done = as_root(*argv) if who == "root" else rootless_user.pybk(*argv)
    assert done.returncode == 0, done.stderr
    out = work / "out"
    assert sorted(os.listdir(out / "d")) == ["b", "seen"]
    assert (out / "kept").read_text() == "kept\n"
    assert (out / "d" / "seen").read_text() == "/b/bin/busybox\n"
    workers = ["--root", str(work / "store"), "--config", str(path), "debug", "workers", "-v"]
    listed = as_root(*workers) if who == "root" else rootless_user.pybk(*workers)
    assert "snapshotter:\t\tfuse-overlayfs" in listed.stdout.replace(" ", ""), listed.stdout


def test_entering_needs_a_subuid_range_and_newuidmap(rootless_user, tmp_path):
    missing = rootless_user.pybk("du", PATH="/nonexistent")
    assert missing.returncode == 2
    assert "newuidmap and newgidmap not found: install the uidmap package" in missing.stderr
    nobody = subprocess.run(
        [sys.executable, "-m", "pybk.core.cli.entry", "du"], capture_output=True, text=True,
        user="nobody", group="nogroup", extra_groups=[], cwd="/",
        env={**rootless_user.env(), "HOME": "/nonexistent", "USER": "nobody"}, timeout=60)
    assert nobody.returncode == 2, nobody.stderr
    assert "no subordinate id range for user nobody in /etc/subuid" in nobody.stderr
    assert "Traceback" not in nobody.stderr
    daemon = subprocess.run(
        [sys.executable, "-m", "pybk.core.cli.daemon", "--root", "/nonexistent/store",
         "--addr", "unix:///nonexistent/pybkd.sock"], capture_output=True, text=True,
        user="nobody", group="nogroup", extra_groups=[], cwd="/",
        env={**rootless_user.env(), "HOME": "/nonexistent", "USER": "nobody"}, timeout=60)
    assert daemon.returncode == 2, daemon.stderr
    assert "no subordinate id range for user nobody in /etc/subuid" in daemon.stderr
    plugins = rootless_user.pybk("plugins", PATH="/nonexistent")  # needs no namespace
    assert plugins.returncode == 0, plugins.stderr


def test_auto_falls_back_to_fuse_overlayfs_in_a_user_namespace(tmp_path, monkeypatch, capsys):
    """``auto`` where overlayfs is refused: fuse-overlayfs in a user namespace (said once per
    store), native for root."""
    from pybk.core.store import snapshotters
    from pybk.core.store.db import StoreDB

    if os.geteuid() != 0 or shutil.which("fuse-overlayfs") is None:
        reason = "needs root and fuse-overlayfs (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    refused = snapshotters.OverlayProbe(False, (), "k", "mount overlay: Operation not permitted")
    monkeypatch.setattr(snapshotters, "probe_overlay", lambda db: refused)
    db = StoreDB(tmp_path / "store")
    assert snapshotters.auto_snapshotter(db).name == "native"  # real root: no fallback
    monkeypatch.setattr(snapshotters, "in_user_namespace", lambda: True)
    chosen = snapshotters.auto_snapshotter(db)
    assert chosen.name == "fuse-overlayfs"
    assert db.get_meta("fuse-overlayfs.probe")["supported"] is True
    err = capsys.readouterr().err
    assert err.count("snapshotter fuse-overlayfs (overlayfs: mount overlay: Operation not "
                     "permitted)") == 1
    assert snapshotters.auto_snapshotter(db).name == "fuse-overlayfs"
    assert "snapshotter" not in capsys.readouterr().err  # said once
    db.close()
