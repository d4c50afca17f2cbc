"""Private sources through ``pybk build``, against a real git server over smart HTTP (``git
http-backend`` behind a server on 127.0.0.1 that answers 401 without the right
``Authorization`` header) and a file server under the same rule:

- ``ADD``/``--build-context`` of a private repository: without a secret the build fails and
  names the secrets it looked for; with ``GIT_AUTH_TOKEN`` (or ``GIT_AUTH_TOKEN.<host>``, or
  ``GIT_AUTH_HEADER``) the files arrive, submodules included (``?submodules=false`` skips them),
  ``.git`` only with ``--keep-git-dir=true``;
- ``ADD`` of a private file with ``HTTP_AUTH_TOKEN_<host>`` / ``HTTP_AUTH_HEADER_<host>``;
- the token is nowhere afterwards: not in the store, the outputs, the log."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.engine import need_runc
from support.githttp import GitHTTPServer, bare_repo, git, require_git_http_backend

TOKEN = "tok-5f1e9a0c2d7b"
BASIC = "basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
FILE_TOKEN = "ftok-8e2b61c4d09a"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_runc()  # the builds' store needs root (snapshots)
    require_git_http_backend()
    base = tmp_path_factory.mktemp("git")
    root = base / "repos"
    root.mkdir()
    srv = GitHTTPServer(root)
    bare_repo(root, "lib.git", {"LIB.md": "the library\n"})
    srv.commit = bare_repo(root, "app.git", {"hello.txt": "private hello\n",
                                             "src/main.sh": "echo main\n"},
                           submodules={"vendor/lib": f"{srv.url}/lib.git"})
    srv.private.add("app.git")
    srv.accepted.update({BASIC, "Bearer header-9c3d", f"Bearer {FILE_TOKEN}"})
    srv.files["private.txt"] = b"private file\n"
    srv.private.add("private.txt")
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


def _build(store, tmp_path, dockerfile: str, *args: str, env: dict | None = None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pybk.core.cli.entry", "--root", str(store), "build",
         "--progress", "plain", *args, "-o", f"type=local,dest={out}", str(ctx)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    return done, out


def _nowhere(store, out, done, *values: str) -> None:
    needles = [v.encode() for value in values
               for v in (value, base64.b64encode(f"x-access-token:{value}".encode()).decode())]
    for root in (store, out):
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        data = f.read()
                    assert not any(n in data for n in needles), path
    assert not any(n.decode() in done.stdout + done.stderr for n in needles)


def test_a_private_repository_without_credentials_fails_naming_the_secrets(server, store,
                                                                            tmp_path):
    done, _ = _build(store, tmp_path, f"FROM scratch\nADD {server.url}/app.git /src\n")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "failed to fetch" in done.stderr
    assert "no credentials were given" in done.stderr and "GIT_AUTH_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_private_repository_with_a_token(server, store, tmp_path):
    server.seen.clear()
    done, out = _build(store, tmp_path, f"FROM scratch\nADD {server.url}/app.git /src\n",
                       "--no-cache", "--secret", "id=GIT_AUTH_TOKEN,env=TOK", env={"TOK": TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "src" / "hello.txt").read_text() == "private hello\n"
    assert (out / "src" / "src" / "main.sh").read_text() == "echo main\n"
    assert (out / "src" / "vendor" / "lib" / "LIB.md").read_text() == "the library\n"
    assert not (out / "src" / ".git").exists()
    assert not (out / "src" / "vendor" / "lib" / ".git").exists()
    # the header went to the private repository only (BuildKit's scope: the remote)
    assert any(path.startswith("/app.git") and header == BASIC for path, header in server.seen)
    assert all(header is None for path, header in server.seen if path.startswith("/lib.git"))
    _nowhere(store, out, done, TOKEN)


def test_per_host_token_header_secret_and_skipped_submodules(server, store, tmp_path):
    host = server.url.split("://", 1)[1]
    done, out = _build(store, tmp_path,
                       f"FROM scratch\nADD {server.url}/app.git?submodules=false /src\n",
                       "--no-cache", "--secret", f"id=GIT_AUTH_TOKEN.{host},env=TOK",
                       env={"TOK": TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "src" / "hello.txt").read_text() == "private hello\n"
    assert os.listdir(out / "src" / "vendor" / "lib") == []
    # a token for another host is not used
    done, _ = _build(store, tmp_path / "other", f"FROM scratch\nADD {server.url}/app.git /s\n",
                     "--no-cache", "--secret", "id=GIT_AUTH_TOKEN.example.com,env=TOK",
                     env={"TOK": TOKEN})
    assert done.returncode == 1 and "GIT_AUTH_TOKEN" in done.stderr
    # GIT_AUTH_HEADER: the header's value as it is
    done, out = _build(store, tmp_path / "header",
                       f"FROM scratch\nADD {server.url}/app.git /src\n", "--no-cache",
                       "--secret", "id=GIT_AUTH_HEADER,env=HDR", env={"HDR": "Bearer header-9c3d"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "src" / "hello.txt").read_text() == "private hello\n"
    # a refused credential says so
    done, _ = _build(store, tmp_path / "wrong", f"FROM scratch\nADD {server.url}/app.git /s\n",
                     "--no-cache", "--secret", "id=GIT_AUTH_TOKEN,env=TOK", env={"TOK": "nope"})
    assert done.returncode == 1 and "the credentials given were refused" in done.stderr


def test_keep_git_dir_and_a_git_build_context(server, store, tmp_path):
    done, out = _build(store, tmp_path,
                       f"FROM scratch\nADD --keep-git-dir=true {server.url}/app.git /src\n"
                       "COPY --from=app hello.txt /ctx-hello.txt\n",
                       "--no-cache", "--secret", "id=GIT_AUTH_TOKEN,env=TOK",
                       "--build-context", f"app={server.url}/app.git", env={"TOK": TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "ctx-hello.txt").read_text() == "private hello\n"
    src = out / "src"
    assert git(src, "rev-parse", "HEAD") == server.commit
    assert git(src, "remote", "get-url", "origin") == f"{server.url}/app.git"
    assert (src / "vendor" / "lib" / "LIB.md").read_text() == "the library\n"
    assert TOKEN not in (src / ".git" / "config").read_text()
    _nowhere(store, out, done, TOKEN)


def test_bad_submodules_value_is_located(server, store, tmp_path):
    done, _ = _build(store, tmp_path, f"FROM scratch\nADD {server.url}/app.git?submodules=maybe /s\n")
    assert done.returncode != 0 and "invalid submodules value" in done.stderr
    assert "Dockerfile:2" in done.stderr and "Traceback" not in done.stderr


def test_add_of_a_private_http_file(server, store, tmp_path):
    host = "127.0.0.1"
    dockerfile = f"FROM scratch\nADD {server.url}/files/private.txt /f.txt\n"
    done, _ = _build(store, tmp_path, dockerfile, "--no-cache")
    assert done.returncode == 1 and "401" in done.stderr and "Traceback" not in done.stderr
    done, out = _build(store, tmp_path / "token", dockerfile, "--no-cache",
                       "--secret", f"id=HTTP_AUTH_TOKEN_{host},env=TOK", env={"TOK": FILE_TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "f.txt").read_text() == "private file\n"
    done, out = _build(store, tmp_path / "header", dockerfile, "--no-cache",
                       "--secret", f"id=HTTP_AUTH_HEADER_{host},env=HDR",
                       env={"HDR": "Bearer header-9c3d"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "f.txt").read_text() == "private file\n"
    _nowhere(store, out, done, FILE_TOKEN)


def test_which_secret_becomes_which_header(tmp_path, server):
    """BuildKit's lookup order and forms, and the explicit ``http.authheadersecret`` of an LLB
    http source (fetched from the server with the header it makes)."""
    from pybk.core.errors import BuildError
    from pybk.core.solver import sources

    attrs = {"git.authheadersecret": "GIT_AUTH_HEADER", "git.authtokensecret": "GIT_AUTH_TOKEN"}
    url = "https://git.example.com:8443/team/app.git"
    every = {"GIT_AUTH_HEADER.git.example.com:8443": b"h-host", "GIT_AUTH_TOKEN.git.example.com:8443": b"t",
             "GIT_AUTH_HEADER": b"h", "GIT_AUTH_TOKEN": b"t2"}
    header, names = sources.git_auth(url, attrs, every)
    assert header == "h-host" and names[0] == "GIT_AUTH_HEADER.git.example.com:8443"
    del every["GIT_AUTH_HEADER.git.example.com:8443"]
    assert sources.git_auth(url, attrs, every)[0] == "basic " + base64.b64encode(
        b"x-access-token:t").decode()
    assert sources.git_auth("git@git.example.com:team/app.git", attrs, every) == (None, [])
    assert sources._auth_env("https://github.com/o/r.git", "h")["GIT_CONFIG_KEY_0"] == \
        "http.https://github.com/.extraheader"
    assert sources._auth_env(url, "h")["GIT_CONFIG_KEY_0"] == f"http.{url}.extraheader"
    # http: the explicit secret, else HTTP_AUTH_TOKEN_<hostname> (Bearer) over the header
    file_url = f"{server.url}/files/private.txt"
    explicit = {"http.authheadersecret": "MY_HEADER"}
    with pytest.raises(BuildError, match="failed to retrieve HTTP auth secret MY_HEADER"):
        sources.http_auth(file_url, explicit, {})
    auth = sources.http_auth(file_url, explicit, {"MY_HEADER": b"Bearer header-9c3d"})
    _, path = sources.fetch_http(file_url, tmp_path / "dl", auth=auth)
    assert Path(path).read_bytes() == b"private file\n"
    assert sources.http_auth(file_url, {}, {"HTTP_AUTH_HEADER_127.0.0.1": b"x",
                                            "HTTP_AUTH_TOKEN_127.0.0.1": b"y"}) == "Bearer y"
    with pytest.raises(BuildError, match="401"):
        sources.fetch_http(file_url, tmp_path / "dl2")
