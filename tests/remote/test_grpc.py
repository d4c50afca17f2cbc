"""pybkd as a remote builder: gRPC over TCP with mutual TLS on 127.0.0.1, the daemon with its
own store, the client serving its context, secrets and agents through the session."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from support.engine import require_runc
from support.pybkd import read_until
from support.tlsdaemon import CLIENT, PKI, RemoteDaemon
from support.tlsdaemon import client_env as _env
from support.tlsdaemon import tls_config as _config


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def remote(tmp_path_factory, pki):
    d = RemoteDaemon(tmp_path_factory.mktemp("remote"), _config(pki))
    yield d
    assert d.stop() == 0


def _good(pki: PKI) -> list[str]:
    return ["--tlsdir", str(pki.good)]


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _contains(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in _files_under(root):
        try:
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            pass
    return found


def _transfers(stdout_err: bytes) -> list[dict]:
    """The context-transfer statuses of a --progress rawjson run."""
    found = []
    for line in stdout_err.splitlines():
        if line.startswith(b"{"):
            for status in json.loads(line).get("statuses", []):
                if status["id"].startswith("transferring context:"):
                    found.append(status)
    return found


# -- transport and TLS --------------------------------------------------------------------------

def test_mtls_refuses_bad_clients_and_keeps_serving(remote, pki, tmp_path):
    good = remote.pybk("du", tls=_good(pki))
    assert good.returncode == 0, good.stderr.decode()
    assert b"Total:" in good.stdout
    cases = {
        "no client certificate": ["--tlscacert", str(pki.ca)],
        "a certificate of another CA": ["--tlsdir", str(pki.stranger)],
        "an expired certificate": ["--tlsdir", str(pki.expired)],
        "plain TCP": [],
    }
    for what, flags in cases.items():
        done = remote.pybk("du", tls=flags, timeout=60)
        assert done.returncode == 2, (what, done.stderr.decode())
        assert done.stderr.startswith(f"error: cannot reach pybkd at {remote.addr}".encode()), (
            what, done.stderr.decode())
        assert b"Traceback" not in done.stderr
    assert remote.proc.poll() is None
    again = remote.pybk("plugins", tls=_good(pki))
    assert again.returncode == 0 and b"dockerfile" in again.stdout


def test_tcp_without_tls_needs_the_config_to_say_so(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "s"), "--addr", "tcp://127.0.0.1:0"],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2
    assert "tcp://127.0.0.1:0 has no TLS" in done.stderr and "Traceback" not in done.stderr
    allowed = RemoteDaemon(tmp_path, '[grpc]\naddress = ["tcp://127.0.0.1:0"]\n[pybk]\n'
                           'tcp-without-tls = true\n[worker.oci]\ngc = false\n')
    try:
        du = allowed.pybk("du")
        assert du.returncode == 0, du.stderr.decode()
    finally:
        allowed.stop()


def test_client_tls_flags_are_checked(remote, pki):
    done = remote.pybk("du", tls=["--tlscert", str(pki.good / "cert.pem")])
    assert done.returncode == 2 and b"--tlscert and --tlskey go together" in done.stderr
    done = subprocess.run([*CLIENT, "--tlsdir", str(pki.good), "du"], capture_output=True,
                          env=_env(), timeout=60)
    assert done.returncode == 2 and b"--tlsdir needs --addr tcp://" in done.stderr
    done = remote.pybk("--root", "/elsewhere", "du", tls=_good(pki))
    assert done.returncode == 2 and b"--root and --config are the daemon's own" in done.stderr


# -- the context through the session ------------------------------------------------------------

def test_context_crosses_once_then_only_the_changed_file(remote, pki, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    for i in range(2000):
        (ctx / "src" / f"f{i:04}.txt").write_text(f"file {i}\n" * 3)
    (ctx / "ignored").mkdir()
    (ctx / "ignored" / "secret.txt").write_text("never-leaves-the-client-7f3a\n")
    (ctx / ".dockerignore").write_text("ignored\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx\n")
    out = tmp_path / "out"
    args = ["build", "--progress", "rawjson", "-o", f"type=local,dest={out}", str(ctx)]
    first = remote.pybk(*args, tls=_good(pki))
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    sent = sum(p.stat().st_size for p in ctx.rglob("*")
               if p.is_file() and "ignored" not in p.parts)
    [transfer] = [t for t in _transfers(first.stderr) if t.get("completed")]
    assert transfer["id"].startswith("transferring context: 2002 files copied")
    assert transfer["current"] == sent
    assert (out / "ctx" / "src" / "f1999.txt").read_text() == "file 1999\n" * 3
    assert not (out / "ctx" / "ignored").exists()
    assert _contains(remote.root, b"never-leaves-the-client-7f3a") == []

    unchanged = remote.pybk(*args, tls=_good(pki))
    assert unchanged.returncode == 0, unchanged.stderr.decode()[-3000:]
    assert [t["current"] for t in _transfers(unchanged.stderr) if t.get("completed")] == [0]

    (ctx / "src" / "f0042.txt").write_text("file 42 changed\n")
    changed = remote.pybk(*args, tls=_good(pki))
    assert changed.returncode == 0, changed.stderr.decode()[-3000:]
    [transfer] = [t for t in _transfers(changed.stderr) if t.get("completed")]
    assert transfer["id"].startswith("transferring context: 1 files copied, 0 removed")
    assert transfer["current"] == len("file 42 changed\n")
    assert (out / "ctx" / "src" / "f0042.txt").read_text() == "file 42 changed\n"


def test_outputs_land_on_the_client_and_metadata_matches_embedded(remote, pki, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("alpha\n")
    (ctx / "run.sh").write_text("#!/bin/sh\n")
    (ctx / "run.sh").chmod(0o750)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt run.sh /\n")
    env = _env(SOURCE_DATE_EPOCH="0")
    tar = remote.pybk("build", "-q", "-o", "type=tar,dest=-", str(ctx), tls=_good(pki),
                      env=env)
    assert tar.returncode == 0, tar.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        names = {m.name: m for m in archive.getmembers()}
        assert archive.extractfile(names["a.txt"]).read() == b"alpha\n"
        assert names["run.sh"].mode & 0o777 == 0o750
    local = tmp_path / "local"
    remote_meta = tmp_path / "remote.json"
    done = remote.pybk("build", "-q", "-o", f"type=local,dest={local}", "-o",
                       f"type=oci,dest={tmp_path / 'image.tar'}", "--metadata-file",
                       str(remote_meta), str(ctx), tls=_good(pki), env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert (local / "a.txt").read_text() == "alpha\n"
    assert (local / "run.sh").stat().st_mode & 0o777 == 0o750
    assert (local / "a.txt").stat().st_uid == os.getuid()
    assert tarfile.is_tarfile(tmp_path / "image.tar")
    embedded_meta = tmp_path / "embedded.json"
    here = subprocess.run([*CLIENT, "--addr", "", "--root", str(tmp_path / "store"), "build",
                           "-q", "-o", f"type=local,dest={tmp_path / 'l2'}", "-o",
                           f"type=oci,dest={tmp_path / 'image2.tar'}", "--metadata-file",
                           str(embedded_meta), str(ctx)], capture_output=True, env=env,
                          timeout=120)
    assert here.returncode == 0, here.stderr.decode()
    assert json.loads(remote_meta.read_text()) == json.loads(embedded_meta.read_text())
    assert (tmp_path / "image.tar").read_bytes() == (tmp_path / "image2.tar").read_bytes()
    assert sorted(os.listdir(remote.root / "sessions")) == ["control.sock", "grpc.sock"]


def test_every_command_runs_remotely(remote, pki, tmp_path):
    from pybk.core import llb

    good = _good(pki)
    data = llb.scratch().file(llb.mkfile("/hi", 0o600, "from stdin\n")).marshal().to_bytes()
    done = remote.pybk("build", "-q", "--llb", "-", "-o", f"type=local,dest={tmp_path / 'llb'}",
                       tls=good, input=data)
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "llb" / "hi").read_text() == "from stdin\n"
    assert (tmp_path / "llb" / "hi").stat().st_mode & 0o777 == 0o600

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch AS base\nmaintainer me\nFROM base AS final\n")
    check = remote.pybk("build", "--check", str(ctx), tls=good)
    assert check.returncode == 1
    assert b"MaintainerDeprecated" in check.stderr and b"Dockerfile:2" in check.stderr
    targets = remote.pybk("build", "--call", "targets", str(ctx), tls=good)
    assert targets.returncode == 0, targets.stderr.decode()
    assert b"base" in targets.stdout and b"final" in targets.stdout
    copy_ctx = tmp_path / "copy"
    copy_ctx.mkdir()
    (copy_ctx / "a").write_text("a\n")
    (copy_ctx / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    printed = remote.pybk("build", "--print-llb", str(copy_ctx), tls=good)
    assert printed.returncode == 0, printed.stderr.decode()
    embedded_llb = subprocess.run([*CLIENT, "--addr", "", "--root", str(tmp_path / "s"),
                                   "build", "--print-llb", str(copy_ctx)], capture_output=True,
                                  env=_env(), timeout=60)
    assert printed.stdout == embedded_llb.stdout and printed.stdout

    yaml_ctx = tmp_path / "yaml"
    yaml_ctx.mkdir()
    (yaml_ctx / "note.txt").write_text("from yaml\n")
    (yaml_ctx / "pipeline.yaml").write_text(
        "version: 1\ntarget: out\nstages:\n  out:\n    from: scratch\n    steps:\n"
        "      - copy: {src: note.txt, dest: /note.txt}\n")
    done = remote.pybk("build", "-q", "-f", str(yaml_ctx / "pipeline.yaml"), "-o",
                       f"type=local,dest={tmp_path / 'yout'}", str(yaml_ctx), tls=good)
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "yout" / "note.txt").read_text() == "from yaml\n"

    for argv, expected in ((["du"], b"Total:"), (["prune", "--all"], b"Total:"),
                           (["debug", "workers"], b"linux/"), (["debug", "config"], b"tls"),
                           (["plugins"], b"yaml.v0")):
        done = remote.pybk(*argv, tls=good)
        assert done.returncode == 0, (argv, done.stderr.decode())
        assert expected in done.stdout, (argv, done.stdout.decode())
    bad = remote.pybk("build", "--no-such-flag", str(ctx), tls=good)
    assert bad.returncode == 2 and b"unrecognized arguments: --no-such-flag" in bad.stderr


def test_sighup_reloads_the_certificates(tmp_path, pki):
    import shutil

    served = tmp_path / "served"  # the files the daemon's config names
    served.mkdir()
    for path in (pki.server_cert, pki.server_key, pki.ca):
        shutil.copy(path, served / path.name)
    config = _config(pki)
    for path in (pki.server_cert, pki.server_key, pki.ca):
        config = config.replace(str(path), str(served / path.name))
    (tmp_path / "d").mkdir()
    daemon = RemoteDaemon(tmp_path / "d", config)
    try:
        assert daemon.pybk("du", tls=_good(pki)).returncode == 0
        (tmp_path / "pki2").mkdir()
        rotated = PKI(tmp_path / "pki2")  # a new CA, as a rotation replaces the files in place
        for old, new in ((pki.server_cert, rotated.server_cert),
                         (pki.server_key, rotated.server_key), (pki.ca, rotated.ca)):
            shutil.copy(new, served / old.name)
        assert daemon.pybk("du", tls=_good(pki)).returncode == 0  # until SIGHUP: the old ones
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificates reloaded" not in daemon.log.read_text():
            assert time.monotonic() < deadline, daemon.log.read_text()
            daemon.pybk("du", tls=["--tlsdir", str(rotated.good)])  # a handshake reloads
            time.sleep(0.1)
        old = daemon.pybk("du", tls=_good(pki))
        assert old.returncode == 2 and b"cannot reach pybkd" in old.stderr
        new = daemon.pybk("du", tls=["--tlsdir", str(rotated.good)])
        assert new.returncode == 0, new.stderr.decode()
    finally:
        daemon.stop()


def test_entitlement_the_daemon_does_not_grant_is_refused(remote, pki, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    done = remote.pybk("build", "--allow", "security.insecure", str(ctx), tls=_good(pki))
    assert done.returncode == 2, done.stderr.decode()
    assert b"security.insecure" in done.stderr and b"insecure-entitlements" in done.stderr


def test_eight_clients_at_once(remote, pki, tmp_path):
    results = {}

    def build(i: int) -> None:
        ctx = tmp_path / f"ctx{i}"
        ctx.mkdir()
        (ctx / "who.txt").write_text(f"client {i}\n" * (i + 1))
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY who.txt /\n")
        results[i] = remote.pybk("build", "-q", "-o", f"type=local,dest={tmp_path / f'out{i}'}",
                                 str(ctx), tls=_good(pki))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert results[i].returncode == 0, results[i].stderr.decode()
        assert (tmp_path / f"out{i}" / "who.txt").read_text() == f"client {i}\n" * (i + 1)


# -- steps: secrets, agents, cancellation (runc) --------------------------------------------------

def test_secret_is_served_by_the_client_and_never_stored(remote, pki, busybox_ref, tmp_path):
    require_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(  # the value is nowhere but in the client's file
        f"FROM {busybox_ref}\nRUN --mount=type=secret,id=tok "
        "sh -c 'sha256sum /run/secrets/tok | cut -d\" \" -f1 > /ok'\n"
        "FROM scratch\nCOPY --from=0 /ok /\n")
    (tmp_path / "tok").write_text("s3cr3t-9d1c")
    done = remote.pybk("build", "--no-cache", "--secret", f"id=tok,src={tmp_path / 'tok'}",
                       "-o", f"type=local,dest={tmp_path / 'out'}", str(ctx), tls=_good(pki))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    expected = hashlib.sha256(b"s3cr3t-9d1c").hexdigest()
    assert (tmp_path / "out" / "ok").read_text() == expected + "\n"
    assert _contains(remote.root, b"s3cr3t-9d1c") == []
    assert b"s3cr3t-9d1c" not in remote.log.read_bytes()


@pytest.fixture(scope="module")
def python_ref(registry, python_layout) -> str:
    from support.busybox import push_oci_layout

    ref = f"{registry.host}/python:latest"
    push_oci_layout(python_layout, ref)
    return ref


AGENT_CLIENT = ("import os, socket; s = socket.socket(socket.AF_UNIX); "
                "s.connect(os.environ['SSH_AUTH_SOCK']); s.sendall(b'hello'); "
                "open('/reply', 'wb').write(s.recv(100))")


def test_ssh_agent_is_forwarded_from_the_client(remote, pki, python_ref, tmp_path):
    """``raw=true``: the agent socket's bytes as they are (no agent protocol spoken)."""
    require_runc()
    agent_path = tmp_path / "agent.sock"
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.bind(str(agent_path))
    agent.listen(4)

    def serve() -> None:
        conn, _ = agent.accept()
        with conn:
            conn.sendall(b"agent saw " + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f'FROM {python_ref}\nRUN --mount=type=ssh python3 -c "{AGENT_CLIENT}"\n'
        "FROM scratch\nCOPY --from=0 /reply /\n")
    done = remote.pybk("build", "--no-cache", "--ssh", f"default={agent_path},raw=true", "-o",
                       f"type=local,dest={tmp_path / 'out'}", str(ctx), tls=_good(pki))
    agent.close()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert (tmp_path / "out" / "reply").read_bytes() == b"agent saw hello"


