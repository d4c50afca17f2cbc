"""bench/imports.py: what a cached build imports, measured for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "imports.py"


def _pybk() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "pybk")
    return beside if os.path.exists(beside) else shutil.which("pybk") or "pybk"


def test_reports_a_cached_build_by_package(tmp_path):
    out = tmp_path / "imports.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--pybk", _pybk(), "--runs", "1",
                           "--modules", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("cached rebuild: ") and " of pybk), imports " in first
    report = json.loads(out.read_text())
    assert "pybk.core.cli.entry" in report["modules"]
    assert "pybk.core.engine.client" in report["modules"]
    # a fully cached build never loads the frontend's parser or the OCI runtime's code
    assert not {"lark", "pybk.workers.runc"} & set(report["modules"])
    assert report["groups_us"]["pybk.core.llb"] > 0 and report["totals_us"][0] > 0
    assert "| pybk.core.llb |" in done.stdout


def test_refuses_an_executable_that_is_not_a_python_script(tmp_path):
    shim = tmp_path / "pybk"
    shim.write_text("#!/bin/sh\nexec true\n")
    shim.chmod(0o755)
    done = subprocess.run([sys.executable, str(SCRIPT), "--pybk", str(shim)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is not a Python script" in done.stderr


def test_a_rebuild_from_an_unchanged_registry_tag_loads_no_async_http_stack(tmp_path):
    """The build bench/run times: FROM a local registry, RUN, -t. The tag is resolved again
    with one HEAD written on a socket (its manifest is in the store): httpx, httpcore, h11,
    anyio and http.client stay out, and so do attrs and cattrs (the value classes are model classes), the
    Dockerfile parser and the OCI runtime's code."""
    out = tmp_path / "imports.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--pybk", _pybk(), "--runs", "1",
                           "--registry", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cached rebuild FROM a registry tag, with -t: ")
    report = json.loads(out.read_text())
    modules = report["modules"]
    # every package it imports has a written reason (bench/import_reasons.py)
    assert report["unexplained"] == []
    assert {"pybk.core.registry.probe", "pybk.core.registry.client",
            "pybk.exporters.image"} <= set(modules)
    assert not {"httpx", "httpcore", "h11", "anyio", "http.client", "email", "attr", "attrs",
                "cattrs", "click", "trio", "lark", "pybk.workers.runc"} & set(modules)
