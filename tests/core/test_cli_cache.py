"""--cache-to / --cache-from through the CLI: a build on store A exported to a local cache dir
is fully cached on an empty store B."""

import json
import re

import pytest
from support.engine import need_runc, require_runc

from pybk.core.cli.commands import main


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo built > /b\nCOPY f /f\n")
    (ctx / "f").write_text("file\n")
    return ctx


def _build(root, context, layout, *extra):
    return main(["--root", str(root), "build", "--progress", "rawjson",
                 "--build-context", f"busybox=oci-layout://{layout}", *extra, str(context)])


def test_cache_roundtrip_between_stores(tmp_path, context, busybox_layout, capsys):
    require_runc()
    cache = tmp_path / "cache"
    assert _build(tmp_path / "A", context, busybox_layout,
                  "--cache-to", f"type=local,dest={cache},mode=max") == 0
    assert json.loads((cache / "index.json").read_text())["manifests"]
    capsys.readouterr()
    assert _build(tmp_path / "B", context, busybox_layout,
                  "--cache-from", f"type=local,src={cache}") == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    vertexes = {v["digest"]: v for line in lines for v in line.get("vertexes") or []}
    runs = [v for v in vertexes.values() if "RUN" in v["name"]]
    assert runs and all(v.get("cached") for v in runs)


def test_unreachable_cache_from_warns_and_builds(tmp_path, context, busybox_layout, capsys):
    require_runc()
    assert _build(tmp_path / "A", context, busybox_layout,
                  "--cache-from", f"type=local,src={tmp_path}/missing") == 0


def test_unreachable_cache_to_fails_unless_ignored(tmp_path, context, busybox_layout, capsys):
    require_runc()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    dest = f"{blocked}/cache"
    assert _build(tmp_path / "A", context, busybox_layout,
                  "--cache-to", f"type=local,dest={dest}") != 0
    assert _build(tmp_path / "A", context, busybox_layout,
                  "--cache-to", f"type=local,dest={dest},ignore-error=true") == 0


def test_inline_cache_build_arg(tmp_path, context, busybox_layout, registry, capsys):
    """--build-arg BUILDKIT_INLINE_CACHE=1 embeds the cache in the pushed image's config;
    another store imports it with --cache-from type=registry,ref=IMAGE."""
    require_runc()
    image = f"{registry.host}/inline-cli:1"
    assert _build(tmp_path / "A", context, busybox_layout, "--build-arg",
                  "BUILDKIT_INLINE_CACHE=1", "-o", f"type=image,name={image},push=true") == 0
    capsys.readouterr()
    assert _build(tmp_path / "B", context, busybox_layout,
                  "--cache-from", f"type=registry,ref={image}") == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    vertexes = {v["digest"]: v for line in lines for v in line.get("vertexes") or []}
    copies = [v for v in vertexes.values() if "COPY f /f" in v["name"]]
    assert copies and all(v.get("cached") for v in copies)


def test_cache_mounts_travel_through_the_cli(tmp_path, busybox_layout, capsys):
    """``cache-mounts=true`` on both flags: the cache mount written on store A is restored on
    store B before its (changed, so re-run) step; sizes are shown in the progress."""
    need_runc()
    cache = tmp_path / "cache"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    run = "RUN --mount=type=cache,target=/cache,id=c sh -c 'ls /cache > /out; echo {} > /cache/f'"
    (ctx / "Dockerfile").write_text("FROM busybox\n" + run.format("x") + "\n")
    assert _build(tmp_path / "A", ctx, busybox_layout, "--progress", "plain", "--cache-to",
                  f"type=local,dest={cache},cache-mounts=true") == 0
    err = capsys.readouterr().err
    assert re.search(r"exporting cache mount c \d+(\.\d+)?[kM]?B", err), err
    (ctx / "Dockerfile").write_text("FROM busybox\n" + run.format("y") + "\n")
    assert _build(tmp_path / "B", ctx, busybox_layout, "--progress", "plain", "--cache-from",
                  f"type=local,src={cache},cache-mounts=true",
                  "-o", f"type=local,dest={tmp_path / 'out'}") == 0
    err = capsys.readouterr().err
    assert re.search(r"importing cache mount c \d+(\.\d+)?[kM]?B / ", err), err
    assert (tmp_path / "out" / "out").read_text() == "f\n"


@pytest.mark.parametrize(("flag", "spec", "message"), [
    ("--cache-to", "type=local,dest={d},cache-mount-ids=c", "needs cache-mounts=true"),
    ("--cache-from", "type=local,src={d},cache-mount-ids=c", "needs cache-mounts=true"),
    ("--cache-to", "type=local,dest={d},cache-mounts=true,cache-mount-ids=;",
     "names no cache mount"),
    ("--cache-to", "type=inline,cache-mounts=true", "type=inline cannot carry cache mounts"),
    ("--cache-from", "type=local,src={d},cache-mounts=maybe", "cache-mounts"),
])
def test_cache_mount_attributes_refused(tmp_path, context, busybox_layout, capsys, flag, spec,
                                        message):
    assert _build(tmp_path / "A", context, busybox_layout,
                  flag, spec.format(d=tmp_path / "cache")) == 2
    err = capsys.readouterr().err
    assert message in err and flag in err and "Traceback" not in err, err
