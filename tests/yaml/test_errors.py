"""Malformed pipelines through ``pybk build -f pipeline.yaml CTX --print-llb``: every problem
reported at once as ``file:line:column: key.path: message``, exit code 2, no traceback."""

from __future__ import annotations

import textwrap

import pytest

from pybk.core.cli.commands import main

GOOD_STAGE = """\
  build:
    from: scratch
"""

CASES = {
    "bad-version": ("version: 2\nstages:\n" + GOOD_STAGE,
                    ["1:10: version: unsupported version 2 (yaml.v0 reads version 1)"]),
    "version-not-int": ('version: "1"\nstages:\n  a:\n    from: b\n  b:\n    from: a\n',
                        ['1:10: version: expected an integer, got string "1"',
                         "6:11: stages.b.from: circular dependency between stages: a -> b -> a"]),
    "missing-version": ("stages:\n" + GOOD_STAGE, ["1:1: version: missing required key"]),
    "missing-stages": ("version: 1\n", ["1:1: stages: missing required key"]),
    "no-stages": ("version: 1\nstages: {}\n",
                  ["2:9: stages: at least one stage is required"]),
    "not-a-mapping": ("- just\n- a list\n",
                      ["1:1: a pipeline is a mapping with version and stages"]),
    "yaml-syntax": ("version: 1\nstages:\n  build: {from: scratch\n",
                    ["4:1: while parsing a flow mapping expected ',' or '}', but got"]),
    "duplicate-key": ("version: 1\nstages:\n" + GOOD_STAGE + "    from: busybox\n",
                      ["5:5: stages.build.from: duplicate key"]),
    "unknown-top-key": ("version: 1\nstage:\n" + GOOD_STAGE,
                        ['2:1: stage: unknown key (did you mean "stages"?)',
                         "1:1: stages: missing required key"]),
    "missing-from": ("version: 1\nstages:\n  build:\n    workdir: /x\n",
                     ["4:5: stages.build.from: missing required key"]),
    "unknown-stage-key": ("version: 1\nstages:\n  build:\n    from: scratch\n    stpes: []\n",
                          ['5:5: stages.build.stpes: unknown key (did you mean "steps"?)']),
    "bad-stage-name": ("version: 1\nstages:\n  Build:\n    from: scratch\n",
                       ["3:3: stages.Build: invalid stage name 'Build'"]),
    "unknown-target": ("version: 1\ntarget: buld\nstages:\n" + GOOD_STAGE,
                       ["2:9: target: unknown stage 'buld' (did you mean 'build'?)"]),
    "copy-from-typo": ("""\
        version: 1
        stages:
          build:
            from: scratch
          final:
            from: scratch
            steps:
              - run: "true"
              - workdir: /x
              - copy: {from: biuld, src: /a, dest: /b}
        """, ["10:22: stages.final.steps[2].copy.from: unknown stage 'biuld' "
              "(did you mean 'build'?)"]),
    "from-typo": ("version: 1\nstages:\n" + GOOD_STAGE + "  final:\n    from: buid\n",
                  ["6:11: stages.final.from: unknown stage 'buid' (did you mean 'build'?)"]),
    "cycle": ("""\
        version: 1
        stages:
          a:
            from: b
          b:
            from: scratch
            steps:
              - copy: {from: a, src: /x, dest: /y}
        """, ["8:22: stages.b.steps[0].copy.from: circular dependency between stages: "
              "a -> b -> a"]),
    "self-cycle": ("version: 1\nstages:\n  a:\n    from: a\n",
                   ["4:11: stages.a.from: circular dependency between stages: a -> a"]),
    "step-two-actions": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - {run: "true", user: root}
        """, ["6:9: stages.build.steps[0]: a step has exactly one of run, copy, add, "
              "workdir, env, user, arg (got run and user)"]),
    "step-unknown-action": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - rnu: make
        """, ['6:9: stages.build.steps[0].rnu: unknown key (did you mean "run"?)']),
    "bad-mount-type": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - run:
                  command: make
                  mounts: [{type: volume, target: /v}]
        """, ['8:27: stages.build.steps[0].run.mounts[0].type: string "volume" is not one of '
              '"bind", "cache", "tmpfs", "secret", "ssh"']),
    "mount-option-for-other-type": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - run:
                  command: make
                  mounts:
                    - {type: cache, target: /c, size: 1m}
                    - {type: bind, target: /b, sharing: locked}
                    - {type: tmpfs, target: /t, mode: "0700"}
        """, ["9:47: stages.build.steps[0].run.mounts[0].size: unexpected key 'size' for mount "
              "type 'cache'",
              "10:49: stages.build.steps[0].run.mounts[1].sharing: unexpected key 'sharing' for mount "
              "type 'bind'",
              '11:47: stages.build.steps[0].run.mounts[2].mode: mode not allowed for "tmpfs" type '
              "mounts"]),
    "mount-unknown-option": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - run: {command: make, mounts: [{type: cache, traget: /c}]}
        """, ['6:53: stages.build.steps[0].run.mounts[0].traget: unknown key (did you mean '
              '"target"?)']),
    "mount-bad-values": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - run:
                  command: make
                  mounts: [{type: cache, target: /c, sharing: everyone}]
              - run:
                  command: make
                  mounts:
                    - {type: cache, target: /d, mode: "0999"}
                    - {type: tmpfs, size: 1m}
                    - {type: secret, source: a, id: b}
        """, ['8:55: stages.build.steps[0].run.mounts[0].sharing: string "everyone" is not '
              'one of "shared", "private", "locked"',
              "12:47: stages.build.steps[1].run.mounts[0].mode: invalid value 0999 for mode",
              "13:15: stages.build.steps[1].run.mounts[1]: target is required for tmpfs mounts",
              "14:38: stages.build.steps[1].run.mounts[2].source: both source and id can't be set"]),
    "mount-from-variable": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - run: {command: make, mounts: [{from: $SRC, target: /s}]}
        """, ["6:46: stages.build.steps[0].run.mounts[0].from: '$SRC' doesn't support "
              "variable expansion, define an alias stage instead"]),
    "bad-network-security": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - run: {command: make, network: bridge, security: root}
        """, ['6:39: stages.build.steps[0].run.network: string "bridge" is not one of '
              '"default", "none", "host"',
              '6:57: stages.build.steps[0].run.security: string "root" is not one of '
              '"sandbox", "insecure"']),
    "type-errors": ("""\
        version: 1
        stages:
          build:
            from: scratch
            env: [A, B]
            expose: 80
            steps:
              - copy: {src: a, dest: b, link: yes}
              - run: {}
        """, ["5:10: stages.build.env: expected a table, got array",
              "6:13: stages.build.expose: expected an array, got integer 80",
              '8:39: stages.build.steps[0].copy.link: expected true or false, got string "yes"',
              "9:14: stages.build.steps[1].run.command: missing required key"]),
    "copy-checks": ("""\
        version: 1
        stages:
          build:
            from: scratch
            steps:
              - copy: {src: [a, b], dest: /dir}
              - copy: {src: a, dest: /x, chmod: "u+q"}
              - copy: {src: "http://127.0.0.1/x", dest: /x}
              - add: {src: [a, b], dest: /d/, checksum: "sha256:00"}
        """, ["6:35: stages.build.steps[0].copy.dest: with more than one source, the "
              "destination must be a directory and end with a /",
              "7:41: stages.build.steps[1].copy.chmod: invalid chmod parameter: 'u+q'",
              "8:21: stages.build.steps[2].copy.src[0]: a URL source needs add, not copy",
              "9:49: stages.build.steps[3].add.checksum: checksum can't be specified for "
              "multiple sources"]),
    "healthcheck-and-signal": ("""\
        version: 1
        stages:
          build:
            from: scratch
            stopsignal: SIGNOPE
            healthcheck: {test: [check], interval: 5x, retries: -1}
        """, ["5:17: stages.build.stopsignal: invalid signal: SIGNOPE",
              '6:44: stages.build.healthcheck.interval: time: unknown unit "x" in duration "5x"',
              "6:57: stages.build.healthcheck.retries: must not be negative (-1)"]),
    "bad-names": ("""\
        version: 1
        args: {"BAD-NAME": x}
        stages:
          build:
            from: scratch
            env: {"": x}
            platform: linux/notanarch/x/y
            steps:
              - arg: {"1X": null}
        """, ["2:8: args.BAD-NAME: invalid build arg name 'BAD-NAME'",
              "6:11: stages.build.env.\"\": invalid environment variable name ''",
              "7:15: stages.build.platform: invalid platform 'linux/notanarch/x/y'",
              "9:15: stages.build.steps[0].arg.1X: invalid build arg name '1X'"]),
    "empty-values": ("""\
        version: 1
        stages:
          build:
            from: ""
            shell: []
            steps:
              - run: ""
              - workdir: ""
              - run: []
        """, ["4:11: stages.build.from: must not be empty",
              "5:12: stages.build.shell: must not be empty",
              "7:14: stages.build.steps[0].run.command: must not be empty",
              "8:18: stages.build.steps[1].workdir: must not be empty",
              "9:14: stages.build.steps[2].run.command: expected a string or a non-empty list "
              "of strings, got a list"]),
}


