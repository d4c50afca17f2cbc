"""Mistakes at the command line's borders (files it reads or writes, --root, -o dest, a
Dockerfile's URL, a .dockerignore pattern) are one ``error: …`` line on stderr, exit 2, no
traceback."""

from __future__ import annotations

import json
import os

import pytest

from pybk.core.cli.commands import main

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (the store's mounts)")


def _fails_cleanly(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def ctx(tmp_path):
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    (d / "hello.txt").write_text("hi\n")
    return d


def _build(tmp_path, ctx, *extra: str) -> list[str]:
    return ["--root", str(tmp_path / "store"), "build", "--progress", "quiet", *extra, str(ctx)]


def test_dump_ast_of_a_missing_file(tmp_path, capsys):
    _fails_cleanly(capsys, ["debug", "dump-ast", str(tmp_path / "nope")],
                   "cannot read", "No such file or directory")


def test_dump_ast_of_a_directory(tmp_path, capsys):
    _fails_cleanly(capsys, ["debug", "dump-ast", str(tmp_path)], "cannot read",
                   "Is a directory")


def test_root_naming_a_regular_file(tmp_path, capsys):
    regular = tmp_path / "file"
    regular.write_text("x")
    _fails_cleanly(capsys, ["--root", str(regular), "du"], "--root", "is not a directory")
    assert regular.read_text() == "x"


def test_root_where_nothing_can_be_created(capsys):
    _fails_cleanly(capsys, ["--root", "/proc/self", "du"], "--root", "/proc/self",
                   "cannot make a store there")


def test_local_dest_where_nothing_can_be_created(tmp_path, ctx, capsys):
    _fails_cleanly(capsys, _build(tmp_path, ctx, "-o", "type=local,dest=/proc/nope"),
                   "--output", "/proc/nope", "not writable")


@needs_root
def test_metadata_file_in_a_missing_directory(tmp_path, ctx, capsys):
    out = tmp_path / "out"
    err = _fails_cleanly(capsys, _build(tmp_path, ctx, "-o", f"type=local,dest={out}",
                                        "--metadata-file", "/missing/dir/m.json"),
                         "--metadata-file", "the build succeeded", "/missing/dir/m.json",
                         "could not be written")
    assert (out / "hello.txt").read_text() == "hi\n", err
    good = tmp_path / "m.json"
    assert main(_build(tmp_path, ctx, "-o", f"type=local,dest={out}",
                       "--metadata-file", str(good))) == 0
    assert isinstance(json.loads(good.read_text()), dict)


def test_add_of_a_malformed_url(tmp_path, ctx, capsys):
    (ctx / "Dockerfile").write_text("FROM scratch\nADD http://[::1 /x\n")
    _fails_cleanly(capsys, _build(tmp_path, ctx), "Dockerfile:2", "invalid URL",
                   "http://[::1")


def test_dockerignore_with_a_malformed_pattern(tmp_path, ctx, capsys):
    (ctx / ".dockerignore").write_text("*.log\n[\n")
    _fails_cleanly(capsys, _build(tmp_path, ctx), ".dockerignore:2",
                   "syntax error in pattern: [")
