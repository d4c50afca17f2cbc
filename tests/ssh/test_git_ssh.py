"""Private git repositories over SSH: ``ADD ssh://git@127.0.0.1:PORT/app.git`` with
``--ssh default=KEY`` (BuildKit's ``git.mountsshsock``): git's ssh (OpenSSH) signs through the
agent pybk serves for the key file, against an SSH git server (paramiko, its own host key) that
accepts only that key. Without ``--ssh`` the build fails naming the missing agent; with another
key the server refuses; ``git.knownsshhosts`` pins the server's host key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.engine import need_runc
from support.githttp import bare_repo, require_git_http_backend
from support.gitssh import GitSSHServer, fingerprint_of, require_paramiko
from support.openssh import agent_env, fingerprint, keygen, require_openssh


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_runc()
    require_openssh()
    require_git_http_backend()  # git itself
    require_paramiko()
    base = tmp_path_factory.mktemp("gitssh")
    (base / "repos").mkdir()
    srv = GitSSHServer(base / "repos", keygen(base / "host_key", "ed25519"))
    srv.commit = bare_repo(base / "repos", "app.git", {"hello.txt": "over ssh\n"})
    srv.key = keygen(base / "id_ed25519", "ed25519", comment="deploy@ssh")
    import base64

    srv.authorized.add(base64.b64decode(srv.key.with_suffix(".pub").read_text().split()[1]))
    yield srv
    srv.close()


def _build(tmp_path, dockerfile: str, *args: str):
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pybk.core.cli.entry", "--root", str(tmp_path / "store"), "build",
         "--progress", "plain", "--no-cache", *args, "-o", f"type=local,dest={out}", str(ctx)],
        capture_output=True, text=True, timeout=600, env=agent_env(None))
    return done, out


def test_add_over_ssh_with_a_key_file(server, tmp_path):
    url = f"ssh://git@127.0.0.1:{server.port}/app.git"
    done, _ = _build(tmp_path / "none", f"FROM scratch\nADD {url} /src\n")
    assert done.returncode == 1 and "no SSH key 'default' forwarded" in done.stderr
    assert "Traceback" not in done.stderr
    other = keygen(tmp_path / "other", "ed25519")
    done, _ = _build(tmp_path / "other-key", f"FROM scratch\nADD {url} /src\n",
                     "--ssh", f"default={other}")
    assert done.returncode == 1 and "Permission denied (publickey)" in done.stderr
    server.accepted.clear()
    done, out = _build(tmp_path / "key", f"FROM scratch\nADD {url} /src\n",
                       "--ssh", f"default={server.key}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "src" / "hello.txt").read_text() == "over ssh\n"
    assert set(server.accepted) == {fingerprint(server.key).split()[1]}


def test_known_hosts_pin_the_servers_key(server, tmp_path):
    """``git.knownsshhosts`` (the LLB attribute): the right line lets the fetch through, a
    wrong one stops it before any key is offered."""
    from pybk.core.engine.sshagent import AgentSocket, KeyAgent, load_keys
    from pybk.core.errors import BuildError
    from pybk.core.solver import sources

    url = f"ssh://git@127.0.0.1:{server.port}/app.git"
    agent = AgentSocket(KeyAgent(load_keys([str(server.key)])))
    try:
        attrs = {"git.mountsshsock": "default", "git.knownsshhosts": server.known_hosts_line()}
        commit, identity = sources.git_source(url, None, None, str(tmp_path / "a"), attrs, {},
                                              {"default": agent.path}, str(tmp_path / "cache"))
        assert commit == server.commit and identity["commit"] == commit
        assert (tmp_path / "a" / "hello.txt").read_text() == "over ssh\n"
        impostor = keygen(tmp_path / "impostor", "ed25519").with_suffix(".pub").read_text()
        wrong = f"[127.0.0.1]:{server.port} {' '.join(impostor.split()[:2])}"
        server.accepted.clear()
        with pytest.raises(BuildError, match="Host key verification failed"):
            sources.git_source(url, None, None, str(tmp_path / "b"),
                               {**attrs, "git.knownsshhosts": wrong}, {},
                               {"default": agent.path}, str(tmp_path / "cache2"))
        assert server.accepted == []
    finally:
        agent.close()
    assert fingerprint_of(b"x").startswith("SHA256:")
