"""``[frontend."dockerfile.v0"] enabled = false``: the Dockerfile frontend is not available, as
buildkitd does not register it; every Dockerfile build is refused before anything is read."""

from __future__ import annotations

from pathlib import Path

from pybk.core.cli.commands import main

REFUSED = ('error: invalid frontend: dockerfile.v0 (disabled by the daemon configuration: '
           '[frontend."dockerfile.v0"] enabled = false)\n')


def _files(tmp_path: Path, dockerfile: str, config: str) -> tuple[Path, Path]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    path = tmp_path / "buildkitd.toml"
    path.write_text(config)
    return ctx, path


def test_disabled_dockerfile_frontend_refuses_builds(tmp_path, capsys):
    ctx, config = _files(tmp_path, "FROM scratch\nCOPY Dockerfile /\n",
                         '[frontend."dockerfile.v0"]\nenabled = false\n')
    root = str(tmp_path / "store")
    code = main(["--root", root, "--config", str(config), "build", "--print-llb", str(ctx)])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err == REFUSED and captured.out == ""
    # a `# syntax=` line is not followed either: the frontend that reads it is off
    (ctx / "Dockerfile").write_text("# syntax=docker/dockerfile:1\nFROM scratch\n")
    code = main(["--root", root, "--config", str(config), "build", "--print-llb", str(ctx)])
    assert (code, capsys.readouterr().err) == (2, REFUSED)
    # enabled = true (or unset) builds the same file
    config.write_text('[frontend."dockerfile.v0"]\nenabled = true\n')
    (ctx / "Dockerfile").write_text("# syntax=docker/dockerfile:1\nFROM scratch\n"
                                    "COPY Dockerfile /copied\n")
    code = main(["--root", root, "--config", str(config), "build", "--print-llb", str(ctx)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "local://context" in captured.out and "/copied" in captured.out
