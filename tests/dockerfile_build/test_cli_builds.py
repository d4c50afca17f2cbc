"""``pybk build`` of Dockerfiles through ``core.cli.main``: located errors, ``--call``, the
conformance test files, and cache reuse after a source change."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pybk.core.cli.commands import main

TESTFILES = Path("/work/shared/conformance/buildkit-dockerfile/parser/testfiles")
_FROM = re.compile(r"^\s*from\s+(?:--\S+\s+)*([^\s$]+)", re.IGNORECASE | re.MULTILINE)


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    import os

    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    return str(tmp_path_factory.mktemp("cli-store"))


def _pybk(capsys, root: str, *args: str) -> tuple[int, str, str]:
    code = main(["--root", root, "build", "--progress", "quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_failing_run_names_the_dockerfile_line(cli_root, busybox_layout, tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n\nRUN echo one && \\\n"
                                         "    exit 7\nRUN never\n")
    code, _, err = _pybk(capsys, cli_root, "--build-context",
                         f"busybox=oci-layout://{busybox_layout}", str(tmp_path))
    assert code == 1
    assert 'did not complete successfully: exit code: 7' in err
    assert "Dockerfile:4-5" in err
    assert " 4 | >>> RUN echo one && \\" in err and " 5 | >>>     exit 7" in err
    assert "Traceback" not in err


def test_parse_errors_are_located(cli_root, tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY --bogus=1 a /\n")
    code, _, err = _pybk(capsys, cli_root, str(tmp_path))
    assert code != 0 and "Dockerfile:2" in err and "Traceback" not in err


def test_call_targets_and_outline(cli_root, tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text(
        "ARG GLOBAL=g\n"
        "# build compiles the app\n"
        "FROM scratch AS build\n"
        "# VERSION the version to build\n"
        "ARG VERSION=1.0\n"
        "FROM scratch AS unused\nARG NOT_SHOWN\n"
        "FROM build AS release\nARG CHANNEL\n")
    code, out, _ = _pybk(capsys, cli_root, "--call", "targets", str(tmp_path))
    assert code == 0
    assert [line.split(None, 1) for line in out.splitlines()] == [
        ["TARGET", "DESCRIPTION"], ["build", "compiles the app"], ["unused"],
        ["release", "(default)"]]
    code, out, _ = _pybk(capsys, cli_root, "--call", "outline", "--build-arg", "CHANNEL=beta",
                         str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "TARGET:      release"
    assert lines[2].split() == ["BUILD", "ARG", "VALUE", "DESCRIPTION"]
    rows = [line.split(None, 2) for line in lines[3:]]
    assert rows == [["GLOBAL", "g"], ["VERSION", "1.0", "the version to build"],
                    ["CHANNEL", "beta"]]


def test_print_llb_and_warnings(cli_root, tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (tmp_path / "a").write_text("a")
    code, out, err = _pybk(capsys, cli_root, "--print-llb", "--build-arg", "UNUSED=1",
                           str(tmp_path))
    assert code == 0
    assert '"local://context"' in out and '"local.followpaths":"[\\"a\\"]"' in out
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in err


def test_rebuild_reruns_only_steps_after_changed_copy(client, busybox_context, busybox_layout,
                                                      busybox_digest, tmp_path):
    from pybk.core.engine.build import LocalBridge
    from pybk.core.interfaces import FrontendRequest
    from pybk.frontends.dockerfile.frontend import DockerfileFrontend

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN echo deps > /deps\nCOPY stable.txt /s\nRUN cat /s > /s2\n"
        "COPY app.txt /app\nRUN cat /app > /built\nRUN echo done > /done\n")
    (context / "stable.txt").write_text("stable")
    (context / "app.txt").write_text("v1")
    local_dirs = {"context": str(context), "dockerfile": str(context)}
    layouts = {"base": str(busybox_layout)}
    opts = {"context:busybox": f"oci-layout://base@{busybox_digest}"}

    def solve():
        bridge = LocalBridge(local_dirs=local_dirs, oci_layouts=layouts, config=None,
                             client=client)
        answer = DockerfileFrontend().solve(FrontendRequest(opts=opts), bridge)
        result = client.solve(answer.definition, local_dirs=local_dirs, oci_layouts=layouts,
                              progress=None)
        names = {}
        for line in answer.definition.metadata.items():
            digest, meta = line
            names[digest] = (meta.description or {}).get("llb.customname", "")
        return result, names

    first, names = solve()
    assert first.stats.cached == 0
    (context / "app.txt").write_text("v2")
    second, names = solve()
    executed = sorted(names.get(d, "") for d in second.stats.executed_digests)
    assert [n for n in executed if re.match(r"\[\d", n)] == [
        "[5/7] COPY app.txt /app", "[6/7] RUN cat /app > /built", "[7/7] RUN echo done > /done"]
    cached = {names.get(d, "") for d in second.stats.cached_digests}
    assert {"[2/7] RUN echo deps > /deps", "[3/7] COPY stable.txt /s",
            "[4/7] RUN cat /s > /s2"} <= cached
    with second.mount() as root:
        assert Path(root, "built").read_text() == "v2"


@pytest.mark.slow
@pytest.mark.skipif(not TESTFILES.is_dir(), reason="BuildKit's parser test files are absent")
@pytest.mark.parametrize("name", sorted(p.name for p in TESTFILES.iterdir()
                                        if (p / "Dockerfile").is_file())
                         if TESTFILES.is_dir() else [])
def test_conformance_testfiles_build_or_fail_cleanly(name, cli_root, busybox_layout, tmp_path,
                                                     capsys, monkeypatch):
    """Every base image is busybox (a named context); what needs the network fails fast."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    context = tmp_path / "ctx"
    shutil.copytree(TESTFILES / name, context, symlinks=True)
    text = (context / "Dockerfile").read_text(errors="replace")
    stages = {m.lower() for m in re.findall(r"\bAS\s+(\S+)", text, re.IGNORECASE)}
    args = []
    for base in sorted(set(_FROM.findall(text))):
        if base.lower() in stages or base == "scratch" or not re.fullmatch(r"\w[\w./:-]*", base):
            continue
        args += ["--build-context", f"{base}=oci-layout://{busybox_layout}"]
    code, _, err = _pybk(capsys, cli_root, *args, str(context))
    assert "Traceback" not in err
    if code != 0:
        assert re.search(r"Dockerfile:\d+", err), err
