"""``pybk debug dump-llb --dot``: the definition as a Graphviz graph that ``dot`` renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest


def _dot() -> str:
    found = shutil.which("dot")
    if found is None:
        reason = "Graphviz's dot is not installed (apt-get install graphviz)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: required)")
        pytest.skip(reason)
    return found


def _pybk(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybk.core.cli.entry", "--addr", "", *args],
                          input=stdin, capture_output=True, timeout=120)


def test_dump_llb_dot_renders_with_graphviz(tmp_path):
    dot = _dot()
    (tmp_path / "Dockerfile").write_text(
        'FROM scratch AS base\nCOPY a.txt /a.txt\n'
        'FROM base\nCOPY --from=base "/a.txt" /b.txt\n')
    (tmp_path / "a.txt").write_text("a\n")
    printed = _pybk("--root", str(tmp_path / "store"), "build", "--print-llb", str(tmp_path))
    assert printed.returncode == 0, printed.stderr.decode()
    (tmp_path / "def.json").write_bytes(printed.stdout)
    lines = _pybk("debug", "dump-llb", str(tmp_path / "def.json"))
    graph = _pybk("debug", "dump-llb", "--dot", str(tmp_path / "def.json"))
    assert graph.returncode == 0, graph.stderr.decode()
    text = graph.stdout.decode()
    assert text.startswith("digraph llb {")
    digests = [line.split('"Digest":"')[1][:71] for line in lines.stdout.decode().splitlines()]
    for digest in digests:  # every op is a node, labelled with its short digest
        assert f'"{digest}" [label=' in text and digest[7:19] in text
    assert 'copy /a.txt /b.txt' in text and "local://context" in text
    # the same graph from stdin
    assert _pybk("debug", "dump-llb", "--dot", stdin=printed.stdout).stdout.decode() == text
    svg = subprocess.run([dot, "-Tsvg"], input=graph.stdout, capture_output=True, timeout=60)
    assert svg.returncode == 0, svg.stderr.decode()
    rendered = svg.stdout.decode()
    assert rendered.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in rendered
    assert len(re.findall(r'class="node"', rendered)) == len(digests)
    edges = text.count(" -> ")
    assert edges >= len(digests) - 1 and len(re.findall(r'class="edge"', rendered)) == edges


def test_dump_llb_dot_escapes_labels():
    from pybk.core.llb.dump import _escape

    assert _escape('echo "a\\b"\nnext') == 'echo \\"a\\\\b\\"\\nnext'
    assert _escape("x" * 80).endswith("…") and len(_escape("x" * 80)) == 60


def test_dump_llb_reads_its_own_lines_and_refuses_a_tampered_one(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\n")
    (tmp_path / "a.txt").write_text("a\n")
    printed = _pybk("--root", str(tmp_path / "store"), "build", "--print-llb", str(tmp_path))
    again = _pybk("debug", "dump-llb", stdin=printed.stdout)
    assert again.returncode == 0 and again.stdout == printed.stdout  # lines in, same lines out
    tampered = printed.stdout.replace(b'"dest":"/a.txt"', b'"dest":"/b.txt"', 1)
    refused = _pybk("debug", "dump-llb", "--dot", stdin=tampered)
    assert refused.returncode == 2 and b"line 2: the op hashes to sha256:" in refused.stderr
    assert b"Traceback" not in refused.stderr
