"""fetch_http against a local http.server thread (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import http.server
import os
import stat
import threading
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.solver.sources import fetch_http

BODY = b"hello from the server\n" * 100
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


class _Handler(http.server.BaseHTTPRequestHandler):
    full_bodies: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if self.path == "/missing":
            self.send_response(404)
            self.end_headers()
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/files/app.tar.gz")
            self.end_headers()
            return
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("ETag", '"v1"')
        self.send_header("Last-Modified", LAST_MODIFIED)
        if self.path.startswith("/download"):
            self.send_header("Content-Disposition", 'attachment; filename="report.csv"')
        self.end_headers()
        type(self).full_bodies.append(self.path)
        self.wfile.write(BODY)


@pytest.fixture
def server():
    _Handler.full_bodies = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_with_matching_checksum(tmp_path, server):
    digest, path = fetch_http(f"{server}/files/app.tar.gz", tmp_path / "out", checksum=DIGEST)
    assert digest == DIGEST
    assert path == str(tmp_path / "out" / "app.tar.gz")
    st = os.lstat(path)
    assert Path(path).read_bytes() == BODY
    assert stat.S_IMODE(st.st_mode) == 0o600  # BuildKit's default for ADD <url>
    assert st.st_mtime == 1445412480  # Last-Modified
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert os.listdir(tmp_path / "out") == ["app.tar.gz"]  # no temporary file left


def test_checksum_mismatch_is_an_error_and_leaves_nothing(tmp_path, server):
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BuildError, match=f"digest mismatch .*expected {wrong}, got {DIGEST}"):
        fetch_http(f"{server}/files/app.tar.gz", tmp_path / "out", checksum=wrong)
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(BuildError, match="invalid checksum 'md5:abc'"):
        fetch_http(f"{server}/files/app.tar.gz", tmp_path / "out", checksum="md5:abc")


def test_filenames_perm_and_owner(tmp_path, server):
    _, from_header = fetch_http(f"{server}/download?id=3", tmp_path / "a")
    assert os.path.basename(from_header) == "report.csv"
    _, explicit = fetch_http(f"{server}/download", tmp_path / "b", filename="mine.txt", perm=0o644,
                             uid=1000, gid=1001)
    st = os.lstat(explicit)
    assert os.path.basename(explicit) == "mine.txt" and stat.S_IMODE(st.st_mode) == 0o644
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1000, 1001)
    _, unnamed = fetch_http(f"{server}/", tmp_path / "c")
    assert os.path.basename(unnamed) == "__unnamed__"
    _, redirected = fetch_http(f"{server}/redirect", tmp_path / "d")
    assert os.path.basename(redirected) == "redirect"  # the name comes from the requested URL
    with pytest.raises(BuildError, match="invalid filename"):
        fetch_http(f"{server}/files/x", tmp_path / "e", filename="../escape")


def test_http_errors(tmp_path, server):
    with pytest.raises(BuildError, match="invalid response status 404"):
        fetch_http(f"{server}/missing", tmp_path / "out")
    with pytest.raises(BuildError, match="failed to fetch http://127.0.0.1:9/"):
        fetch_http("http://127.0.0.1:9/x", tmp_path / "out")


def test_etag_cache_avoids_downloading_again(tmp_path, server):
    cache = tmp_path / "etags"
    first = fetch_http(f"{server}/files/app.tar.gz", tmp_path / "one", etag_cache=cache)
    second = fetch_http(f"{server}/files/app.tar.gz", tmp_path / "two", etag_cache=cache,
                        checksum=DIGEST)
    assert first[0] == second[0] == DIGEST
    assert Path(second[1]).read_bytes() == BODY
    assert os.lstat(second[1]).st_mtime == 1445412480
    assert _Handler.full_bodies == ["/files/app.tar.gz"]  # the second answer was a 304
