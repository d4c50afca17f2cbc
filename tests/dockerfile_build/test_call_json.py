"""``pybk build --call outline|targets,format=json``: the JSON of BuildKit's ``frontend.outline``
and ``frontend.targets`` subrequests, as buildx prints it (``json.MarshalIndent`` with two
spaces, a newline after). The text format is unchanged; an unknown ``format=`` is a usage
error."""

from __future__ import annotations

import base64
import json

import pytest

from pybk.core.cli.commands import main

DOCKERFILE = ("ARG BASE=busybox\n"
              "# VERSION the version to build\n"
              "ARG VERSION=1.0\n"
              "\n"
              "# build compiles <the app> & its tests\n"
              "FROM ${BASE} AS build\n"
              "ARG VERSION\n"
              "# FLAVOUR which flavour to make\n"
              "ARG FLAVOUR=plain\n"
              "RUN echo $VERSION $FLAVOUR\n"
              "\n"
              "FROM --platform=linux/amd64 build AS release\n"
              "ARG CHANNEL\n")


def _location(line: int) -> dict:
    return {"ranges": [{"start": {"line": line}, "end": {"line": line}}]}


@pytest.fixture
def context(tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(DOCKERFILE)
    return tmp_path / "ctx"


def _call(capsys, tmp_path, *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_outline_json(context, tmp_path, capsys):
    code, out, err = _call(capsys, tmp_path, "--call", "outline,format=json",
                           "--build-arg", "FLAVOUR=spicy", str(context))
    assert code == 0, err
    assert out.endswith("}\n") and out.startswith('{\n  "name": "release",\n')
    assert json.loads(out) == {
        "name": "release",
        "args": [
            {"name": "BASE", "value": "busybox", "location": _location(1)},
            {"name": "VERSION", "description": "the version to build", "value": "1.0",
             "location": _location(3)},
            {"name": "FLAVOUR", "description": "which flavour to make", "value": "spicy",
             "location": _location(9)},
            {"name": "CHANNEL", "location": _location(13)},
        ],
        "sources": [base64.b64encode(DOCKERFILE.encode()).decode()],
    }


def test_outline_json_of_a_target_with_its_description(context, tmp_path, capsys):
    code, out, _ = _call(capsys, tmp_path, "--call", "outline,format=json", "--target", "build",
                         str(context))
    assert code == 0
    outline = json.loads(out)
    assert (outline["name"], outline["description"]) == ("build", "compiles <the app> & its tests")
    assert [a["name"] for a in outline["args"]] == ["BASE", "VERSION", "FLAVOUR"]
    # Go's encoder escapes <, > and & in strings
    assert '"compiles \\u003cthe app\\u003e \\u0026 its tests"' in out


def test_targets_json(context, tmp_path, capsys):
    code, out, _ = _call(capsys, tmp_path, "--call", "targets,format=json", str(context))
    assert code == 0
    assert out.startswith('{\n  "targets": [\n    {\n      "name": "build",\n')
    assert json.loads(out) == {
        "targets": [
            {"name": "build", "description": "compiles <the app> & its tests",
             "base": "${BASE}", "location": _location(6)},
            {"name": "release", "default": True, "base": "build", "platform": "linux/amd64",
             "location": _location(12)},
        ],
        "sources": [base64.b64encode(DOCKERFILE.encode()).decode()],
    }


def test_text_format_is_the_default_and_unchanged(context, tmp_path, capsys):
    code, text, _ = _call(capsys, tmp_path, "--call", "targets", str(context))
    assert code == 0
    code, same, _ = _call(capsys, tmp_path, "--call", "targets,format=text", str(context))
    assert code == 0 and same == text
    assert [line.split(None, 1) for line in text.splitlines()] == [
        ["TARGET", "DESCRIPTION"], ["build", "compiles <the app> & its tests"],
        ["release", "(default)"]]


@pytest.mark.parametrize(("value", "message"), [
    ("outline,format=yaml", "invalid value 'yaml': expected one of text, json"),
    ("targets,format=", "invalid value '': expected one of text, json"),
    ("outline,colour=red", "invalid field 'colour=red'"),
    ("outline,targets", "one function name only"),
    ("check,format=json", "format=json is for outline and targets, not check"),
    ("build,format=json", "format=json is for outline and targets, not build"),
])
def test_bad_call_values_exit_2(context, tmp_path, capsys, value, message):
    code, out, err = _call(capsys, tmp_path, "--call", value, str(context))
    assert code == 2 and out == ""
    assert err.startswith("error:") and "--call" in err and message in err
    assert "Traceback" not in err


def test_outline_json_lists_the_secrets_and_ssh_the_target_mounts(tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS deps\n"
        "RUN --mount=type=secret,id=npmrc,required=true --mount=type=ssh true\n"
        "FROM busybox AS other\n"
        "RUN --mount=type=secret,id=unused true\n"
        "FROM deps\n"
        "RUN --mount=type=secret,target=/run/secrets/tok --mount=type=ssh,id=gh,required true\n"
        "RUN --mount=type=secret,id=npmrc true\n")
    code, out, _ = _call(capsys, tmp_path, "--call", "outline,format=json", str(tmp_path))
    assert code == 0
    outline = json.loads(out)
    assert "name" not in outline and "args" not in outline  # an unnamed target, no ARGs
    assert outline["secrets"] == [
        {"name": "npmrc", "required": True, "location": _location(2)},
        {"name": "tok", "location": _location(6)}]
    assert outline["ssh"] == [{"name": "default", "location": _location(2)},
                              {"name": "gh", "required": True, "location": _location(6)}]


def test_a_frontend_without_json_answers_is_refused(tmp_path, capsys):
    (tmp_path / "p.yml").write_text("version: 1\nstages:\n  app:\n    from: scratch\n")
    code, out, err = _call(capsys, tmp_path, "-f", str(tmp_path / "p.yml"),
                           "--call", "targets,format=json", str(tmp_path))
    assert code == 2 and out == ""
    assert "yaml.v0 frontend answers --call targets with text only" in err
    assert "Traceback" not in err
