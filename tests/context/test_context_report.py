"""The context transfer report: the survey of a context (what is sent, unchanged, unused,
ignored and by which .dockerignore pattern), the lines a build's ``[internal] load build
context`` step prints (plain and rawjson), the hint, and ``pybk debug context``."""

from __future__ import annotations

import base64
import json
import os

import pytest
from support.engine import require_runc

from pybk.core.cli.commands import main
from pybk.core.fs.localsync import survey_context

DOCKERFILE = "FROM scratch\nCOPY src /src\nCOPY app.txt /\n"
DOCKERIGNORE = "node_modules\n*.log\n!keep.log\n"


def _context(root) -> None:
    files = {"Dockerfile": DOCKERFILE, ".dockerignore": DOCKERIGNORE,
             "src/a.js": "a\n", "src/b.js": "bb\n", "app.txt": "app\n",
             "big.bin": "x" * 100_000, "x.log": "l\n", "keep.log": "kept\n",
             "node_modules/x/m.js": "m\n", "node_modules/y.js": "y\n"}
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_survey_classifies_every_entry(tmp_path):
    _context(tmp_path)
    survey = survey_context(str(tmp_path), (), ["node_modules", "*.log", "!keep.log"],
                            ["src", "app.txt"], sent=["src/a.js"])
    assert survey.sent == [("src/a.js", 2)]
    assert survey.unchanged == [("app.txt", 4), ("src/b.js", 3)]
    assert sorted(survey.unused) == [(".dockerignore", len(DOCKERIGNORE)),
                                     ("Dockerfile", len(DOCKERFILE)), ("big.bin", 100_000),
                                     ("keep.log", 5)]
    assert survey.ignored == [("node_modules/ (not read)", -1, "node_modules"),
                              ("x.log", 2, "*.log")]
    lines = survey.lines()
    total = 2 + 4 + 3 + len(DOCKERIGNORE) + len(DOCKERFILE) + 100_000 + 5 + 2
    unused = len(DOCKERIGNORE) + len(DOCKERFILE) + 100_005
    assert lines == [
        f"context: 9 entries ({total} bytes) considered: 1 sent (2 bytes), 2 unchanged "
        f"(7 bytes), 4 not used by any COPY/ADD ({unused} bytes), 2 ignored (2 bytes)",
        "context: ignored by .dockerignore pattern 'node_modules': 1 entry: "
        "node_modules/ (not read)",
        "context: ignored by .dockerignore pattern '*.log': 1 entry (2 bytes)",
        "context: largest files sent: src/a.js (2 bytes)",
        "hint: 99% of the context's bytes are not used by any COPY/ADD; add them to "
        ".dockerignore",
    ]


def test_no_hint_when_most_bytes_are_used(tmp_path):
    _context(tmp_path)
    os.unlink(tmp_path / "big.bin")
    survey = survey_context(str(tmp_path), (), ["node_modules"],
                            ["src", "app.txt", "x.log", "keep.log", "Dockerfile"])
    assert [u[0] for u in survey.unused] == [".dockerignore"]
    assert not [line for line in survey.lines() if line.startswith("hint:")]
    # a directory with a re-included path inside is read; its subdirectories are not
    survey = survey_context(str(tmp_path), (), ["node_modules", "!node_modules/y.js"], ())
    assert survey.ignored == [("node_modules/x/ (not read)", -1, "node_modules")]
    assert ("node_modules/y.js", 2) in survey.sent


def _logs(err: str) -> list[str]:
    """The log lines of the ``[internal] load build context`` vertex of a rawjson stream."""
    objs = [json.loads(line) for line in err.splitlines()]
    digests = {v["digest"] for o in objs for v in o.get("vertexes", [])
               if v["name"] == "[internal] load build context"}
    data = b"".join(base64.b64decode(log["data"]) for o in objs for log in o.get("logs", [])
                    if log["vertex"] in digests)
    return data.decode().splitlines()


