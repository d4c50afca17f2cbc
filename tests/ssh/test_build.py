"""``RUN --mount=type=ssh`` with ``--ssh ID=KEY``: OpenSSH's own ``ssh-add`` and ``ssh-keygen``
(the host's, copied into the step's image with their libraries) run inside the step against
the socket pybk mounts: the keys listed are the files' fingerprints, and a signature made in
the step through the agent verifies on the host. The private keys are nowhere in the store,
the outputs or the build's log afterwards."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.engine import need_runc
from support.openssh import agent_env, fingerprint, keygen, require_openssh, tools_tree, verify


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    need_runc()
    require_openssh()
    return tmp_path_factory.mktemp("ssh-store")


def _pybk(store: Path, *args: str, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    env = agent_env(None)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "pybk.core.cli.entry", "--root", str(store),
                           *args], capture_output=True, text=True, env=env, timeout=600)


def _private_needles(key: Path) -> list[bytes]:
    """What of a private key must appear nowhere: the file's base64 lines, and its raw private
    bytes (and their base64)."""
    from cryptography.hazmat.primitives import serialization

    text = key.read_bytes()
    needles = [line for line in text.splitlines()[1:-1] if len(line) > 20]
    loaded = serialization.load_ssh_private_key(text, password=None)
    if hasattr(loaded, "private_numbers"):  # RSA: d; ECDSA: the private value
        numbers = loaded.private_numbers()
        secret = getattr(numbers, "d", None) or numbers.private_value
        raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
    else:  # Ed25519: the seed
        raw = loaded.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    return [*needles, raw, base64.b64encode(raw)[:40]]


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            if any(n in data for n in needles):
                hits.append(path)
    return hits


def test_a_step_lists_and_signs_with_key_files(store, busybox_layout, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    main = keygen(keys / "id_ed25519", "ed25519", comment="main@build")
    deploy = [keygen(keys / "deploy_rsa", "rsa", comment="deploy@build", bits=2048),
              keygen(keys / "deploy_ecdsa", "ecdsa", comment="deploy2@build", bits=256)]
    ctx = tmp_path / "ctx"
    tools_tree(ctx / "tools")
    shutil.copy(f"{main}.pub", ctx / "signer.pub")
    (ctx / "message").write_bytes(os.urandom(48))
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "COPY tools/ /\n"
        "COPY signer.pub message /work/\n"
        "RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && ssh-add -l > /keys.txt "
        "&& cd /work && ssh-keygen -Y sign -f signer.pub -n file message\n"
        "RUN --mount=type=ssh,id=deploy,target=/deploy.sock,uid=1000,mode=0600 "
        "SSH_AUTH_SOCK=/deploy.sock su tester -c 'ssh-add -l' > /deploy.txt\n"
        "FROM scratch\n"
        "COPY --from=0 /keys.txt /deploy.txt /work/message.sig /\n")
    out = tmp_path / "out"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    done = _pybk(store, "build", "--no-cache", "--progress", "plain",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}",
                 "--ssh", f"default={main}", "--ssh", f"deploy={deploy[0]},{deploy[1]}",
                 "-o", f"type=local,dest={out}", str(ctx), tmpdir=tmpdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "keys.txt").read_text().splitlines() == [fingerprint(main)]
    assert (out / "deploy.txt").read_text().splitlines() == [fingerprint(k) for k in deploy]
    checked = verify(ctx / "signer.pub", ctx / "message", out / "message.sig")
    assert checked.returncode == 0, checked.stderr
    # no key material in the store, the outputs or the log; no agent directory left behind
    needles = [n for key in (main, *deploy) for n in _private_needles(key)]
    assert _files_containing(store, needles) == []
    assert _files_containing(out, needles) == []
    assert not any(n.decode("latin-1") in done.stderr for n in needles)
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("pybk-agent")] == []


def test_a_missing_ssh_id_fails_the_step_by_name(store, busybox_layout, tmp_path):
    key = keygen(tmp_path / "id_ed25519", "ed25519")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=ssh,id=other,required=true true\n")
    done = _pybk(store, "build", "--progress", "plain",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}",
                 "--ssh", f"default={key}", str(ctx))
    assert done.returncode == 1
    assert "'other'" in done.stderr and "Traceback" not in done.stderr


def test_key_files_through_pybkd_on_a_unix_socket(busybox_layout, tmp_path):
    """A command pybkd runs for a client of its unix socket serves the client's key files from
    the daemon's child (the client's files, read as the client): same listing, no key left."""
    from support.pybkd import Pybkd

    need_runc()
    require_openssh()
    key = keygen(tmp_path / "id_ecdsa", "ecdsa", comment="daemon@build", bits=384)
    ctx = tmp_path / "ctx"
    tools_tree(ctx / "tools")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nCOPY tools/ /\nRUN --mount=type=ssh ssh-add -l > /keys.txt\n"
        "FROM scratch\nCOPY --from=0 /keys.txt /\n")
    (tmp_path / "daemon").mkdir()
    daemon = Pybkd(tmp_path / "daemon")
    try:
        done = daemon.pybk("build", "--no-cache", "--build-context",
                           f"busybox=oci-layout://{busybox_layout}", "--ssh", f"default={key}",
                           "-o", f"type=local,dest={tmp_path / 'out'}", str(ctx), timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert (tmp_path / "out" / "keys.txt").read_text().splitlines() == [fingerprint(key)]
        assert _files_containing(daemon.root, _private_needles(key)) == []
        bad = daemon.pybk("build", "--ssh", f"default={ctx / 'Dockerfile'}", str(ctx))
        assert bad.returncode == 2 and b"not an SSH private key" in bad.stderr
        assert b"Traceback" not in bad.stderr
    finally:
        assert daemon.stop() == 0


def test_the_users_agent_is_read_only_to_a_step(store, busybox_layout, tmp_path):
    """``--ssh default`` ($SSH_AUTH_SOCK, a real ssh-agent): the step lists the agent's key
    but its ``ssh-add -D`` is refused, and the agent keeps its key."""
    key = keygen(tmp_path / "id_ed25519", "ed25519", comment="user@agent")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.025)
        assert subprocess.run(["ssh-add", str(key)], env=agent_env(str(sock)),
                              capture_output=True).returncode == 0
        ctx = tmp_path / "ctx"
        tools_tree(ctx / "tools")
        (ctx / "Dockerfile").write_text(
            "FROM busybox\nCOPY tools/ /\n"
            "RUN --mount=type=ssh ssh-add -l > /keys.txt; "
            "ssh-add -D 2> /delete.txt; echo $? >> /delete.txt\n"
            "FROM scratch\nCOPY --from=0 /keys.txt /delete.txt /\n")
        out = tmp_path / "out"
        env = agent_env(str(sock))
        done = subprocess.run(
            [sys.executable, "-m", "pybk.core.cli.entry", "--root", str(store), "build",
             "--no-cache", "--build-context", f"busybox=oci-layout://{busybox_layout}",
             "--ssh", "default", "-o", f"type=local,dest={out}", str(ctx)],
            capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (out / "keys.txt").read_text().splitlines() == [fingerprint(key)]
        assert (out / "delete.txt").read_text().splitlines()[-1] != "0"
        kept = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True)
        assert kept.stdout.splitlines() == [fingerprint(key)]
    finally:
        agent.terminate()
        agent.wait(10)
