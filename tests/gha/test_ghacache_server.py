"""The test cache service's wire behaviour, driven with plain HTTP."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support.ghacache import READ, WRITE, GHACacheServer

VERSION = "v" * 64
TWIRP = "twirp/github.actions.results.api.v1.CacheService/"


def client(token: str) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {token}",
                                 "Accept": "application/json;api-version=6.0-preview.1"})


def test_v1_reserve_parallel_chunks_commit_lookup_download(gha: GHACacheServer) -> None:
    api = gha.url + "_apis/artifactcache/"
    data = os.urandom(300_000)
    with client(gha.mint_token()) as http:
        assert http.get(api + "cache", params={"keys": "app-", "version": VERSION}).status_code == 204
        reserved = http.post(api + "caches", json={"key": "app-1", "version": VERSION,
                                                   "cacheSize": len(data)})
        cache_id = reserved.json()["cacheId"]

        def put(start: int) -> int:
            chunk = data[start:start + 65536]
            return http.patch(f"{api}caches/{cache_id}", content=chunk, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/*"}).status_code

        with ThreadPoolExecutor(4) as pool:  # out of order and concurrently
            assert set(pool.map(put, reversed(range(0, len(data), 65536)))) == {204}
        bad = http.post(f"{api}caches/{cache_id}", json={"size": len(data) - 1})
        assert bad.status_code == 400 and "does not match" in bad.json()["message"]
        assert http.post(f"{api}caches/{cache_id}", json={"size": len(data)}).status_code == 204

        dup = http.post(api + "caches", json={"key": "app-1", "version": VERSION})
        assert dup.status_code == 409 and "AlreadyExists" in dup.json()["typeKey"]

        found = http.get(api + "cache", params={"keys": "other,app-", "version": VERSION})
        assert found.status_code == 200
        entry = found.json()
        assert (entry["cacheKey"], entry["scope"]) == ("app-1", "refs/heads/main")
        assert http.get(api + "cache", params={"keys": "app-1", "version": "x"}).status_code == 204
        listed = http.get(api + "caches", params={"key": "app-1"}).json()
        assert listed["totalCount"] == 1

    # The archive location is pre-signed: no token, and Range works.
    location = entry["archiveLocation"]
    assert httpx.get(location).content == data
    part = httpx.get(location, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert httpx.get(location.replace("sig=", "sig=0")).status_code == 403


def test_v1_newest_prefix_match_wins(gha: GHACacheServer) -> None:
    api = gha.url + "_apis/artifactcache/"
    with client(gha.mint_token()) as http:
        for key in ("deps", "deps-a", "deps-b"):
            cache_id = http.post(api + "caches", json={"key": key, "version": VERSION}).json()["cacheId"]
            http.post(f"{api}caches/{cache_id}", json={"size": 0})
        keys = lambda k: http.get(api + "cache", params={"keys": k, "version": VERSION}).json()["cacheKey"]  # noqa: E731
        assert keys("deps") == "deps"  # an exact match beats newer prefix matches
        assert keys("deps-") == "deps-b"
        assert keys("nothing,deps-a") == "deps-a"


def test_v1_auth_errors(gha: GHACacheServer) -> None:
    api = gha.url + "_apis/artifactcache/"
    params = {"keys": "k", "version": VERSION}
    assert httpx.get(api + "cache", params=params).status_code == 401
    for token in (gha.mint_token(expires_in=-5), gha.mint_token(not_before=2e10), "a.b.c",
                  GHACacheServer().mint_token()):
        with client(token) as http:
            assert http.get(api + "cache", params=params).status_code == 401
    with client(gha.mint_token([("refs/heads/main", READ)])) as read_only:
        assert read_only.get(api + "cache", params=params).status_code == 204
        denied = read_only.post(api + "caches", json={"key": "k", "version": VERSION})
    assert denied.status_code == 403
    with client(gha.mint_token([("refs/heads/main", WRITE)])) as write_only:
        assert write_only.get(api + "cache", params=params).status_code == 403


def test_v2_twirp_flow_and_errors(gha: GHACacheServer) -> None:
    with client(gha.mint_token()) as http:
        def call(method: str, body: dict[str, object]) -> httpx.Response:
            return http.post(gha.url_v2 + TWIRP + method, content=json.dumps(body),
                             headers={"Content-Type": "application/json"})

        miss = call("GetCacheEntryDownloadURL", {"key": "k", "restore_keys": ["k"], "version": VERSION})
        assert miss.status_code == 200 and miss.json()["ok"] is False
        created = call("CreateCacheEntry", {"key": "k", "version": VERSION}).json()
        assert created["ok"] and "sig=" in created["signed_upload_url"]
        conflict = call("CreateCacheEntry", {"key": "k", "version": VERSION})
        assert conflict.status_code == 409 and conflict.json()["code"] == "already_exists"
        nothing = call("FinalizeCacheEntryUpload", {"key": "k", "size_bytes": "3", "version": VERSION})
        assert nothing.status_code == 400 and "nothing was uploaded" in nothing.json()["msg"]

        put = httpx.put(created["signed_upload_url"], content=b"abc",
                        headers={"x-ms-blob-type": "BlockBlob", "x-ms-version": "2023-11-03"})
        assert put.status_code == 201
        wrong = call("FinalizeCacheEntryUpload", {"key": "k", "size_bytes": "4", "version": VERSION})
        assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_argument"
        done = call("FinalizeCacheEntryUpload", {"key": "k", "size_bytes": "3", "version": VERSION})
        assert done.json() == {"ok": True, "entry_id": str(gha.entries[0].id)}
        hit = call("GetCacheEntryDownloadURL", {"key": "x", "restore_keys": ["x", "k"], "version": VERSION})
        assert hit.json()["matched_key"] == "k"
        assert httpx.get(hit.json()["signed_download_url"]).content == b"abc"

        protobuf = http.post(gha.url_v2 + TWIRP + "CreateCacheEntry", content=b"\x00",
                             headers={"Content-Type": "application/protobuf"})
        assert protobuf.status_code == 404 and protobuf.json()["code"] == "bad_route"
    unauthenticated = httpx.post(gha.url_v2 + TWIRP + "CreateCacheEntry", json={"key": "z"})
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("scopes", [[("refs/heads/main", READ)], [("refs/heads/feature", READ | WRITE)]])
def test_v2_scopes(gha: GHACacheServer, scopes: list[tuple[str, int]]) -> None:
    body = json.dumps({"key": "k", "version": VERSION})
    headers = {"Content-Type": "application/json"}
    with client(gha.mint_token()) as http:
        assert http.post(gha.url_v2 + TWIRP + "CreateCacheEntry", content=body, headers=headers).json()["ok"]
    with client(gha.mint_token(scopes)) as http:
        answer = http.post(gha.url_v2 + TWIRP + "CreateCacheEntry", content=body, headers=headers)
    # The read-only token may not write; the feature branch writes its own scope.
    assert answer.status_code == (403 if scopes[0][1] == READ else 200)