def test_thirty_cases():
    assert len(CASES) >= 30


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli-store"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_pipeline_is_reported_with_every_location(name, cli_root, tmp_path, capsys):
    text, expected = CASES[name]
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(text))
    code = main(["--root", cli_root, "build", "--progress", "quiet", "-f",
                 str(tmp_path / "pipeline.yaml"), str(tmp_path), "--print-llb"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert captured.out == ""
    assert "Traceback" not in err
    reported = [line for line in err.splitlines() if line.startswith(("error: pipeline.yaml:",
                                                                      "pipeline.yaml:"))]
    assert len(reported) == len(expected), err
    for line, want in zip(reported, sorted(expected, key=_position), strict=True):
        assert line.removeprefix("error: ").startswith(f"pipeline.yaml:{want}"), err


def _position(expected: str) -> tuple[int, int]:
    line, column, _ = expected.split(":", 2)
    return int(line), int(column)


def test_error_shows_the_offending_line_with_a_caret(cli_root, tmp_path, capsys):
    text, _ = CASES["copy-from-typo"]
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(text))
    main(["--root", cli_root, "build", "-f", str(tmp_path / "pipeline.yaml"), str(tmp_path),
          "--print-llb"])
    err = capsys.readouterr().err.splitlines()
    assert err[1] == "        - copy: {from: biuld, src: /a, dest: /b}"
    assert err[2] == "  " + " " * 21 + "^"
