"""GHACacheFileSystem against the test cache service, over protocol v1 and v2 (with Azurite)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import fsspec
import pytest
from support.ghacache import READ, WRITE, GHACacheServer

from pybk.cachebackends.gha import (
    CACHE_VERSION,
    GHACacheError,
    GHACacheFileSystem,
    parse_timeout,
)

MAIN = "refs/heads/main"
MiB = 1024 * 1024

MakeFS = Callable[..., GHACacheFileSystem]


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def make_fs(request: pytest.FixtureRequest, gha: GHACacheServer) -> MakeFS:
    def make(token: str | None = None, *, version: int = request.param, **options: Any) -> GHACacheFileSystem:
        token = token or gha.mint_token([(MAIN, READ | WRITE)])
        return GHACacheFileSystem(url=gha.url, url_v2=gha.url_v2, token=token, version=str(version),
                                  skip_instance_cache=True, **options)
    make.version = request.param  # type: ignore[attr-defined]
    return make


def blob_path(data: bytes) -> str:
    return f"blobs/sha256:{hashlib.sha256(data).hexdigest()}"


def uploads(gha: GHACacheServer) -> int:
    """Entries created plus v1 chunks received."""
    return gha.stats["reserve"] + gha.stats["create"] + gha.stats["upload_chunk"]


def test_small_round_trip_and_info(make_fs: MakeFS, gha: GHACacheServer) -> None:
    fs = make_fs()
    data = b'{"layers": []}\n'
    path = blob_path(data)
    fs.pipe_file(path, data)
    assert fs.cat_file(path) == data
    assert fs.cat_file(path, start=2, end=8) == data[2:8]
    assert fs.exists(path) and fs.exists(f"gha://{path}")
    info = fs.info(path)
    assert info["size"] == len(data) and info["type"] == "file"
    assert info["key"] == "buildkit-blob-1-" + path[len("blobs/"):]
    assert gha.saved_keys(MAIN) == [info["key"]]
    assert {e.version for e in gha.entries} == {CACHE_VERSION}
    assert fs.ls(path, detail=False) == [path]
    with fs.open(path, "rb") as f:
        assert f.read() == data


def test_large_round_trip_chunked(make_fs: MakeFS, gha: GHACacheServer) -> None:
    fs = make_fs(chunk_size=4 * MiB, upload_concurrency=3)
    data = os.urandom(20 * MiB)
    path = blob_path(data)
    with fs.open(path, "wb") as f:
        for offset in range(0, len(data), 3 * MiB):
            f.write(data[offset:offset + 3 * MiB])
    if make_fs.version == 1:  # type: ignore[attr-defined]
        assert gha.stats["upload_chunk"] >= 5 and gha.stats["upload_bytes"] == len(data)
    else:
        assert gha.stats["create"] == 1 and gha.stats["finalize"] == 1
    assert fs.info(path)["size"] == len(data)
    with fs.open(path, "rb", block_size=MiB) as f:
        f.seek(13 * MiB + 5)
        assert f.read(1000) == data[13 * MiB + 5:13 * MiB + 1005]
    assert hashlib.sha256(fs.cat_file(path)).digest() == hashlib.sha256(data).digest()


def test_missing_entry(make_fs: MakeFS) -> None:
    fs = make_fs()
    path = blob_path(b"never written")
    assert not fs.exists(path)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(path)
    with pytest.raises(FileNotFoundError):
        fs.info(path)
    with pytest.raises(FileNotFoundError):
        fs.open(path, "rb")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("index")


def test_lookup_prefix_does_not_leak_into_other_blobs(make_fs: MakeFS) -> None:
    fs = make_fs()
    path = blob_path(b"layer")
    fs.pipe_file(path + "-sig", b"signature")
    assert fs.cat_file(path + "-sig") == b"signature"
    assert not fs.exists(path)


def test_existing_blob_is_not_uploaded_twice(make_fs: MakeFS, gha: GHACacheServer) -> None:
    data = os.urandom(100_000)
    path = blob_path(data)
    make_fs().pipe_file(path, data)
    before = uploads(gha)
    assert before >= 1
    other = make_fs()
    with other.open(path, "wb") as f:
        f.write(data)
    assert f.skipped
    assert uploads(gha) == before
    assert gha.saved_keys() == ["buildkit-blob-1-" + path[len("blobs/"):]]
    assert other.cat_file(path) == data


def test_index_is_mutable_and_versioned(make_fs: MakeFS, gha: GHACacheServer) -> None:
    fs = make_fs()
    fs.pipe_file("index", b'{"v": 1}')
    fs.pipe_file("index", b'{"v": 2}')
    assert fs.cat_file("index") == b'{"v": 2}'
    base = f"index-buildkit-1-{hashlib.sha256(MAIN.encode()).hexdigest()[:8]}"
    assert gha.saved_keys(MAIN) == [f"{base}#1", f"{base}#2"]
    assert fs.cat_file(base) == b'{"v": 2}'
    fs.pipe_file("manifests/web", b"web-cache")
    assert gha.saved_keys(MAIN)[-1] == base.replace("buildkit", "web") + "#1"
    assert fs.cat_file("manifests/web") == b"web-cache"
    with pytest.raises(GHACacheError, match="not an object the gha cache stores"):
        fs.pipe_file("random/name", b"x")


def test_scope_isolation(make_fs: MakeFS, gha: GHACacheServer) -> None:
    data = b"main branch layer"
    path = blob_path(data)
    main = make_fs(gha.mint_token([(MAIN, READ | WRITE)]))
    main.pipe_file(path, data)
    main.pipe_file("index", b"main-index")

    feature = make_fs(gha.mint_token([("refs/heads/feature", READ | WRITE)]))
    assert not feature.exists(path)
    assert not feature.exists("index")

    pr = make_fs(gha.mint_token([(MAIN, READ), ("refs/pull/3/merge", READ | WRITE)]))
    assert pr.cat_file(path) == data
    main_index, pr_index = pr.index_paths()
    assert pr.cat_file(main_index) == b"main-index"
    assert not pr.exists(pr_index) and not pr.exists("index")
    pr.pipe_file("index", b"pr-index")
    assert pr.cat_file(pr_index) == b"pr-index"
    assert main.cat_file("index") == b"main-index"
    assert gha.saved_keys("refs/pull/3/merge") == [pr_index + "#1"]


def test_bad_token_is_a_clear_error(make_fs: MakeFS, gha: GHACacheServer) -> None:
    good = gha.mint_token()
    forged = make_fs(good[:-6] + "AAAAAA")
    with pytest.raises(GHACacheError, match="rejected the token") as err:
        forged.exists(blob_path(b"x"))
    assert err.value.status == 401
    with pytest.raises(GHACacheError, match="not an Actions runtime token"):
        make_fs("not-a-token")
    expired = GHACacheServer.mint_token(gha, expires_in=-10)
    with pytest.raises(GHACacheError, match="expired"):
        make_fs(expired)


def test_read_only_token_cannot_write(make_fs: MakeFS, gha: GHACacheServer) -> None:
    fs = make_fs(gha.mint_token([(MAIN, READ)]))
    with pytest.raises(GHACacheError, match="refused to (reserve|create)") as err:
        fs.pipe_file(blob_path(b"data"), b"data")
    assert err.value.status == 403
    assert "refs/heads/main (r)" in str(err.value)
    assert gha.saved_keys() == []


def test_listing_is_not_available(make_fs: MakeFS) -> None:
    fs = make_fs()
    with pytest.raises(GHACacheError, match="cannot list"):
        fs.ls("blobs")
    assert fs.isdir("blobs")


def test_protocols_share_entries(gha: GHACacheServer) -> None:
    token = gha.mint_token()
    v1 = GHACacheFileSystem(url=gha.url, token=token, skip_instance_cache=True)
    v2 = GHACacheFileSystem(url_v2=gha.url_v2, token=token, skip_instance_cache=True)
    assert (v1.version, v2.version) == (1, 2)
    v1.pipe_file(blob_path(b"from v1"), b"from v1")
    v2.pipe_file(blob_path(b"from v2"), b"from v2")
    assert v2.cat_file(blob_path(b"from v1")) == b"from v1"
    assert v1.cat_file(blob_path(b"from v2")) == b"from v2"


def test_registered_with_fsspec(gha: GHACacheServer) -> None:
    token = gha.mint_token()
    with fsspec.open("gha://index", "wb", url=gha.url, token=token, scope="app") as f:
        f.write(b"cache config")
    fs = fsspec.filesystem("gha", url=gha.url, token=token, scope="app")
    assert isinstance(fs, GHACacheFileSystem)
    assert fs.cat_file("index") == b"cache config"
    assert fs.index_key().startswith("index-app-1-")


def test_options_from_environment(gha: GHACacheServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONS_RUNTIME_TOKEN", gha.mint_token())
    monkeypatch.setenv("ACTIONS_RESULTS_URL", gha.url_v2)
    monkeypatch.setenv("ACTIONS_CACHE_SERVICE_V2", "true")
    fs = GHACacheFileSystem(skip_instance_cache=True)
    assert fs.version == 2 and fs.base_url == gha.url_v2
    monkeypatch.delenv("ACTIONS_CACHE_SERVICE_V2")
    monkeypatch.delenv("ACTIONS_RESULTS_URL")
    with pytest.raises(GHACacheError, match=r"needs url \(\$ACTIONS_CACHE_URL\)"):
        GHACacheFileSystem(skip_instance_cache=True)
    with pytest.raises(GHACacheError, match="version must be 1 or 2"):
        GHACacheFileSystem(url=gha.url, version="3", skip_instance_cache=True)


def test_parse_timeout() -> None:
    assert parse_timeout(None) == 600
    assert parse_timeout("10m") == 600
    assert parse_timeout("1m30s") == 90
    assert parse_timeout("250ms") == 0.25
    assert parse_timeout(5) == 5
    with pytest.raises(GHACacheError, match="not a duration"):
        parse_timeout("ten minutes")


def test_blob_content_must_match_its_digest(make_fs: MakeFS, gha: GHACacheServer) -> None:
    fs = make_fs()
    path = blob_path(b"the real content")
    with pytest.raises(GHACacheError, match="refusing to save"):
        fs.pipe_file(path, b"something else")
    assert not fs.exists(path)
    assert gha.saved_keys() == []


def test_failed_write_commits_nothing(make_fs: MakeFS, gha: GHACacheServer) -> None:
    fs = make_fs(chunk_size=64 * 1024)
    with pytest.raises(RuntimeError, match="producer failed"), fs.open("index", "wb") as f:
        f.write(os.urandom(200_000))
        raise RuntimeError("producer failed")
    assert gha.saved_keys() == []
    assert not fs.exists("index")