def test_ssh_key_files_are_served_by_the_client(remote, pki, busybox_ref, tmp_path):
    """``--ssh default=KEY`` through a remote daemon: the agent holding the key runs in the
    client, the step's ``ssh-add -l`` lists it and its ``ssh-keygen -Y sign`` signs through
    it; the daemon's store and log never see the key."""
    import shutil

    from support.openssh import fingerprint, keygen, require_openssh, tools_tree, verify

    require_runc()
    require_openssh()
    key = keygen(tmp_path / "id_ed25519", "ed25519", comment="remote@build")
    ctx = tmp_path / "ctx"
    tools_tree(ctx / "tools")
    shutil.copy(f"{key}.pub", ctx / "signer.pub")
    (ctx / "message").write_bytes(os.urandom(32))
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nCOPY tools/ /\nCOPY signer.pub message /work/\n"
        "RUN --mount=type=ssh ssh-add -l > /keys.txt && cd /work "
        "&& ssh-keygen -Y sign -f signer.pub -n file message\n"
        "FROM scratch\nCOPY --from=0 /keys.txt /work/message.sig /\n")
    done = remote.pybk("build", "--no-cache", "--ssh", f"default={key}", "-o",
                       f"type=local,dest={tmp_path / 'out'}", str(ctx), tls=_good(pki))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert (tmp_path / "out" / "keys.txt").read_text().splitlines() == [fingerprint(key)]
    checked = verify(ctx / "signer.pub", ctx / "message", tmp_path / "out" / "message.sig")
    assert checked.returncode == 0, checked.stderr
    for line in key.read_bytes().splitlines()[1:-1]:
        assert _contains(remote.root, line) == []
        assert line not in remote.log.read_bytes()


