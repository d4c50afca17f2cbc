"""The benchmark harness's command lines: every engine gets the same base and ends with a
tagged image; ``--pybk-base layout`` and ``--baseline DIR`` change only what they say."""

from __future__ import annotations

import importlib
import os
import stat
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def engines(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("engines")
    ran: list[list[str]] = []
    monkeypatch.setattr(module, "timed", lambda cmds, env=None: ran.extend(cmds) or 1.0)
    module.ran = ran
    yield module
    sys.modules.pop("engines", None)


def _request(engines, **changes):
    base = engines.BaseImage(name="busybox", layout="/L", ref="127.0.0.1:5000/busybox:latest")
    values = {"case": "noop", "context": "/ctx", "dockerfile": "/ctx/Dockerfile", "base": base,
              "output_dir": "/out", **changes}
    return engines.BuildRequest(**values)


def _pybk(engines, tmp_path, **kw):
    (engine,) = engines.make_engines(["pybk"], 3, **kw)
    engine.root = str(tmp_path / "store")
    return engine


def test_pybk_pulls_from_the_registry_and_tags_like_the_others(engines, tmp_path):
    _pybk(engines, tmp_path).build(_request(engines))
    (cmd,) = engines.ran
    assert cmd[cmd.index("--build-arg") + 1] == "BASE=127.0.0.1:5000/busybox:latest"
    assert cmd[cmd.index("-t") + 1] == "bench-noop"
    assert "--build-context" not in cmd and cmd[-1] == "/ctx"
    assert cmd[cmd.index("--network") + 1] == "none"


def test_export_cases_write_their_output_instead_of_a_tag(engines, tmp_path):
    _pybk(engines, tmp_path).build(_request(engines, export="zstd"))
    (cmd,) = engines.ran
    assert "-t" not in cmd
    assert cmd[cmd.index("-o") + 1] == "type=oci,dest=/out/image.tar,compression=zstd"


def test_layout_base_is_the_old_command_line(engines, tmp_path):
    _pybk(engines, tmp_path, pybk_base="layout").build(_request(engines))
    (cmd,) = engines.ran
    assert cmd[cmd.index("--build-context") + 1] == "busybox=oci-layout:///L"
    assert "BASE=busybox" in cmd and "-t" not in cmd


def test_baseline_runs_the_other_executables_with_the_same_command(engines, tmp_path):
    directory = tmp_path / "old"
    directory.mkdir()
    for name in ("pybk", "pybkd"):
        script = directory / name
        script.write_text("#!/bin/sh\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    made = engines.make_engines(["pybk", "pybkd"], 3, baseline_dir=str(directory))
    assert [e.name for e in made] == ["pybk", "pybkd", "pybk-base", "pybkd-base"]
    base = made[2]
    assert base.command == os.path.join(directory, "pybk") and not base.unavailable
    assert made[3].daemon == os.path.join(directory, "pybkd")
    base.root = str(tmp_path / "store")
    base.build(_request(engines))
    (cmd,) = engines.ran
    assert cmd[0] == str(directory / "pybk") and cmd[cmd.index("-t") + 1] == "bench-noop"
    missing = engines.make_engines(["pybk"], 3, baseline_dir=str(tmp_path / "nowhere"))
    assert "is not executable" in missing[1].unavailable


def test_replot_ratios_come_from_the_report(tmp_path, monkeypatch):
    """--replot reads a --json report: each engine's median over BuildKit's, rows without a
    BuildKit median left out, a missing median NaN."""
    import json
    import math
    import subprocess

    monkeypatch.syspath_prepend(str(BENCH))
    harness = importlib.import_module("harness")

    def cell(case, phase, engine, median, variant=None):
        return {"case": case, "variant": variant, "phase": phase, "engine": engine,
                "median": median}

    report = {"cells": [
        cell("a", "cold", "pybk", 3.0), cell("a", "cold", "pybkd", 1.0),
        cell("a", "cold", "buildkit", 2.0),
        cell("a", "warm", "pybk", None), cell("a", "warm", "pybkd", 0.1),
        cell("a", "warm", "buildkit", 0.2),
        cell("export", "cold", "pybk", 5.0, "zstd"), cell("export", "cold", "buildkit", None,
                                                          "zstd"),
    ]}
    labels, series = harness.ratio_series(report)
    assert labels == ["a cold", "a warm"]
    assert series["pybk"][0] == 1.5 and math.isnan(series["pybk"][1])
    assert series["pybkd"] == [0.5, 0.5]
    out = tmp_path / "r.json"
    out.write_text(json.dumps(report))
    png = tmp_path / "r.png"
    done = subprocess.run([sys.executable, str(BENCH / "run"), "--replot", str(out), "--plot",
                           str(png)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if "matplotlib is not installed" not in done.stderr:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
