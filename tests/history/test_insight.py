"""Cache-miss explanations (``#N CACHE MISS: …``, ``history inspect --cache``,
``build --explain-cache``) and ``pybk history trace``, with real builds."""

from __future__ import annotations

import json

import pytest
from support.engine import need_runc

from pybk.core.cli.commands import main

BASE = '[worker.oci]\ngc = false\nnetworkMode = "none"\n'


class Env:
    def __init__(self, tmp_path, layout, capsys):
        self.tmp = tmp_path
        self.root = tmp_path / "store"
        self.config = tmp_path / "buildkitd.toml"
        self.config.write_text(BASE)
        self.layout = layout
        self.capsys = capsys

    def context(self, dockerfile: str, files: dict[str, str] | None = None):
        ctx = self.tmp / "app"
        ctx.mkdir(exist_ok=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        for name, text in (files or {}).items():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx / name).write_text(text)
        return ctx

    def pybk(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--root", str(self.root), "--config", str(self.config), *args])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def build(self, ctx, *args: str, layout=None) -> str:
        code, out, err = self.pybk("build", "--progress", "plain", "--build-context",
                                   f"busybox=oci-layout://{layout or self.layout}", *args,
                                   str(ctx))
        assert code == 0, err
        return err

    def cache(self, ref: str = "latest") -> list[dict]:
        code, out, err = self.pybk("history", "inspect", ref, "--cache", "--format", "json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def env(tmp_path, busybox_layout, capsys):
    need_runc()
    return Env(tmp_path, busybox_layout, capsys)


def _misses(err: str) -> dict[str, str]:
    """``{step name: reason}`` from plain progress."""
    names, out = {}, {}
    for line in err.splitlines():
        head, _, rest = line.partition(" ")
        if not head.startswith("#") or not head[1:].isdigit():
            continue
        if rest.startswith("CACHE MISS: "):
            out[names[head]] = rest[len("CACHE MISS: "):]
        elif head not in names:
            names[head] = rest
    return out


APP = """\
FROM busybox
ARG VERSION=1
COPY app/ /app/
RUN cat /app/main.py > /out
RUN echo "v=$VERSION" >> /out
"""


def test_one_file_change_is_named(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n", "app/util.py": "u\n"})
    first = env.build(ctx)
    assert "CACHE MISS" not in first
    (ctx / "app" / "main.py").write_text("print(2)\n")
    err = env.build(ctx)
    misses = _misses(err)
    print(err)
    assert misses["[2/4] COPY app/ /app/"] == "context file app/main.py changed"
