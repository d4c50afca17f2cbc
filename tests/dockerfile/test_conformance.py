"""BuildKit's parser and shell-lexer conformance data (read from the shared data directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybk.frontends.dockerfile.dump import dump_ast
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.parser import parse
from pybk.frontends.dockerfile.shell import ShellExpansionError, process_word, process_words

DATA = Path("/work/shared/conformance/buildkit-dockerfile")
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="conformance data not available")


def _cases(sub: str) -> list[str]:
    folder = DATA / "parser" / sub
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("name", _cases("testfiles"))
def test_parser_dump_matches_result(name):
    folder = DATA / "parser" / "testfiles" / name
    expected = (folder / "result").read_bytes().decode("utf-8")
    assert dump_ast((folder / "Dockerfile").read_bytes()) + "\n" == expected


@pytest.mark.parametrize("name", _cases("testfiles-negative"))
def test_parser_rejects_negative_case(name):
    data = (DATA / "parser" / "testfiles-negative" / name / "Dockerfile").read_bytes()
    with pytest.raises(DockerfileParseError) as info:
        parse(data)
    assert info.value.line is not None


def test_positive_and_negative_case_counts():
    assert len(_cases("testfiles")) == 33
    assert len(_cases("testfiles-negative")) == 4


def test_testfile_line_ranges():
    result = parse((DATA / "parser" / "testfile-line" / "Dockerfile").read_bytes())
    assert [(c.start_line, c.end_line) for c in result.children] == [(5, 5), (11, 12), (17, 31)]
    assert (result.start_line, result.end_line) == (5, 31)


def _env_var_cases() -> list[tuple[str, str]]:
    path = DATA / "shell" / "envVarTest"
    if not path.is_file():
        return []
    cases = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#") or not line.strip():
            continue
        platform, source, expected = (field.strip() for field in line.split("|"))
        if platform in ("A", "U"):
            cases.append((source, expected))
    return cases


ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
ENV_VAR_CASES = _env_var_cases()


def test_env_var_case_count():
    assert len(ENV_VAR_CASES) == 228


@pytest.mark.parametrize(("source", "expected"), ENV_VAR_CASES, ids=[c[0] for c in ENV_VAR_CASES])
def test_env_var_expansion(source, expected):
    if expected == "error":
        with pytest.raises(ShellExpansionError):
            process_word(source, ENV)
    else:
        assert process_word(source, ENV) == expected


def _words_cases() -> list[tuple[str, dict, list[str]]]:
    path = DATA / "shell" / "wordsTest"
    if not path.is_file():
        return []
    env: dict[str, str] = {}
    cases = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#") or not line:
            continue
        if line.startswith("ENV "):
            name, _, value = line[4:].lstrip(" ").partition("=")
            env[name] = value
            continue
        left, right = line.split("|")
        cases.append((left.strip(), dict(env), right.lstrip(" ").split(",")))
    return cases


WORDS_CASES = _words_cases()


def test_words_case_count():
    assert len(WORDS_CASES) == 24


@pytest.mark.parametrize(
    ("source", "env", "expected"), WORDS_CASES, ids=[c[0] for c in WORDS_CASES]
)
def test_words_splitting(source, env, expected):
    try:
        words = process_words(source, env)
    except ShellExpansionError:
        words = ["error"]
    assert words == expected