def test_build_reports_each_sync(tmp_path, capsys):
    require_runc()
    ctx = tmp_path / "ctx"
    _context(ctx)
    args = ["--root", str(tmp_path / "store"), "build", "-o",
            f"type=local,dest={tmp_path / 'out'}", str(ctx)]
    assert main([*args, "--progress", "rawjson"]) == 0
    first = _logs(capsys.readouterr().err)
    unused = len(DOCKERIGNORE) + len(DOCKERFILE) + 100_005
    assert first[0] == (f"context: 9 entries ({unused + 9 + 2} bytes) considered: 3 sent "
                        f"(9 bytes), 0 unchanged (0 bytes), 4 not used by any COPY/ADD "
                        f"({unused} bytes), 2 ignored (2 bytes)")
    assert first[1:] == [
        "context: ignored by .dockerignore pattern 'node_modules': 1 entry: "
        "node_modules/ (not read)",
        "context: ignored by .dockerignore pattern '*.log': 1 entry (2 bytes)",
        "context: largest files sent: app.txt (4 bytes), src/b.js (3 bytes), src/a.js (2 bytes)",
        "hint: 99% of the context's bytes are not used by any COPY/ADD; add them to "
        ".dockerignore",
    ]
    (ctx / "src" / "a.js").write_text("changed\n")
    assert main([*args, "--progress", "plain"]) == 0
    err = capsys.readouterr().err.splitlines()
    at = next(i for i, line in enumerate(err) if line.endswith("transferring context: "
                                                               "1 files copied, 0 removed done"))
    step = err[at].split()[0]
    report = [line.split(" ", 2)[2] for line in err[at + 1:at + 6]]
    assert all(line.startswith(step + " ") for line in err[at + 1:at + 6])
    assert report[0] == (f"context: 9 entries ({unused + 17} bytes) considered: 1 sent "
                         f"(8 bytes), 2 unchanged (7 bytes), 4 not used by any COPY/ADD "
                         f"({unused} bytes), 2 ignored (2 bytes)")
    assert report[3] == "context: largest files sent: src/a.js (8 bytes)"
    assert report[4].startswith("hint: 99% ")
    assert (tmp_path / "out" / "src" / "a.js").read_text() == "changed\n"
    # nothing changed: one line, and the context is not walked a second time
    import pybk.core.fs.localsync as localsync

    def no_survey(*args, **kwargs):
        raise AssertionError("a sync that sent nothing surveyed the context")

    original, localsync.survey_context = localsync.survey_context, no_survey
    try:
        assert main([*args, "--progress", "plain"]) == 0
    finally:
        localsync.survey_context = original
    err = capsys.readouterr().err.splitlines()
    at = next(i for i, line in enumerate(err) if line.endswith("transferring context: "
                                                               "0 files copied, 0 removed done"))
    assert err[at + 1].split(" ", 2)[2] == ("context: nothing sent, 3 files unchanged since the "
                                            "last sync")


def test_debug_context_lists_what_would_be_sent(tmp_path, capsys):
    _context(tmp_path / "ctx")
    dockerfile = ("FROM scratch AS one\nCOPY src /src\nFROM scratch AS two\nCOPY app.txt /\n"
                  "ARG EXTRA=none\nCOPY ${EXTRA} /\n")
    (tmp_path / "ctx" / "Dockerfile").write_text(dockerfile)
    code = main(["--root", str(tmp_path / "store"), "debug", "context", str(tmp_path / "ctx"),
                 "--target", "two", "--build-arg", "EXTRA=big.bin"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    body = [line for line in out if not line.startswith(("context:", "hint:"))]
    assert body == [
        "send: app.txt (4 bytes)",
        "send: big.bin (100000 bytes)",
        "exclude: node_modules/ (not read): .dockerignore pattern 'node_modules'",
        "exclude: x.log (2 bytes): .dockerignore pattern '*.log'",
        f"exclude: .dockerignore ({len(DOCKERIGNORE)} bytes): not used by any COPY/ADD",
        f"exclude: Dockerfile ({len(dockerfile)} bytes): not used by any COPY/ADD",
        "exclude: keep.log (5 bytes): not used by any COPY/ADD",
        "exclude: src/a.js (2 bytes): not used by any COPY/ADD",
        "exclude: src/b.js (3 bytes): not used by any COPY/ADD",
    ]
    assert "context: largest files to send: big.bin (100000 bytes), app.txt (4 bytes)" in out
    assert not [line for line in out if line.startswith("hint:")]


@pytest.mark.parametrize("args, message", [
    (["/nonexistent"], "context directory '/nonexistent' not found"),
    ([".", "-f", "/nonexistent/Dockerfile"], "build file '/nonexistent/Dockerfile' not found"),
])
def test_debug_context_usage_errors(tmp_path, capsys, args, message):
    code = main(["--root", str(tmp_path / "store"), "debug", "context", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_debug_context_through_a_tcp_daemon_runs_on_the_client(tmp_path, capsys, monkeypatch):
    """It reads the client's files: never sent to a daemon, which would read its own disk."""
    from pybk.core.cli.grpcclient import _run

    _context(tmp_path / "ctx")

    def no_daemon():
        raise AssertionError("a daemon was asked")

    monkeypatch.setenv("PYBK_ROOT", str(tmp_path / "store"))
    code = _run(["debug", "context", str(tmp_path / "ctx")], no_daemon)
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[:3] == ["send: app.txt (4 bytes)", "send: src/a.js (2 bytes)",
                       "send: src/b.js (3 bytes)"]


def test_debug_context_follows_platform_and_named_contexts(tmp_path, capsys):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("amd64.txt", "arm64.txt", "dep.txt", "app.txt"):
        (ctx / name).write_text(name)
    (ctx / "Dockerfile").write_text(
        "FROM scratch AS dep\nCOPY dep.txt /\n"
        "FROM scratch\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /\nCOPY --from=dep /dep.txt /\n"
        "COPY app.txt /\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "dep.txt").write_text("elsewhere")

    def sent(*extra):
        assert main(["--root", str(tmp_path / "store"), "debug", "context", str(ctx),
                     *extra]) == 0
        return sorted(line.split()[1] for line in capsys.readouterr().out.splitlines()
                      if line.startswith("send: "))

    assert sent("--platform", "linux/arm64") == ["app.txt", "arm64.txt", "dep.txt"]
    assert sent("--platform", "linux/amd64") == ["amd64.txt", "app.txt", "dep.txt"]
    # the dep stage replaced by another directory: dep.txt is no longer sent from this one
    assert sent("--platform", "linux/amd64", "--build-context", f"dep={other}") == \
        ["amd64.txt", "app.txt"]
