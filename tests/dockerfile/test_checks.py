"""Build checks: each rule fires on a bad Dockerfile and stays quiet on a good one."""

from __future__ import annotations

import pytest

from pybk.frontends.dockerfile.checks import run_checks
from pybk.frontends.dockerfile.cli_support import check_command, dump_ast_command
from pybk.frontends.dockerfile.commands import Location
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.lintrules import (
    RULES,
    base_image_platform_warning,
    parse_check_options,
)

EXPERIMENTAL = "# check=experimental=all\n"

# rule, firing Dockerfile, expected message fragment and line, quiet Dockerfile
RULE_CASES = [
    (
        "StageNameCasing",
        "FROM a AS Build\n",
        "Stage name 'Build' should be lowercase",
        1,
        "FROM a AS build\n",
    ),
    (
        "FromAsCasing",
        "FROM a as b\n",
        "'as' and 'FROM' keywords' casing do not match",
        1,
        "from a as b\n",
    ),
    (
        "NoEmptyContinuation",
        "FROM a\nRUN a \\\n\n b\n",
        "Empty continuation lines",
        4,
        "FROM a\nRUN a \\\n b\n",
    ),
    (
        "ConsistentInstructionCasing",
        "FROM a\nRUN x\nrun y\n",
        "Command 'run' should match the case of the command majority (uppercase)",
        3,
        "from a\nrun y\n",
    ),
    (
        "DuplicateStageName",
        "FROM a AS x\nFROM b AS x\n",
        'Duplicate stage name "x"',
        2,
        "FROM a AS x\nFROM b AS y\n",
    ),
    ("ReservedStageName", "FROM a AS context\n", 'reserved stage "context"', 1, "FROM a AS ctx\n"),
    (
        "JSONArgsRecommended",
        "FROM a\nCMD run me\n",
        "JSON arguments recommended for CMD",
        2,
        'FROM a\nCMD ["run", "me"]\n',
    ),
    (
        "MaintainerDeprecated",
        "FROM a\nMAINTAINER me\n",
        "Maintainer instruction is deprecated",
        2,
        "FROM a\nLABEL author=me\n",
    ),
    (
        "UndefinedArgInFrom",
        "ARG VERSION=1\nFROM a:$VERSIN\n",
        "FROM argument 'VERSIN' is not declared (did you mean VERSION?)",
        2,
        "ARG VERSION=1\nFROM a:$VERSION\n",
    ),
    (
        "WorkdirRelativePath",
        "FROM a\nWORKDIR app\n",
        'Relative workdir "app"',
        2,
        "FROM a\nWORKDIR /srv\nWORKDIR app\n",
    ),
    (
        "UndefinedVar",
        "FROM a\nARG FOO=1\nCOPY $FOOO /x\n",
        "Usage of undefined variable '$FOOO' (did you mean $FOO?)",
        3,
        "FROM a\nARG FOO\nCOPY $FOO /x\nENV PATH=$PATH:/y\n",
    ),
    (
        "MultipleInstructionsDisallowed",
        'FROM a\nENTRYPOINT ["a"]\nENTRYPOINT ["b"]\n',
        "Multiple ENTRYPOINT instructions",
        2,
        'FROM a\nENTRYPOINT ["a"]\nFROM b\nENTRYPOINT ["b"]\n',
    ),
    (
        "LegacyKeyValueFormat",
        "FROM a\nENV k v\n",
        '"ENV key=value" should be used instead of legacy "ENV key value" format',
        2,
        "FROM a\nENV k=v\n",
    ),
    (
        "RedundantTargetPlatform",
        "FROM --platform=$TARGETPLATFORM a\n",
        "Setting platform to predefined $TARGETPLATFORM",
        1,
        "FROM --platform=$BUILDPLATFORM a\n",
    ),
    (
        "SecretsUsedInArgOrEnv",
        "FROM a\nARG GITHUB_TOKEN\n",
        'sensitive data (ARG "GITHUB_TOKEN")',
        2,
        "FROM a\nARG PUBLIC_KEY\nARG KEYBOARD\n",
    ),
    (
        "InvalidDefaultArgInFrom",
        "ARG TAG\nFROM busybox:${TAG}\n",
        "Default value for ARG busybox:${TAG} results in empty or invalid base image name",
        2,
        "ARG TAG=latest\nFROM busybox:${TAG}\n",
    ),
    (
        "FromPlatformFlagConstDisallowed",
        "FROM --platform=linux/amd64 a AS build\n",
        'constant value "linux/amd64"',
        1,
        "FROM --platform=linux/amd64 a AS build_amd64\n",
    ),
    (
        "InvalidDefinitionDescription",
        EXPERIMENTAL + "FROM a\n# the version\nARG VERSION\n",
        "Comment for ARG should follow the format: `# VERSION <description>`",
        4,
        EXPERIMENTAL + "FROM a\n# VERSION the version\nARG VERSION\n",
    ),
    (
        "ExposeProtoCasing",
        "FROM a\nEXPOSE 80/TCP\n",
        "Defined protocol '80/TCP' in EXPOSE instruction should be lowercase",
        2,
        "FROM a\nEXPOSE 80/tcp\n",
    ),
    (
        "ExposeInvalidFormat",
        "FROM a\nEXPOSE 0.0.0.0:80:80\n",
        "found '0.0.0.0:80:80'",
        2,
        "FROM a\nEXPOSE 80\n",
    ),
]


