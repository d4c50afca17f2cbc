"""A git server over smart HTTP on 127.0.0.1 for tests: ``git http-backend`` (CGI) behind a
threaded Python HTTP server. Repositories under ``root`` whose names are in ``private`` answer
401 unless the request's ``Authorization`` header is one of ``accepted``; every request's path
and header are recorded (``seen``). Also serves plain files from ``files`` (``/files/NAME``)
under the same rule when NAME is in ``private``."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

from support.pythonimage import skip_or_fail

BACKEND = "/usr/lib/git-core/git-http-backend"


def require_git_http_backend() -> None:
    if not shutil.which("git") or not os.access(BACKEND, os.X_OK):
        skip_or_fail("git and git http-backend are missing (apt-get install git)")


class GitHTTPServer:
    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, bytes] = {}
        self.private: set[str] = set()
        self.accepted: set[str] = set()
        self.seen: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _allowed(self, name: str) -> bool:
                header = self.headers.get("Authorization")
                server.seen.append((self.path, header))
                return name not in server.private or header in server.accepted

            def _deny(self) -> None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                self._serve()

            def do_POST(self) -> None:  # noqa: N802
                self._serve()

            def _serve(self) -> None:
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/")
                if parts[0] == "files":
                    name = "/".join(parts[1:])
                    if not self._allowed(name):
                        return self._deny()
                    data = server.files.get(name)
                    if data is None:
                        self.send_error(404)
                        return None
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                if not self._allowed(parts[0]):
                    return self._deny()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                       "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query,
                       "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "CONTENT_LENGTH": str(len(body))}
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                done = subprocess.run([BACKEND], input=body, env=env, capture_output=True,
                                      timeout=60)
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo.parent)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def bare_repo(root: Path, name: str, files: dict[str, str], *,
              submodules: dict[str, str] | None = None) -> str:
    """A bare repository ``root/name`` with one commit of ``files`` (and ``submodules``:
    ``{path: url}``, each at its remote's HEAD) on ``main``; its commit sha."""
    work = root.parent / f"work-{name}"
    git(root.parent, "init", "-q", "-b", "main", str(work))
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    git(work, "add", "-A")
    for path, url in (submodules or {}).items():
        git(work, "-c", "protocol.file.allow=always", "submodule", "add", "-q", url, path)
    git(work, "commit", "-q", "-m", "one")
    git(root.parent, "clone", "-q", "--bare", str(work), str(root / name))
    return git(work, "rev-parse", "HEAD")
