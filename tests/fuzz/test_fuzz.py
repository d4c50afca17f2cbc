"""A fast, deterministic subset of bench/fuzz.py: 200 inputs per target (derandomized), and
every input must be accepted or rejected with a pybk error (located for Dockerfile, YAML and
buildkitd.toml). ``python bench/fuzz.py`` runs 10,000 per target."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"


def _load():
    spec = importlib.util.spec_from_file_location("pybk_bench_fuzz", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load()


@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_target_never_crashes(target):
    report = fuzz.fuzz(target, 200, derandomize=True)
    assert report.examples == 200
    assert not report.crashes, "\n\n".join(
        f"{sig}\ninput: {data!r}\n{tb}" for sig, (data, tb) in report.crashes.items())
