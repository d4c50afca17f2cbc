"""Secrets never land anywhere: 10 builds with ``RUN --mount=type=secret`` (file and env forms,
distinct random values), through every exporter (local, tar, oci, docker, image into the
store), each with a local cache export and ``--progress rawjson`` logs; then every byte of the
store, the outputs, the cache and the logs (gzip/zstd layers and tarballs opened, recursively)
is scanned for the secret values and their base64 forms: no hit.

As a positive control the builds write the sha256 of each secret into the image, and the scan
finds those digests in the outputs (the secrets were really mounted, and the scan really
reads the layers)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets as pysecrets
import tarfile
from pathlib import Path

from support.engine import require_runc

from pybk.core.cli.commands import main

EXPORTERS = ["local", "tar", "oci", "docker", "image"]
BUILDS = 10
_LIMIT = 512 << 20  # no single decompressed blob in these builds comes near this


def needles(value: bytes) -> list[bytes]:
    """``value`` and its base64 forms at the three byte alignments inside a longer text."""
    out = [value]
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + value)
        inner = enc[4 if k else 0:-4]
        out += [inner, inner.replace(b"+", b"-").replace(b"/", b"_")]
    return out


def _unpack(data: bytes) -> bytes | None:
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            return f.read(_LIMIT)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(_LIMIT)
    return None


def blobs(data: bytes, where: str):
    """``(where, bytes)`` of ``data`` and of everything inside it (compressed, tar members)."""
    yield where, data
    inner = None
    try:
        inner = _unpack(data)
    except Exception:  # noqa: BLE001 - not really compressed
        inner = None
    if inner is not None:
        yield from blobs(inner, where + "!unpacked")
        return
    if len(data) >= 512 and data[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    if member.isfile():
                        f = tar.extractfile(member)
                        if f is not None:
                            yield from blobs(f.read(), f"{where}!{member.name}")
        except tarfile.TarError:
            pass


def scan_tree(root: Path):
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield from blobs(path.read_bytes(), str(path))


def test_secrets_never_persist(tmp_path, busybox_layout, capsys, monkeypatch):
    require_runc()
    root = tmp_path / "store"
    cache = tmp_path / "cache"
    outputs = tmp_path / "out"
    outputs.mkdir()
    logs = []
    values: list[bytes] = []
    digests: list[bytes] = []
    for i in range(BUILDS):
        file_secret = pysecrets.token_hex(24).encode()
        env_secret = pysecrets.token_hex(24).encode()
        values += [file_secret, env_secret]
        digests += [hashlib.sha256(file_secret).hexdigest().encode(),
                    hashlib.sha256(env_secret).hexdigest().encode()]
        ctx = tmp_path / f"ctx{i}"
        ctx.mkdir()
        (tmp_path / f"secret{i}").write_bytes(file_secret)
        monkeypatch.setenv("PYBK_TEST_SECRET", env_secret.decode())
        (ctx / "Dockerfile").write_text(
            "FROM busybox\n"
            f"RUN --mount=type=secret,id=file{i} "
            f"sha256sum /run/secrets/file{i} | cut -c1-64 > /file.sha && echo build {i}\n"
            f"RUN --mount=type=secret,id=envsecret,env=TOKEN,required=true "
            "printf %s \"$TOKEN\" | sha256sum | cut -c1-64 > /env.sha && "
            "echo token length ${#TOKEN}\n"
            f"RUN --mount=type=secret,id=file{i},target=/tmp/s --mount=type=cache,target=/c "
            "echo $RANDOM > /c/h && wc -c /tmp/s\n")
        kind = EXPORTERS[i % len(EXPORTERS)]
        dest = outputs / f"{i}-{kind}"
        output = {
            "local": f"type=local,dest={dest}",
            "tar": f"type=tar,dest={dest}.tar",
            "oci": f"type=oci,dest={dest}.tar,name=pybk.test/secret:{i}",
            "docker": f"type=docker,dest={dest}.tar,name=pybk.test/secret:{i}",
            "image": f"type=image,name=pybk.test/secret:{i}",
        }[kind]
        code = main(["--root", str(root), "build", "--progress", "rawjson",
                     "--build-context", f"busybox=oci-layout://{busybox_layout}",
                     "--secret", f"id=file{i},src={tmp_path / f'secret{i}'}",
                     "--secret", "id=envsecret,env=PYBK_TEST_SECRET",
                     "-o", output, "--cache-to", f"type=local,dest={cache},mode=max",
                     str(ctx)])
        captured = capsys.readouterr()
        assert code == 0, captured.err[-3000:]
        logs.append(captured.out.encode() + captured.err.encode())
        (outputs / f"log{i}.json").write_bytes(logs[-1])
        # rawjson carries the RUN output base64-encoded: keep it decoded too (scanned below)
        decoded = b"".join(base64.b64decode(entry["data"])
                           for line in logs[-1].splitlines() if line.startswith(b"{")
                           for entry in json.loads(line).get("logs") or [])
        (outputs / f"log{i}.decoded").write_bytes(decoded)
        assert b"token length 48" in decoded and b"48 /tmp/s" in decoded

    pats = [n for v in values for n in needles(v)]
    hits: list[str] = []
    found_digests: set[bytes] = set()
    scanned = {"files": 0, "bytes": 0}
    for tree in (root, outputs, cache):
        for where, data in scan_tree(tree):
            scanned["files"] += 1
            scanned["bytes"] += len(data)
            for p in pats:
                if p in data:
                    hits.append(f"{where}: {p[:12]!r}…")
            for d in digests:
                if d in data:
                    found_digests.add(d)
    print(json.dumps({"builds": BUILDS, "secrets": len(values), "patterns": len(pats),
                      "scanned": scanned, "hits": len(hits)}))
    assert not hits, "\n".join(hits[:20])
    # the control: every secret was mounted and its digest reached an exported image
    assert found_digests == set(digests)