@pytest.mark.parametrize(
    ("rule", "bad", "message", "line", "good"), RULE_CASES, ids=[c[0] for c in RULE_CASES]
)
def test_rule_fires_and_stays_quiet(rule, bad, message, line, good):
    report = run_checks(bad.encode())
    found = [w for w in report.warnings if w.rule == rule]
    assert found, report.warnings
    assert message in found[0].message and found[0].line == line
    assert (
        found[0].url
        == f"https://docs.docker.com/go/dockerfile/rule/{RULES[rule].url.split('/')[-2]}/"
    )
    assert not [w for w in run_checks(good.encode()).warnings if w.rule == rule]


def test_copy_ignored_file():
    data = b"FROM a\nCOPY tmp/x.txt keep.txt /d/\nADD https://example.com/f /f\nCOPY --from=b tmp/x /y\n"
    report = run_checks(data, ignore_patterns=["tmp", "https:"])
    assert [(w.rule, w.line, w.message) for w in report.warnings] == [
        (
            "CopyIgnoredFile",
            2,
            'Attempting to Copy file "tmp/x.txt" that is excluded by .dockerignore',
        )
    ]
    assert run_checks(data).warnings == []


def test_every_rule_is_known_and_has_a_url():
    assert len(RULES) == 22
    assert RULES["JSONArgsRecommended"].url.endswith("/rule/json-args-recommended/")
    assert [r.name for r in RULES.values() if r.experimental] == ["InvalidDefinitionDescription"]
    warning = base_image_platform_warning(
        "img", "linux/arm64", "linux/amd64", Location("Dockerfile", 3, 3)
    )
    assert warning.rule == "InvalidBaseImagePlatform" and warning.line == 3
    assert 'pulled with platform "linux/amd64", expected "linux/arm64"' in warning.message


def test_check_directive_skip_error_and_build_arg_override():
    bad = b"FROM a\nMAINTAINER me\nCMD x\n"
    assert len(run_checks(bad).warnings) == 2
    skipped = run_checks(b"# check=skip=MaintainerDeprecated;error=true\n" + bad)
    assert [w.rule for w in skipped.warnings] == ["JSONArgsRecommended"]
    assert (
        skipped.error
        and skipped.error_message == "lint violation found for rules: JSONArgsRecommended"
    )
    overridden = run_checks(
        b"# check=skip=all\n" + bad,
        build_args={"BUILDKIT_DOCKERFILE_CHECK": "skip=JSONArgsRecommended"},
    )
    assert [w.rule for w in overridden.warnings] == [
        "MaintainerDeprecated"
    ] and not overridden.error
    assert run_checks(b"# check=skip=all\n" + bad).warnings == []


def test_check_options_errors():
    assert parse_check_options(" skip = A, B ; experimental=all").skip == frozenset({"A", "B"})
    for bad in ("bogus=1", "error=maybe", "skip"):
        with pytest.raises(ValueError):
            parse_check_options(bad)
    with pytest.raises(DockerfileParseError) as info:
        run_checks(b"# check=wrong=1\nFROM a\n")
    assert info.value.line == 1


def test_build_args_and_target():
    data = b"FROM a AS one\nCOPY $X /\nFROM b AS two\nCOPY $Y /\n"
    assert [w.line for w in run_checks(data).warnings] == [4]
    assert [w.line for w in run_checks(data, target="one").warnings] == [2]
    quiet = b"FROM a\nARG X\nCOPY $X /\n"
    assert run_checks(quiet, build_args={"X": "f"}).warnings == []
    with pytest.raises(DockerfileParseError):
        run_checks(data, target="three")


def test_cli_support(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM a\nCMD echo hi\n")
    text, code = check_command(str(dockerfile), {}, None)
    assert code == 1 and "WARNING: JSONArgsRecommended" in text and ">>> CMD echo hi" in text
    dockerfile.write_text('FROM a\nCMD ["echo", "hi"]\n')
    assert check_command(str(dockerfile), {}, None) == ("Check complete, no warnings found.\n", 0)
    assert dump_ast_command(str(dockerfile)) == '(from "a")\n(cmd "echo" "hi")\n'