def test_private_git_source_with_the_clients_token(remote, pki, tmp_path):
    """``ADD`` of a private repository through a remote daemon: the token is the client's
    secret, asked through the session; the files arrive and the token is nowhere in the
    daemon's store or log."""
    import base64

    from support.githttp import GitHTTPServer, bare_repo, require_git_http_backend

    require_runc()
    require_git_http_backend()
    (tmp_path / "repos").mkdir()
    server = GitHTTPServer(tmp_path / "repos")
    try:
        bare_repo(tmp_path / "repos", "app.git", {"hello.txt": "remote private\n"})
        token = "rtok-3b9e7d21c4"
        server.private.add("app.git")
        server.accepted.add("basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode())
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {server.url}/app.git /src\n")
        (tmp_path / "token").write_text(token)
        args = ("build", "--no-cache", "-o", f"type=local,dest={tmp_path / 'out'}", str(ctx))
        refused = remote.pybk(*args, tls=_good(pki))
        assert refused.returncode == 1 and b"GIT_AUTH_TOKEN" in refused.stderr
        done = remote.pybk("build", "--secret", f"id=GIT_AUTH_TOKEN,src={tmp_path / 'token'}",
                           *args[1:], tls=_good(pki))
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert (tmp_path / "out" / "src" / "hello.txt").read_text() == "remote private\n"
        assert _contains(remote.root, token.encode()) == []
        assert token.encode() not in remote.log.read_bytes()
    finally:
        server.close()


def test_git_over_ssh_signs_with_the_clients_key(remote, pki, tmp_path):
    """``ADD ssh://…`` through a remote daemon with ``--ssh default=KEY``: the daemon's git
    reaches the agent the client runs over its key file, through the session."""
    import base64

    from support.githttp import bare_repo, require_git_http_backend
    from support.gitssh import GitSSHServer, require_paramiko
    from support.openssh import keygen, require_openssh

    require_runc()
    require_openssh()
    require_git_http_backend()
    require_paramiko()
    (tmp_path / "repos").mkdir()
    server = GitSSHServer(tmp_path / "repos", keygen(tmp_path / "host_key"))
    try:
        bare_repo(tmp_path / "repos", "app.git", {"hello.txt": "remote over ssh\n"})
        key = keygen(tmp_path / "id_ed25519")
        server.authorized.add(base64.b64decode(key.with_suffix(".pub").read_text().split()[1]))
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(
            f"FROM scratch\nADD ssh://git@127.0.0.1:{server.port}/app.git /src\n")
        done = remote.pybk("build", "--no-cache", "--ssh", f"default={key}", "-o",
                           f"type=local,dest={tmp_path / 'out'}", str(ctx), tls=_good(pki))
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert (tmp_path / "out" / "src" / "hello.txt").read_text() == "remote over ssh\n"
        assert server.accepted
        for line in key.read_bytes().splitlines()[1:-1]:
            assert _contains(remote.root, line) == []
    finally:
        server.close()


def _sleeping_build(remote: RemoteDaemon, pki: PKI, busybox_ref: str,
                    tmp_path: Path) -> tuple[subprocess.Popen, bytes]:
    """A remote build whose RUN step has started (its own output seen, not its header) and
    sleeps; the client process and what it printed so far."""
    require_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f'FROM {busybox_ref}\nRUN echo step-be""gun && sleep 120\n')
    client = subprocess.Popen([*CLIENT, "--addr", remote.addr, *_good(pki), "build",
                               "--no-cache", "--progress", "plain", str(ctx)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    seen = read_until(client, b"step-begun", 90)
    return client, seen


def _containers(remote: RemoteDaemon, wait: float = 0) -> str:
    """The daemon's runc containers, once there are none or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        listed = subprocess.run(["runc", "--root", str(remote.root / "executor" / "runc"),
                                 "list", "-q"], capture_output=True, text=True).stdout.strip()
        if not listed or time.monotonic() >= deadline:
            return listed
        time.sleep(0.2)


def test_client_killed_mid_build_cancels_the_steps(remote, pki, busybox_ref, tmp_path):
    client, _ = _sleeping_build(remote, pki, busybox_ref, tmp_path)
    client.kill()
    client.wait()
    assert _containers(remote, wait=30) == ""
    deadline = time.monotonic() + 30
    while sorted(os.listdir(remote.root / "sessions")) != ["control.sock", "grpc.sock"]:
        assert time.monotonic() < deadline, os.listdir(remote.root / "sessions")
        time.sleep(0.2)
    after = tmp_path / "after"
    after.mkdir()
    (after / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /\n")
    done = remote.pybk("build", "-q", str(after), tls=_good(pki))
    assert done.returncode == 0, done.stderr.decode()


def test_ctrl_c_on_the_client_cancels_the_build(remote, pki, busybox_ref, tmp_path):
    client, seen = _sleeping_build(remote, pki, busybox_ref, tmp_path)
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130, (seen + err).decode()
    assert b"interrupted" in err
    assert _containers(remote) == ""


@pytest.mark.slow
def test_load_hands_the_streamed_tarball_to_the_clients_docker(remote, pki, tmp_path):
    from support.dockerd import DockerdUnavailable, start_dockerd

    try:
        docker = start_dockerd(Path("/tmp") / f"pybk-dockerd-remote-{os.getpid()}",
                               storage_driver="vfs")
    except DockerdUnavailable as e:
        pytest.skip(str(e))
    try:
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "a.txt").write_text("loaded remotely\n")
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /\n")
        done = remote.pybk("build", "-q", "--load", "-t", "pybk-test/remote:1", "--iidfile",
                           str(tmp_path / "iid"), str(ctx), tls=_good(pki),
                           env=_env(DOCKER_HOST=docker.env["DOCKER_HOST"]))
        assert done.returncode == 0, done.stderr.decode()
        loaded = docker.docker("image", "inspect", "-f", "{{.Id}}", "pybk-test/remote:1")
        assert loaded.stdout.strip() == (tmp_path / "iid").read_text()
    finally:
        docker.stop()


def test_tlsservername_and_buildkit_host(remote, pki):
    """``--tlsservername`` is the name the daemon's certificate must have; ``$BUILDKIT_HOST``
    names the daemon when ``$PYBK_HOST`` does not."""
    ca_only = ["--tlsdir", str(pki.good)]
    named = remote.pybk("du", tls=[*ca_only, "--tlsservername", "localhost"])
    assert named.returncode == 0, named.stderr.decode()
    wrong = remote.pybk("du", tls=[*ca_only, "--tlsservername", "builder.example"])
    assert wrong.returncode == 2 and b"cannot reach pybkd" in wrong.stderr
    via_env = subprocess.run([*CLIENT, *ca_only, "du"], capture_output=True, timeout=60,
                             env=_env(BUILDKIT_HOST=remote.addr))
    assert via_env.returncode == 0, via_env.stderr.decode()
    assert b"Total:" in via_env.stdout
    pybk_host_first = subprocess.run([*CLIENT, *ca_only, "du"], capture_output=True, timeout=60,
                                     env=_env(BUILDKIT_HOST=remote.addr,
                                              PYBK_HOST="tcp://127.0.0.1:1"))
    assert pybk_host_first.returncode == 2
    assert b"cannot reach pybkd at tcp://127.0.0.1:1" in pybk_host_first.stderr


def test_daemon_addresses_it_does_not_serve(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "s"), "--addr", "vsock://3:1234"],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2
    assert "vsock://3:1234: only unix:// and tcp:// addresses are served" in done.stderr
    (tmp_path / "d").mkdir()
    daemon = RemoteDaemon(tmp_path / "d", '[grpc]\naddress = ["tcp://127.0.0.1:0", '
                          '"vsock://3:1234"]\n[pybk]\ntcp-without-tls = true\n'
                          '[worker.oci]\ngc = false\n')
    try:
        assert ("[grpc] address vsock://3:1234 is not served: pybkd serves unix:// and tcp:// "
                "addresses") in daemon.log.read_text()
        assert daemon.pybk("du").returncode == 0
    finally:
        daemon.stop()
