"""Hostile archives and image layers (tests/hostile/corpus.py, generated at test time) driven
through (a) ``ADD x.tar /`` of a local archive, (b) a layer of an oci-layout build context and
(c) a layer pulled from a local registry.

Property: nothing is written (or removed, or linked) outside the rootfs — a canary directory
outside is checked after every build; the build succeeds with safe content or fails with a
clear error (exit code 1 or 2, no traceback); a decompression bomb stays bounded."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from pybk.core.cli.commands import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as hostile  # noqa: E402

MEDIA = {"none": "application/vnd.oci.image.layer.v1.tar",
         "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
BOMB = 1024 * hostile.MiB


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("canary-outside")


@pytest.fixture(scope="module")
def cases(canary) -> dict[str, hostile.Case]:
    return {c.name: c for c in hostile.corpus(str(canary), bomb_size=BOMB)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return tmp_path_factory.mktemp("hostile-store")


@pytest.fixture(autouse=True)
def bounded_disk(store, monkeypatch):
    """Let an unpack write at most ~160 MiB more than what is on the disk now: the 1 GiB
    bombs and the 1 TiB sparse file must stop there with a clear error (the margins leave
    room for what other processes write or delete meanwhile)."""
    from pybk.core.fs import diskguard

    free, _ = diskguard.reserve(str(store))
    monkeypatch.setattr(diskguard, "MIN_FREE_BYTES", max(free - (160 << 20), 0))
    monkeypatch.setattr(diskguard, "MIN_FREE_RATIO", 0.0)
    monkeypatch.setattr(diskguard, "CHECK_EVERY", 8 << 20)


NAMES = [c.name for c in hostile.corpus("/canary", bomb_size=1)]


def _reset(canary: Path) -> dict[str, tuple]:
    shutil.rmtree(canary, ignore_errors=True)
    canary.mkdir()
    (canary / "secret").write_text("do not touch\n")
    (canary / "victim").write_text("do not overwrite\n")
    return _snapshot(canary)


def _snapshot(canary: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(canary):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(canary))] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777,
                                               st.st_nlink, p.read_bytes()
                                               if stat.S_ISREG(st.st_mode) else None)
    return out


def _diff_id(case: hostile.Case) -> str:
    """The sha256 of the uncompressed tar, streamed (a bomb is never held in memory); for a
    stream too damaged to decompress, of the bytes themselves (the pull fails either way)."""
    digest = hashlib.sha256()
    try:
        raw = io.BytesIO(case.data)
        if case.compression == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif case.compression == "zstd":
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            stream = raw
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    except Exception:  # noqa: BLE001 - a corrupt case
        return "sha256:" + hashlib.sha256(case.data).hexdigest()
    return "sha256:" + digest.hexdigest()


def write_layout(case: hostile.Case, layout: Path, config: dict | None = None) -> None:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = {"mediaType": MEDIA[case.compression], **blob(case.data)}
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [_diff_id(case)]}, **(config or {})}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **blob(json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer]}
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **blob(json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": "latest"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def _build(capsys, store: Path, ctx: Path, out: Path, *extra: str) -> tuple[int, str]:
    try:
        code = main(["--root", str(store), "build", "--progress", "plain", *extra,
                     "-o", f"type=local,dest={out}", str(ctx)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _record(case: hostile.Case, code: int, log: str) -> None:
    """With $PYBK_HOSTILE_REPORT set, append one JSON line per build (for the figures)."""
    report = os.environ.get("PYBK_HOSTILE_REPORT")
    if not report:
        return
    errors = [line.strip() for line in log.splitlines() if line.startswith(("ERROR", "error"))]
    with open(report, "a") as f:
        f.write(json.dumps({"case": case.name, "test": os.environ.get("PYTEST_CURRENT_TEST",
                            "").split("::")[-1].split("[")[0], "code": code,
                            "error": errors[0][:200] if errors else None}) + "\n")


def _check(case: hostile.Case, code: int, log: str, before: dict, canary: Path, out: Path
           ) -> None:
    _record(case, code, log)
    assert "Traceback" not in log, log[-3000:]
    assert code in (0, 1, 2), (code, log[-3000:])
    assert _snapshot(canary) == before, f"{case.name} changed the canary: {_snapshot(canary)}"
    if code != 0:
        lines = [line for line in log.splitlines() if "error" in line.lower()]
        assert lines, log[-2000:]
    if code == 0 and out.exists():
        total = 0
        for dirpath, dirs, files in os.walk(out):
            for name in dirs + files:
                p = Path(dirpath) / name
                if p.is_symlink():
                    continue  # a symlink's text is content, not an escape
                assert p.resolve().is_relative_to(out.resolve())
                if p.is_file():
                    total += p.stat().st_size
        assert total <= BOMB + (1 << 20)
    if case.bomb:
        assert code != 0 and "stopped unpacking" in log, log[-2000:]


@pytest.mark.parametrize("name", NAMES)
def test_add_local_archive(name, cases, canary, store, tmp_path, capsys):
    case = cases[name]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "x.tar").write_bytes(case.data)
    (ctx / "Dockerfile").write_text("FROM scratch\nADD x.tar /\n")
    before = _reset(canary)
    out = tmp_path / "out"
    code, log = _build(capsys, store, ctx, out)
    _check(case, code, log, before, canary, out)


@pytest.mark.parametrize("name", NAMES)
def test_oci_layout_layer(name, cases, canary, store, tmp_path, capsys):
    case = cases[name]
    layout = tmp_path / "layout"
    write_layout(case, layout)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\n")
    before = _reset(canary)
    out = tmp_path / "out"
    code, log = _build(capsys, store, ctx, out, "--build-context",
                       f"base=oci-layout://{layout}")
    _check(case, code, log, before, canary, out)


@pytest.mark.parametrize("name", NAMES)
def test_registry_layer(name, cases, canary, store, registry, tmp_path, capsys):
    from support.busybox import push_oci_layout

    case = cases[name]
    layout = tmp_path / "layout"
    write_layout(case, layout)
    ref = f"{registry.host}/hostile/{name}:latest"
    push_oci_layout(layout, ref)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
    before = _reset(canary)
    out = tmp_path / "out"
    code, log = _build(capsys, store, ctx, out)
    _check(case, code, log, before, canary, out)


@pytest.mark.parametrize("config", [
    {"config": {"WorkingDir": {"a": 1}}}, {"config": {"Env": ["A=1", 2]}},
    {"architecture": 0}, {"config": "text"}, {"config": {"OnBuild": [["RUN", "x"]]}},
    {"history": 1.5},
    {"rootfs": {"type": "layers", "diff_ids": []}},
    {"rootfs": {"type": "layers", "diff_ids": [5]}},
    {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}},
    {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]}},
])
def test_oci_layout_with_a_malformed_config(config, cases, canary, store, tmp_path, capsys):
    layout = tmp_path / "layout"
    write_layout(cases["gzip-good"], layout, config)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\nWORKDIR sub\n")
    code, log = _build(capsys, store, ctx, tmp_path / "out", "--build-context",
                       f"base=oci-layout://{layout}")
    assert code in (1, 2) and "Traceback" not in log, log[-2000:]
    if "rootfs" in config:  # the layers do not match the config: the pull fails
        assert "error" in log.lower(), log[-2000:]
        if len(config["rootfs"]["diff_ids"]) == 1 and isinstance(config["rootfs"]["diff_ids"][0], str):
            assert "(diff_id) digest is" in log, log[-2000:]
    else:
        assert "Dockerfile:1" in log and "invalid image config" in log, log[-2000:]
