"""The Dockerfile parser's tables kept per user: built once, loaded after, and only from a
directory that user alone can write."""

from __future__ import annotations

import os
import subprocess
import sys

from pybk.frontends.dockerfile import parser

PARSE = (
    "import logging, sys\n"
    "from lark import logger\n"
    "logger.setLevel(logging.DEBUG)\n"
    "logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format='%(message)s')\n"
    "from pybk.frontends.dockerfile.parser import parse\n"
    "print(len(parse('FROM busybox\\nRUN echo hi\\n').children))\n"
)


def _parse_elsewhere(cache_home):
    done = subprocess.run([sys.executable, "-c", PARSE], capture_output=True, text=True,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache_home)}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tables_are_built_once_then_loaded(tmp_path):
    first = _parse_elsewhere(tmp_path)
    assert "Saving grammar to cache" in first and first.rstrip().endswith("2")
    directory = tmp_path / "pybk"
    assert directory.stat().st_mode & 0o777 == 0o700
    tables = list(directory.iterdir())
    assert len(tables) == 1 and tables[0].name.startswith("dockerfile-backslash-lark")
    second = _parse_elsewhere(tmp_path)
    assert "Loading grammar from cache" in second and "Saving" not in second
    assert second.rstrip().endswith("2")
    # damaged tables: built again, the parse is the same
    tables[0].write_bytes(b"not a pickle")
    assert _parse_elsewhere(tmp_path).rstrip().endswith("2")


def test_a_directory_others_can_write_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "pybk").mkdir(mode=0o700)
    assert parser.parser_cache_dir() == str(tmp_path / "pybk")
    os.chmod(tmp_path / "pybk", 0o770)
    assert parser.parser_cache_dir() is None
    os.chmod(tmp_path / "pybk", 0o700)
    if os.geteuid() == 0:
        os.chown(tmp_path / "pybk", 65534, 65534)
        assert parser.parser_cache_dir() is None
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert parser.parser_cache_dir() is None
    out = _parse_elsewhere(tmp_path / "file")  # no cache: still parses
    assert out.rstrip().endswith("2") and "cache" not in out.lower()
