"""The CLI's non-build commands and --check: output, exit codes, located errors, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pybk.core.cli.commands import main

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "buildkit-dockerfile"


def _write(tmp_path, text, name="Dockerfile"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_clean_exits_0(tmp_path, capsys):
    _write(tmp_path, "FROM busybox AS base\nRUN echo hi\n")
    assert main(["build", "--check", str(tmp_path)]) == 0
    assert "no warnings found" in capsys.readouterr().out


def test_check_warnings_exit_1_with_location(tmp_path, capsys):
    _write(tmp_path, "FROM busybox\nRUN echo hi\nmaintainer me\n")
    assert main(["build", "--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "MaintainerDeprecated" in err and "ConsistentInstructionCasing" in err
    assert "Dockerfile:3" in err


def test_check_is_also_call_check(tmp_path, capsys):
    _write(tmp_path, "FROM busybox\nmaintainer me\n")
    assert main(["build", "--call", "check", str(tmp_path)]) == 1


def test_parse_error_is_located_exit_2_no_traceback(tmp_path):
    _write(tmp_path, "FROM busybox\nRUN --mount=type=nope echo hi\n")
    out = subprocess.run([sys.executable, "-m", "pybk.core.cli.commands", "build", "--check",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Dockerfile:2" in out.stderr and 'unsupported mount type "nope"' in out.stderr
    assert "RUN --mount=type=nope echo hi" in out.stderr
    assert "Traceback" not in out.stderr


def test_dump_ast(tmp_path, capsys):
    path = _write(tmp_path, 'FROM busybox\nENV A=1 B="x y"\nONBUILD RUN echo hi\n')
    assert main(["debug", "dump-ast", str(path)]) == 0
    assert capsys.readouterr().out == (
        '(from "busybox")\n(env "A" "1" "=" "B" "\\"x y\\"" "=")\n(onbuild (run "echo hi"))\n')


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="conformance data not present")
def test_dump_ast_cli_matches_conformance_case(capsys):
    case = CONFORMANCE / "parser" / "testfiles" / "brimstone-consuldock"
    assert main(["debug", "dump-ast", str(case / "Dockerfile")]) == 0
    assert capsys.readouterr().out == (case / "result").read_text()


def test_dump_llb_and_bad_llb(tmp_path, capsys):
    from pybk.core import llb

    path = tmp_path / "graph.json"
    path.write_bytes(llb.scratch().file(llb.mkfile("/a", 0o644, "x")).marshal().to_bytes())
    assert main(["debug", "dump-llb", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("Digest" in json.loads(line) for line in lines)
    path.write_bytes(b'{"def": [42]}')
    assert main(["debug", "dump-llb", str(path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_debug_config_errors_exit_2(tmp_path, capsys):
    cfg = _write(tmp_path, "[worker.oci]\nmax-paralelism = 2\n", "buildkitd.toml")
    assert main(["debug", "config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "max-paralelism" in err and "did you mean" in err


def test_debug_yaml_schema_matches_docs(capsys):
    assert main(["debug", "yaml-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    docs = Path(__file__).resolve().parents[2] / "docs" / "yaml-schema.json"
    assert schema == json.loads(docs.read_text())
    assert "stages" in schema["properties"]


def test_check_goes_through_the_chosen_frontend(tmp_path, capsys):
    """--check is the frontend's lint subrequest: a YAML pipeline is checked by yaml.v0."""
    pipeline = _write(tmp_path, "version: 1\nstages:\n  app:\n    from: scratch\n",
                      "pipeline.yaml")
    assert main(["build", "--check", "-f", str(pipeline), str(tmp_path)]) == 0
    assert "no warnings found" in capsys.readouterr().out
    _write(tmp_path, "version: 1\nstages:\n  app:\n    form: scratch\n", "pipeline.yaml")
    assert main(["build", "--check", "-f", str(pipeline), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pipeline.yaml:4:" in err and "form" in err
