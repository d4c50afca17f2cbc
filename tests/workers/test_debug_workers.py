"""``pybk debug workers`` (``buildctl debug workers``): embedded and through ``pybkd``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pybk.core.cli.workers import format_size, print_workers
from pybk.core.config.gc import PruneRule
from pybk.core.platform import host_platform

CLIENT = [sys.executable, "-c", "import sys; from pybk.core.cli.entry import main; sys.exit(main())"]
CONFIG = ('[worker.oci]\nnetworkMode = "none"\nsnapshotter = "native"\n'
          'platforms = ["linux/amd64", "linux/arm64/v8"]\n'
          '[worker.oci.labels]\nteam = "build"\n'
          '[[worker.oci.gcpolicy]]\nkeepDuration = "48h"\nfilters = ["type==source.local"]\n'
          'maxUsedSpace = 512000000\n'
          '[[worker.oci.gcpolicy]]\nall = true\nreservedSpace = 1000000\n')


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}
    return {**env, **extra}


def _pybk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, *args], capture_output=True, text=True, env=_env(),
                          timeout=120)


def test_format_size_is_buildkits_g():
    assert [format_size(n) for n in (0, 999, 1000, 1500, 512 * 10**6, 5368709120,
                                     10**10, 999_999)] == [
        "0B", "999B", "1kB", "1.5kB", "512MB", "5.36870912GB", "10GB", "999.999kB"]


ROWS = [{"id": "abcdefghijklmnopqrstuvwxy", "platforms": ["linux/amd64", "linux/arm64"],
         "version": "pybk 0.1.0", "labels": {"z": "1", "org.mobyproject.buildkit.worker."
                                             "executor": "oci"},
         "gc_policy": [PruneRule(filters=("type==source.local", "type==exec.cachemount"),
                                 keep_duration=172800.0, max_used_space=512 * 10**6),
                       PruneRule(all=True, reserved_space=10**10, min_free_space=2 * 10**10)]},
        {"id": "w2", "platforms": ["linux/s390x"], "version": "pybk 0.1.0", "labels": {},
         "gc_policy": []}]


def test_table_and_verbose_layout(capsys):
    print_workers(ROWS, sys.stdout, verbose=False)
    assert capsys.readouterr().out == (
        "ID\t\t\t\tPLATFORMS\n"
        "abcdefghijklmnopqrstuvwxy\tlinux/amd64,linux/arm64\n"
        "w2\t\t\t\tlinux/s390x\n")
    print_workers(ROWS, sys.stdout, verbose=True)
    assert capsys.readouterr().out == (
        "ID:\t\tabcdefghijklmnopqrstuvwxy\n"
        "Platforms:\tlinux/amd64,linux/arm64\n"
        "BuildKit:\tpybk 0.1.0\n"
        "Labels:\n"
        "\torg.mobyproject.buildkit.worker.executor:\toci\n"
        "\tz:\t\t\t\t\t\t1\n"
        "GC Policy rule#0:\n"
        "\tAll:\t\t\tfalse\n"
        "\tFilters:\t\ttype==source.local type==exec.cachemount\n"
        "\tKeep duration:\t\t48h0m0s\n"
        "\tMaximum used space:\t512MB\n"
        "GC Policy rule#1:\n"
        "\tAll:\t\t\ttrue\n"
        "\tReserved space:\t\t10GB\n"
        "\tMinimum free space:\t20GB\n"
        "\n"
        "ID:\t\tw2\n"
        "Platforms:\tlinux/s390x\n"
        "BuildKit:\tpybk 0.1.0\n"
        "Labels:\n"
        "\n")


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "buildkitd.toml"
    path.write_text(text)
    return path


def test_embedded(tmp_path):
    root, config = tmp_path / "store", _config(tmp_path)
    done = _pybk("--root", str(root), "--config", str(config), "debug", "workers")
    assert done.returncode == 0, done.stderr
    worker_id = (root / "workers" / "oci" / "workerid").read_text()
    assert done.stdout == f"ID\t\t\t\tPLATFORMS\n{worker_id}\tlinux/amd64,linux/arm64\n"
    verbose = _pybk("--root", str(root), "--config", str(config), "debug", "workers", "-v")
    assert verbose.returncode == 0, verbose.stderr
    lines = verbose.stdout.splitlines()
    assert lines[:4] == [f"ID:\t\t{worker_id}", "Platforms:\tlinux/amd64,linux/arm64",
                         "BuildKit:\tpybk 0.1.0", "Labels:"]
    labels = dict(line.strip().split(":\t", 1) for line in lines[4:lines.index("GC Policy "
                                                                               "rule#0:")])
    assert {k: v.strip() for k, v in labels.items()} == {
        "org.mobyproject.buildkit.worker.executor": "oci",
        "org.mobyproject.buildkit.worker.hostname": os.uname().nodename,
        "org.mobyproject.buildkit.worker.network": "none",
        "org.mobyproject.buildkit.worker.oci.process-mode": "sandbox",
        "org.mobyproject.buildkit.worker.snapshotter": "native",
        "team": "build"}
    assert verbose.stdout.endswith(
        "GC Policy rule#0:\n\tAll:\t\t\tfalse\n\tFilters:\t\ttype==source.local\n"
        "\tKeep duration:\t\t48h0m0s\n\tMaximum used space:\t512MB\n"
        "GC Policy rule#1:\n\tAll:\t\ttrue\n\tReserved space:\t1MB\n\n")


def test_defaults_host_platform_and_no_gc(tmp_path):
    config = _config(tmp_path, "[worker.oci]\ngc = false\n")
    done = _pybk("--root", str(tmp_path / "s"), "--config", str(config), "debug", "workers",
                 "-v")
    assert done.returncode == 0, done.stderr
    assert f"Platforms:\t{host_platform()}\n" in done.stdout
    assert "GC Policy" not in done.stdout


def test_every_worker_disabled(tmp_path):
    config = _config(tmp_path, "[worker.oci]\nenabled = false\n")
    done = _pybk("--root", str(tmp_path / "s"), "--config", str(config), "debug", "workers")
    assert done.returncode == 2
    assert done.stderr == ("error: no worker to build with: every worker is disabled (oci; "
                           "e.g. [worker.oci] enabled = false)\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="pybkd recovers the store as root")
def test_through_pybkd_same_as_embedded(tmp_path):
    root, config = tmp_path / "store", _config(tmp_path)
    sock, log = tmp_path / "run" / "pybkd.sock", tmp_path / "pybkd.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                                 str(root), "--addr", f"unix://{sock}", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_env())
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        for args in (("debug", "workers"), ("debug", "workers", "--verbose")):
            remote = _pybk("--addr", f"unix://{sock}", *args)
            local = _pybk("--root", str(root), "--config", str(config), *args)
            assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
            assert remote.stdout == local.stdout
            assert (root / "workers" / "oci" / "workerid").read_text() in remote.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
