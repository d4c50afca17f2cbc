"""The yaml.v0 frontend end to end: frontend selection, the example pipeline built through the
CLI, ``--call targets``/``outline``, step env at run time, and the generated JSON Schema."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
from support.engine import require_runc

from pybk.core.cli.commands import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli-store"))


def _pybk(capsys, root: str, *args: str) -> tuple[int, str, str]:
    code = main(["--root", root, "build", "--progress", "quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_frontend_selection():
    from pybk.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert "yaml.v0" in pm.frontends()
    select = pm.hook.pybk_select_frontend
    assert select(filename="pipeline.yaml", directives={}) == "yaml.v0"
    assert select(filename="ci.YML", directives={}) == "yaml.v0"
    assert select(filename="build.txt", directives={"syntax": "yaml.v0"}) == "yaml.v0"
    assert select(filename="Dockerfile", directives={}) == "dockerfile.v0"
    assert select(filename="Dockerfile", directives={"syntax": "docker/dockerfile:1"}) \
        == "dockerfile.v0"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_example_pipeline_builds_like_the_example_dockerfile(cli_root, busybox_layout, tmp_path,
                                                             capsys):
    require_runc()
    outputs = {}
    for name in ("pipeline.yaml", "Dockerfile"):
        out = tmp_path / name
        root = str(tmp_path / f"store-{name}")  # fresh stores: both count "build 1"
        code, _, err = _pybk(capsys, root, "-f", str(EXAMPLES / name), "--build-context",
                             f"busybox=oci-layout://{busybox_layout}",
                             "-o", f"type=local,dest={out}", str(EXAMPLES))
        assert code == 0, err
        outputs[name] = _files(out / "app")
    assert outputs["pipeline.yaml"] == outputs["Dockerfile"]
    assert outputs["pipeline.yaml"]["greeting.txt"].strip()
    assert outputs["pipeline.yaml"]["lint.txt"] == b"ok greet.sh\n"
    assert outputs["pipeline.yaml"]["BUILD"] == b"build 1\n"


def test_example_pipeline_shares_ops_with_the_dockerfile(cli_root, busybox_layout, capsys):
    digests = {}
    for name in ("pipeline.yaml", "Dockerfile"):
        code, out, err = _pybk(capsys, cli_root, "-f", str(EXAMPLES / name), "--build-context",
                               f"busybox=oci-layout://{busybox_layout}", str(EXAMPLES),
                               "--print-llb")
        assert code == 0, err
        digests[name] = {json.loads(line)["Digest"] for line in out.splitlines()}
    # the base stage, the lint stage and the context source are the same ops (same cache)
    assert len(digests["pipeline.yaml"] & digests["Dockerfile"]) >= 5


def test_call_targets_and_outline(cli_root, tmp_path, capsys):
    (tmp_path / "p.yml").write_text(
        "version: 1\nargs: {BASE: scratch}\ntarget: app\nstages:\n"
        "  deps:\n    from: $BASE\n    args: {LEVEL: '2'}\n"
        "  app:\n    from: deps\n    steps:\n      - arg: {MODE: null}\n"
        "  extra:\n    from: scratch\n")
    code, out, err = _pybk(capsys, cli_root, "-f", str(tmp_path / "p.yml"), "--call", "targets",
                           str(tmp_path))
    assert code == 0, err
    assert out.splitlines() == ["TARGET", "deps", "app (default)", "extra"]
    code, out, err = _pybk(capsys, cli_root, "-f", str(tmp_path / "p.yml"), "--call", "outline",
                           "--build-arg", "MODE=fast", str(tmp_path))
    assert code == 0, err
    assert out.splitlines() == ["TARGET:      app", "", "BUILD ARG  VALUE", "BASE       scratch",
                                "LEVEL      2", "MODE       fast"]


def test_unknown_cli_target_is_located(cli_root, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("version: 1\nstages:\n  build:\n    from: scratch\n")
    code, _, err = _pybk(capsys, cli_root, "-f", str(tmp_path / "p.yaml"), "--target", "buidl",
                         str(tmp_path), "--print-llb")
    assert code == 2
    assert "p.yaml: unknown target stage 'buidl' (did you mean 'build'?)" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_step_env_and_stage_order_at_run_time(cli_root, busybox_layout, tmp_path, capsys):
    require_runc()
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "pipeline.yaml").write_text("""\
version: 1
target: final
stages:
  final:                       # depends on a stage defined after it
    from: busybox
    env: {KEEP: base}
    steps:
      - copy: {from: tools, src: /tool, dest: /tool}
      - run: {command: 'echo "$ONLY $KEEP" > /one', env: {ONLY: here, KEEP: changed}}
      - run: 'echo "[$ONLY] $KEEP" > /two'
      - run: |
          #!/bin/sh
          echo "script $0" > /three
  tools:
    from: busybox
    steps:
      - run: echo tool > /tool
""")
    out = tmp_path / "out"
    code, _, err = _pybk(capsys, cli_root, "-f", str(tmp_path / "ctx" / "pipeline.yaml"),
                         "--build-context", f"busybox=oci-layout://{busybox_layout}",
                         "-o", f"type=local,dest={out}", str(tmp_path / "ctx"))
    assert code == 0, err
    assert (out / "tool").read_text() == "tool\n"
    assert (out / "one").read_text() == "here changed\n"
    assert (out / "two").read_text() == "[] base\n"
    assert (out / "three").read_text() == "script /dev/pipes/EOF\n"


def test_json_schema_matches_docs_and_validates_pipelines():
    import jsonschema
    import yaml

    from pybk.frontends.yaml.cli_support import yaml_schema_command

    text = yaml_schema_command()
    schema = json.loads(text)
    assert json.loads((REPO / "docs" / "yaml-schema.json").read_text()) == schema
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = yaml.safe_load((EXAMPLES / "pipeline.yaml").read_text())
    assert not list(validator.iter_errors(example))
    spec = importlib.util.spec_from_file_location("yaml_twins", Path(__file__).with_name(
        "test_twins.py"))
    twins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twins)
    for _, pipeline, _ in twins.TWINS.values():  # the twins are valid pipelines too
        assert not list(validator.iter_errors(yaml.safe_load(textwrap.dedent(pipeline))))
    bad = {"version": 1, "stages": {"b": {"from": "x", "steps": [{"rnu": "x"}]}}}
    assert list(validator.iter_errors(bad))
