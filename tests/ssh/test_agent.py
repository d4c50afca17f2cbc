"""``--ssh ID=KEY``: the in-memory SSH agent over key files, checked with OpenSSH's own client
(``ssh-add -l`` lists what ``ssh-keygen -lf`` prints; ``ssh-keygen -Y sign`` signs through the
agent with only the public key at hand and ``ssh-keygen -Y verify`` accepts the signature), and
the command line's answers to keys it cannot use (exit 2, the file named, no traceback)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from support.openssh import (
    agent_env,
    fingerprint,
    keygen,
    require_openssh,
    sign_with_agent,
    ssh_add,
    verify,
)

from pybk.core.engine.request import SSHSpec
from pybk.core.engine.sshagent import AgentSocket, KeyAgent, agent_sockets, load_keys

KEYS = [("ed25519", {}), ("rsa", {"bits": 2048}), ("ecdsa", {"bits": 256}),
        ("ecdsa", {"bits": 384}), ("ecdsa", {"bits": 521}), ("rsa", {"bits": 2048, "pem": True})]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    require_openssh()
    base = tmp_path_factory.mktemp("keys")
    made = []
    for index, (kind, extra) in enumerate(KEYS):
        made.append(keygen(base / f"key{index}", kind, comment=f"k{index}@test", **extra))
    return made


@pytest.fixture
def agent(keys):
    server = AgentSocket(KeyAgent(load_keys([str(k) for k in keys])))
    yield server.path
    server.close()
    assert not os.path.exists(server.directory)


def _public_only(key, tmp_path):
    """The public half of ``key`` alone in a directory (no private key next to it)."""
    folder = tmp_path / f"pub-{key.name}"
    folder.mkdir(parents=True)
    shutil.copy(key.with_suffix(".pub") if key.suffix else f"{key}.pub", folder / "signer.pub")
    return folder / "signer.pub"


def test_ssh_add_lists_each_key_as_ssh_keygen_prints_it(agent, keys):
    done = ssh_add(agent, "-l")
    assert done.returncode == 0, done.stderr
    listed = done.stdout.strip().splitlines()
    # OpenSSH-format keys keep their comment; the PEM key's comment is its path (as ssh-add's)
    expected = [fingerprint(k) for k in keys]
    assert [line.split()[:2] for line in listed] == [line.split()[:2] for line in expected]
    assert listed[:5] == expected[:5]
    assert listed[5].endswith(f"{keys[5]} (RSA)")


def test_signatures_made_through_the_agent_verify(agent, keys, tmp_path):
    message = tmp_path / "message"
    message.write_bytes(os.urandom(64))
    for key in keys:
        public = _public_only(key, tmp_path)
        signed = sign_with_agent(agent, public, message)
        assert signed.returncode == 0, signed.stderr
        signature = tmp_path / "message.sig"
        checked = verify(public, message, signature)
        assert checked.returncode == 0, checked.stderr
        assert "Good \"file\" signature" in checked.stdout + checked.stderr
        signature.unlink()
    # the control: without the agent the public key alone cannot sign
    assert sign_with_agent(None, _public_only(keys[0], tmp_path / "x"), message).returncode != 0


def test_rsa_signatures_follow_the_requested_hash(keys):
    """rsa-sha2-256 / rsa-sha2-512 when the client's flags ask for them, ssh-rsa otherwise;
    each signature verified with the public key."""
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    identity = load_keys([str(keys[1])])[0]
    agent = KeyAgent([identity])
    data = b"session data"
    for flags, name, digest in ((0, b"ssh-rsa", hashes.SHA1()),
                                (2, b"rsa-sha2-256", hashes.SHA256()),
                                (4, b"rsa-sha2-512", hashes.SHA512())):
        request = (bytes([13]) + struct.pack(">I", len(identity.blob)) + identity.blob
                   + struct.pack(">I", len(data)) + data + struct.pack(">I", flags))
        reply = agent.answer(request)
        assert reply[0] == 14
        blob = reply[5:]
        size = struct.unpack(">I", blob[:4])[0]
        assert blob[4:4 + size] == name
        signature = blob[8 + size:]
        identity.key.public_key().verify(signature, data, padding.PKCS1v15(), digest)
    # an unknown key: SSH_AGENT_FAILURE
    other = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"\1" * 32
    assert agent.answer(bytes([13]) + struct.pack(">I", len(other)) + other
                        + b"\0\0\0\0" + b"\0\0\0\0") == bytes([5])


def test_the_agent_is_read_only(agent, keys, tmp_path):
    extra = keygen(tmp_path / "extra", "ed25519")
    assert ssh_add(agent, str(extra)).returncode != 0
    assert ssh_add(agent, "-D").returncode != 0
    assert ssh_add(agent, "-d", f"{keys[0]}.pub").returncode != 0
    assert len(ssh_add(agent, "-l").stdout.strip().splitlines()) == len(keys)


def test_oversized_and_garbage_messages_close_the_connection(agent):
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(agent)
    conn.sendall(b"\xff\xff\xff\xff")
    assert conn.recv(10) == b""
    conn.close()
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(agent)
    conn.sendall(b"\0\0\0\x01\x63")  # an unknown request
    assert conn.recv(10) == b"\0\0\0\x01\x05"
    conn.close()


def test_a_directory_of_keys(keys, tmp_path):
    ssh_dir = tmp_path / "dotssh"
    ssh_dir.mkdir()
    for key in keys[:2]:
        shutil.copy(key, ssh_dir / key.name)
        shutil.copy(f"{key}.pub", ssh_dir / f"{key.name}.pub")
    (ssh_dir / "known_hosts").write_text("localhost ssh-ed25519 AAAA\n")
    (ssh_dir / "config").write_text("Host *\n")
    sockets = agent_sockets([SSHSpec("default", (str(ssh_dir),))])
    try:
        listed = ssh_add(sockets["default"], "-l").stdout.strip().splitlines()
        assert listed == [fingerprint(k) for k in keys[:2]]
    finally:
        sockets.close()


@pytest.fixture
def ssh_agent(tmp_path):
    """A real ``ssh-agent`` on a socket of its own (stopped afterwards)."""
    require_openssh()
    path = tmp_path / "real-agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.025)
        yield str(path)
    finally:
        agent.terminate()
        agent.wait(10)


def test_an_agent_socket_is_relayed_read_only(ssh_agent, keys, tmp_path):
    """As BuildKit (``raw=false``): the step lists and signs through the user's agent, but
    cannot add, remove or lock its keys."""
    assert ssh_add(ssh_agent, str(keys[0])).returncode == 0
    sockets = agent_sockets([SSHSpec("default", (ssh_agent,))])
    relayed = sockets["default"]
    try:
        assert relayed != ssh_agent
        assert ssh_add(relayed, "-l").stdout.strip() == fingerprint(keys[0])
        message = tmp_path / "message"
        message.write_bytes(b"relayed")
        public = _public_only(keys[0], tmp_path)
        assert sign_with_agent(relayed, public, message).returncode == 0
        assert verify(public, message, tmp_path / "message.sig").returncode == 0
        assert ssh_add(relayed, str(keys[1])).returncode != 0
        assert ssh_add(relayed, "-D").returncode != 0
        # SSH_AGENTC_LOCK (22) with a passphrase: refused, and the user's agent stays unlocked
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(relayed)
        conn.sendall(b"\0\0\0\x07\x16\0\0\0\x02pw")
        assert conn.recv(10) == b"\0\0\0\x01\x05"
        conn.close()
    finally:
        sockets.close()
    # the user's agent is as it was
    assert ssh_add(ssh_agent, "-l").stdout.strip() == fingerprint(keys[0])


def test_raw_forwards_the_socket_as_it_is(tmp_path):
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    try:
        sockets = agent_sockets([SSHSpec("default", (str(path),), raw=True)])
        assert sockets == {"default": str(path)} and sockets.servers == []
    finally:
        listener.close()


# -- the command line --------------------------------------------------------------------------

def _build(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    env = agent_env(None)
    return subprocess.run([sys.executable, "-m", "pybk.core.cli.entry", "--root",
                           str(tmp_path / "store"), "build", "--progress", "quiet", *args,
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)


def _bad(tmp_path, value: str, *words: str) -> None:
    done = _build(tmp_path, "--ssh", value)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_unusable_keys_exit_2_naming_the_file(keys, tmp_path):
    encrypted = keygen(tmp_path / "locked", "ed25519", passphrase="correct horse")
    _bad(tmp_path, f"default={encrypted}", str(encrypted), "encrypted", "ssh-add")
    _bad(tmp_path, f"default={keys[0]}.pub", f"{keys[0]}.pub", "public key")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a key\n")
    _bad(tmp_path, f"default={notes}", str(notes), "not an SSH private key")
    broken = tmp_path / "broken"
    broken.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"
                      "-----END OPENSSH PRIVATE KEY-----\n")
    _bad(tmp_path, f"default={broken}", str(broken), "not a valid SSH private key")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _bad(tmp_path, f"default={fifo}", str(fifo), "neither an SSH private key file")
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    _bad(tmp_path, f"default={empty}", str(empty), "no SSH private key")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "a.sock"))
    try:
        _bad(tmp_path, f"default={tmp_path / 'a.sock'},{keys[0]}", "cannot be combined")
        _bad(tmp_path, f"default={tmp_path / 'a.sock'},raw=maybe", "invalid value for 'raw'")
        _bad(tmp_path, f"default={tmp_path / 'a.sock'},{tmp_path / 'a.sock'},raw=true",
             "exactly one socket path")
        _bad(tmp_path, f"default={keys[0]},raw=true", "only supported with socket paths")
    finally:
        listener.close()
    # no line of the key file is in the message
    said = _build(tmp_path, "--ssh", f"default={encrypted}").stderr
    assert not any(line in said for line in encrypted.read_text().splitlines()[1:-1])


def test_pem_keys_pkcs8_and_sec1(tmp_path):
    """PEM forms besides OpenSSH's: PKCS#8 (Ed25519, RSA) and SEC1 (ECDSA), listed with the
    fingerprints ``ssh-keygen -lf`` gives their public keys, and signing for real."""
    require_openssh()
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    made = {"pkcs8-ed25519": (ed25519.Ed25519PrivateKey.generate(), ser.PrivateFormat.PKCS8),
            "pkcs8-rsa": (rsa.generate_private_key(65537, 2048), ser.PrivateFormat.PKCS8),
            "sec1-ecdsa": (ec.generate_private_key(ec.SECP256R1()),
                           ser.PrivateFormat.TraditionalOpenSSL)}
    paths = []
    for name, (key, form) in made.items():
        path = tmp_path / name
        path.write_bytes(key.private_bytes(ser.Encoding.PEM, form, ser.NoEncryption()))
        path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
            ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b" " + name.encode() + b"\n")
        paths.append(path)
    server = AgentSocket(KeyAgent(load_keys([str(p) for p in paths])))
    try:
        listed = [line.split()[1] for line in ssh_add(server.path, "-l").stdout.splitlines()]
        assert listed == [fingerprint(p.with_suffix(".pub")).split()[1] for p in paths]
        message = tmp_path / "message"
        message.write_bytes(b"pem")
        for path in paths:
            public = _public_only(path, tmp_path)
            assert sign_with_agent(server.path, public, message).returncode == 0
            assert verify(public, message, tmp_path / "message.sig").returncode == 0
            (tmp_path / "message.sig").unlink()
    finally:
        server.close()
