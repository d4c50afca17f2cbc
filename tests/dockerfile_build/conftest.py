"""Fixtures for Dockerfile builds: a Client on a fresh store, busybox as a named context, and
``dfbuild`` running the dockerfile.v0 frontend through the same bridge ``pybk build`` uses."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import attrs
import pytest
from support.busybox import layout_manifest
from support.engine import require_runc

from pybk.core import llb
from pybk.frontends.dockerfile.stages import NamedContext


@pytest.fixture
def client(tmp_path):
    require_runc()
    from pybk.core.engine.client import Client

    with Client(root=str(tmp_path / "store")) as c:
        yield c


#: what ``shared_client``'s configuration grants (``insecure-entitlements``), so a test may
#: ask for them with ``dfbuild(..., entitlements=...)``; the ``client`` fixture grants nothing
GRANTED = ["network.host", "security.insecure"]


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    """One store for a module's builds (identical steps are cached across tests), under a
    configuration granting :data:`GRANTED`."""
    require_runc()
    from pybk.core.config.schema import Config
    from pybk.core.engine.client import Client

    root = str(tmp_path_factory.mktemp("store"))
    with Client(root=root, config=Config(root=root, insecure_entitlements=GRANTED)) as c:
        yield c


@pytest.fixture(scope="session")
def busybox_digest(busybox_layout):
    return layout_manifest(busybox_layout)[0]["digest"]


@pytest.fixture(scope="session")
def busybox_context(busybox_layout, busybox_digest):
    """``{"busybox": NamedContext}`` for the busybox layout, with its image config."""
    _, manifest = layout_manifest(busybox_layout)
    config_digest = json.loads(manifest)["config"]["digest"].split(":", 1)[1]
    config = json.loads((busybox_layout / "blobs" / "sha256" / config_digest).read_text())
    state = llb.oci_layout(f"busybox@{busybox_digest}", store_id="base")
    return {"busybox": NamedContext(state, config)}


@attrs.frozen
class Built:
    out: Path
    config: dict
    result: object
    warnings: list[str]
    definition: object
    context: Path

    @property
    def cfg(self) -> dict:
        return self.config["config"]

    def mode(self, path: str) -> int:
        return (self.out / path.lstrip("/")).lstat().st_mode & 0o7777

    def owner(self, path: str) -> tuple[int, int]:
        st = (self.out / path.lstrip("/")).lstat()
        return st.st_uid, st.st_gid

    def text(self, path: str) -> str:
        return (self.out / path.lstrip("/")).read_text()

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.out / path.lstrip("/"))

    def ops(self) -> list[dict]:
        from pybk.core.llb.dump import dump_llb

        return [json.loads(line) for line in dump_llb(self.definition.to_bytes()).splitlines()]


def write_tree(root: Path, files: dict) -> None:
    """``{path: text | bytes | ("symlink", target) | ("hardlink", other) | (data, mode)}``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, tuple) and spec[0] == "symlink":
            os.symlink(spec[1], path)
        elif isinstance(spec, tuple) and spec[0] == "hardlink":
            os.link(root / spec[1], path)
        elif isinstance(spec, tuple):
            data, mode = spec
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
            os.chmod(path, mode)
        else:
            path.write_bytes(spec if isinstance(spec, bytes) else spec.encode())


@pytest.fixture
def dfbuild(shared_client, busybox_layout, busybox_digest, tmp_path):
    """Build a Dockerfile through ``DockerfileFrontend`` and ``LocalBridge``; returns Built."""
    from pybk.core.engine.build import LocalBridge
    from pybk.core.interfaces import FrontendRequest
    from pybk.frontends.dockerfile.frontend import DockerfileFrontend

    counter = iter(range(1000))

    def run(dockerfile: str, files: dict | None = None, *, opts: dict | None = None,
            filename: str = "Dockerfile", secrets: dict | None = None, ssh: dict | None = None,
            entitlements=(), client=None, progress=None, context: Path | None = None,
            extra_locals: dict | None = None) -> Built:
        n = next(counter)
        if context is None:
            context = tmp_path / f"ctx{n}"
            write_tree(context, files or {})
            (context / filename).write_text(dockerfile)
        solver = client or shared_client
        local_dirs = {"context": str(context), "dockerfile": str(context), **(extra_locals or {})}
        layouts = {"base": str(busybox_layout)}
        bridge = LocalBridge(local_dirs=local_dirs, oci_layouts=layouts, config=None,
                             client=solver)
        all_opts = {"filename": filename, "context:busybox": f"oci-layout://base@{busybox_digest}",
                    **(opts or {})}
        answer = DockerfileFrontend().solve(FrontendRequest(opts=all_opts), bridge)
        result = solver.solve(answer.definition, local_dirs=local_dirs, oci_layouts=layouts,
                              secrets=secrets, ssh=ssh or {}, entitlements=entitlements,
                              image_config=answer.image_config, progress=progress)
        out = tmp_path / f"out{n}"
        solver.export_local(result, out)
        return Built(out, dict(result.image_config), result, bridge.warnings,
                     answer.definition, context)

    return run


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """``(directory, base URL)`` of an HTTP server on 127.0.0.1 serving that directory."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory):
    """A git repository served by ``git daemon`` on 127.0.0.1: ``(git:// URL, commit sha)``."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    write_tree(work, {"README": "from git\n", "src/main.sh": ("echo main\n", 0o755)})
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(*args, cwd=work):
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    git("tag", "v1")
    served = root / "served"
    served.mkdir()
    git("clone", "-q", "--bare", str(work), str(served / "repo.git"), cwd=root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={served}",
         "--listen=127.0.0.1", f"--port={port}", str(served)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            break
        time.sleep(0.05)
    yield f"git://127.0.0.1:{port}/repo.git", git("rev-parse", "HEAD")
    daemon.terminate()
    daemon.wait(timeout=10)
