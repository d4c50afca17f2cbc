"""The test cache service is faithful: the real ``@actions/cache`` npm client saves and restores
through it, over v1 REST and over v2 Twirp with Azurite blob uploads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.ghacache import READ, WRITE, GHACacheServer

JS_DIR = Path(__file__).resolve().parent / "js"
NPM_CACHE_ROOT = Path(os.environ.get("PYBK_NPM_CACHE", "/tmp/pybk-npm-cache"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_client() -> Path:
    """The Node driver script inside a directory where ``@actions/cache`` is installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the real @actions/cache client")
    package = (JS_DIR / "package.json").read_bytes()
    target = NPM_CACHE_ROOT / f"gha-client-{hashlib.sha256(package).hexdigest()[:12]}"
    stamp = target / ".installed"
    if not stamp.exists():
        target.mkdir(parents=True, exist_ok=True)
        (target / "package.json").write_bytes(package)
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=target, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"npm install @actions/cache failed: {proc.stderr.strip()[-500:]}")
        stamp.write_text("ok\n")
    shutil.copy(JS_DIR / "cache-client.js", target / "cache-client.js")
    return target / "cache-client.js"


class Runner:
    """Runs the client in ``workspace`` with the environment of a v1 or v2 runner."""

    def __init__(self, script: Path, server: GHACacheServer, workspace: Path, version: int,
                 token: str):
        self.script = script
        self.workspace = workspace
        temp = workspace.parent / "runner-temp"
        temp.mkdir(exist_ok=True)
        self.env = {"PATH": os.environ["PATH"], "HOME": str(workspace.parent),
                    "RUNNER_TEMP": str(temp), "GITHUB_WORKSPACE": str(workspace),
                    "GITHUB_SERVER_URL": "https://github.com", "ACTIONS_RUNTIME_TOKEN": token}
        if version == 2:
            self.env |= {"ACTIONS_RESULTS_URL": server.url_v2, "ACTIONS_CACHE_SERVICE_V2": "true"}
        else:
            self.env |= {"ACTIONS_CACHE_URL": server.url}

    def __call__(self, **request: Any) -> Any:
        proc = subprocess.run(["node", str(self.script), json.dumps(request)], cwd=self.workspace,
                              env=self.env, capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"client printed no result:\n{proc.stdout}\n{proc.stderr}"
        result = json.loads(lines[-1][len("RESULT "):])
        assert "error" not in result, f"{result['error']}\n{proc.stdout}"
        self.output = proc.stdout
        return result["value"]


def _populate(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(700_000),
             "sub/deeper/c.txt": b"gamma " * 1000, "empty": b""}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("version", [1, 2])
def test_save_and_restore_with_real_client(cache_client: Path, gha: GHACacheServer, tmp_path: Path,
                                           version: int) -> None:
    workspace = tmp_path / "ws"
    (workspace / "deps").mkdir(parents=True)
    saved = _populate(workspace / "deps")
    run = Runner(cache_client, gha, workspace, version, gha.mint_token())
    paths = ["deps"]
    # Small chunks make the v1 client upload several Content-Range parts concurrently.
    options = {"uploadChunkSize": 256 * 1024, "uploadConcurrency": 4}

    cache_id = run(op="save", paths=paths, key="deps-linux-1111", options=options)
    assert isinstance(cache_id, int) and cache_id > 0
    assert gha.saved_keys("refs/heads/main") == ["deps-linux-1111"]
    if version == 1:
        assert gha.stats["reserve"] == 1 and gha.stats["commit"] == 1
        assert gha.stats["upload_chunk"] >= 2
    else:
        assert gha.stats["create"] == 1 and gha.stats["finalize"] == 1
        assert gha.stats["upload_chunk"] == 0

    # Saving the same key again is refused by the service (409 / already_exists).
    assert run(op="save", paths=paths, key="deps-linux-1111", options=options) == -1
    assert "another job may be creating this cache" in run.output
    assert gha.saved_keys() == ["deps-linux-1111"]

    shutil.rmtree(workspace / "deps")
    assert run(op="restore", paths=paths, key="deps-linux-1111") == "deps-linux-1111"
    assert _read_tree(workspace / "deps") == saved

    shutil.rmtree(workspace / "deps")
    assert run(op="restore", paths=paths, key="deps-linux-2222",
               restoreKeys=["deps-mac-", "deps-linux-"]) == "deps-linux-1111"
    assert _read_tree(workspace / "deps") == saved

    shutil.rmtree(workspace / "deps")
    assert run(op="restore", paths=paths, key="other-key", restoreKeys=["nothing-"]) is None
    assert not (workspace / "deps").exists()
    # The version hashes the paths: the same key for other paths is a miss.
    assert run(op="restore", paths=["elsewhere"], key="deps-linux-1111") is None


@pytest.mark.parametrize("version", [1, 2])
def test_real_client_scopes_and_permissions(cache_client: Path, gha: GHACacheServer, tmp_path: Path,
                                            version: int) -> None:
    workspace = tmp_path / "ws"
    (workspace / "out").mkdir(parents=True)
    saved = _populate(workspace / "out")
    main_token = gha.mint_token([("refs/heads/main", READ | WRITE)])
    assert Runner(cache_client, gha, workspace, version, main_token)(
        op="save", paths=["out"], key="build-main") > 0

    # A pull-request run reads its base branch's entries and writes its own scope.
    pr_token = gha.mint_token([("refs/heads/main", READ), ("refs/pull/7/merge", READ | WRITE)])
    pr = Runner(cache_client, gha, workspace, version, pr_token)
    shutil.rmtree(workspace / "out")
    assert pr(op="restore", paths=["out"], key="build-") == "build-main"
    assert _read_tree(workspace / "out") == saved
    assert pr(op="save", paths=["out"], key="build-pr") > 0
    assert gha.saved_keys("refs/pull/7/merge") == ["build-pr"]

    # Another branch sees neither; a read-only token cannot save; a forged token is refused.
    other = Runner(cache_client, gha, workspace, version,
                   gha.mint_token([("refs/heads/feature", READ | WRITE)]))
    assert other(op="restore", paths=["out"], key="build-") is None
    read_only = Runner(cache_client, gha, workspace, version,
                       gha.mint_token([("refs/heads/main", READ)]))
    assert read_only(op="save", paths=["out"], key="build-ro") == -1
    forged = Runner(cache_client, gha, workspace, version, main_token[:-4] + "AAAA")
    assert forged(op="restore", paths=["out"], key="build-main") is None
    assert "401" in forged.output
    assert "build-ro" not in gha.saved_keys()
