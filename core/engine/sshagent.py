"""``--ssh ID=KEY[,KEY…]``: private key files served by an SSH agent held in memory.

Like BuildKit's ``sshprovider``, the paths of one ``--ssh`` are either one agent socket (its
connections are forwarded) or key files; a mix of the two, or two sockets, is refused. pybk
also takes a directory of keys: its regular files that start as a private key does (OpenSSH's
``-----BEGIN OPENSSH PRIVATE KEY-----`` or PEM's ``… PRIVATE KEY-----``) are loaded, the rest
(``*.pub``, ``known_hosts``, ``config`` …) are left alone.

Keys are read once, parsed with ``cryptography`` and kept as key objects in this process:
nothing of them is written anywhere. The agent speaks the SSH agent protocol
(draft-miller-ssh-agent): it lists its identities (``SSH2_AGENTC_REQUEST_IDENTITIES``) and signs
(``SSH2_AGENTC_SIGN_REQUEST``) with Ed25519, ECDSA (nistp256/384/521) and RSA keys, RSA with
``rsa-sha2-256``/``rsa-sha2-512`` when the client asks for them (``ssh-rsa``, SHA-1, otherwise).
Like BuildKit's agent it is read-only: adding, removing and locking keys and extensions are
answered ``SSH_AGENT_FAILURE``. An agent socket is forwarded the same way, read-only
(:class:`ForwardingAgent`), unless ``raw=true`` asks for the socket as it is.

An encrypted key is refused (a build cannot ask for a passphrase): the message names the file
and says to load it into an agent with ``ssh-add`` instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from pybk.core.errors import UsageError

#: the most of a key file read (BuildKit reads 100 KiB)
MAX_KEY_FILE = 100 * 1024
#: the largest agent message accepted (OpenSSH's ``AGENT_MAX_LEN``)
MAX_MESSAGE = 256 * 1024

SSH_AGENT_FAILURE = 5
SSH2_AGENTC_REQUEST_IDENTITIES = 11
SSH2_AGENT_IDENTITIES_ANSWER = 12
SSH2_AGENTC_SIGN_REQUEST = 13
SSH2_AGENT_SIGN_RESPONSE = 14
SSH_AGENT_RSA_SHA2_256 = 2
SSH_AGENT_RSA_SHA2_512 = 4

_FLAG = "--ssh"
_OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = b"-----END OPENSSH PRIVATE KEY-----"
_CURVES = {"secp256r1": ("nistp256", "SHA256"), "secp384r1": ("nistp384", "SHA384"),
           "secp521r1": ("nistp521", "SHA512")}
#: how many length-prefixed fields an OpenSSH private section holds after the key type
_PRIVATE_FIELDS = {"ssh-ed25519": 2, "ssh-rsa": 6, "ecdsa-sha2-nistp256": 3,
                   "ecdsa-sha2-nistp384": 3, "ecdsa-sha2-nistp521": 3}


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: int) -> bytes:
    if value == 0:
        return _string(b"")
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # room for a clear high bit
    return _string(raw)



def _read_message(conn: socket.socket) -> bytes | None:
    """One length-prefixed agent message, or None at the end of the connection or for one
    larger than an agent takes (:data:`MAX_MESSAGE`)."""
    head = _recv_exactly(conn, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_MESSAGE:
        return None
    return _recv_exactly(conn, size)

class _Reader:
    """Length-prefixed fields, read in order; ``ValueError`` past the end."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ValueError("truncated")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return value

    def string(self) -> bytes:
        size = self.uint32()
        if self.pos + size > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.pos:self.pos + size]
        self.pos += size
        return value


class Identity:
    """One private key: its public blob, its comment and what signs with it."""

    __slots__ = ("blob", "comment", "key", "kind")

    def __init__(self, key: Any, comment: str):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.key = key
        self.comment = comment
        kind, encoded = key.public_key().public_bytes(Encoding.OpenSSH,
                                                       PublicFormat.OpenSSH).split()[:2]
        self.kind = kind.decode()
        self.blob = base64.b64decode(encoded)

    def __repr__(self) -> str:  # never the key
        return f"Identity({self.kind}, {self.comment!r})"

    def sign(self, data: bytes, flags: int) -> bytes:
        """The SSH signature blob of ``data``."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        key = self.key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return _string(b"ssh-ed25519") + _string(key.sign(data))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            curve, digest = _CURVES[key.curve.name]
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(getattr(hashes, digest)())))
            return _string(f"ecdsa-sha2-{curve}".encode()) + _string(_mpint(r) + _mpint(s))
        if flags & SSH_AGENT_RSA_SHA2_512:
            name, digest = b"rsa-sha2-512", hashes.SHA512()
        elif flags & SSH_AGENT_RSA_SHA2_256:
            name, digest = b"rsa-sha2-256", hashes.SHA256()
        else:
            name, digest = b"ssh-rsa", hashes.SHA1()  # noqa: S303 - what the client asked for
        return _string(name) + _string(key.sign(data, padding.PKCS1v15(), digest))


def _openssh_comment(data: bytes) -> str:
    """The comment of an unencrypted OpenSSH private key ("" when it cannot be read)."""
    try:
        text = data.split(_OPENSSH_BEGIN, 1)[1].split(_OPENSSH_END, 1)[0]
        raw = base64.b64decode(b"".join(text.split()))
        if not raw.startswith(b"openssh-key-v1\0"):
            return ""
        reader = _Reader(raw[len(b"openssh-key-v1\0"):])
        if reader.string() != b"none":
            return ""
        reader.string()  # kdf name
        reader.string()  # kdf options
        if reader.uint32() != 1:
            return ""
        reader.string()  # public key
        private = _Reader(reader.string())
        private.uint32()
        private.uint32()
        kind = private.string().decode()
        for _ in range(_PRIVATE_FIELDS.get(kind, -1)):
            private.string()
        if kind not in _PRIVATE_FIELDS:
            return ""
        return private.string().decode("utf-8", "replace")
    except (ValueError, IndexError):
        return ""


def looks_like_key(head: bytes) -> bool:
    """Whether a file's first bytes start a private key (OpenSSH or PEM)."""
    first = head.lstrip()[:80]
    return first.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in first


def load_key(path: str) -> Identity:
    """The private key in the file ``path``; :class:`UsageError` naming the file when it is no
    key, an encrypted one or of a type the agent does not sign with."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_ssh_private_key,
    )

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or lie
            raise UsageError(f"{path} is neither an SSH private key file nor an agent socket",
                             flag=_FLAG)
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror or exc}",
                         flag=_FLAG) from None
    if len(data) > MAX_KEY_FILE or not looks_like_key(data):
        hint = " (that is a public key: name the private one)" if path.endswith(".pub") else ""
        raise UsageError(f"{path} is not an SSH private key nor an agent socket{hint}",
                         flag=_FLAG)
    try:
        if _OPENSSH_BEGIN in data:
            key = load_ssh_private_key(data, password=None)
        else:
            key = load_pem_private_key(data, password=None)
    except TypeError:  # "… private key is encrypted"
        raise UsageError(f"the key {path} is encrypted: pybk cannot ask for its passphrase; "
                         "load it into an agent with ssh-add and pass the agent's socket "
                         "(--ssh default=$SSH_AUTH_SOCK)", flag=_FLAG) from None
    except UnsupportedAlgorithm:
        raise UsageError(f"the key {path} is of a type pybk's agent does not support "
                         "(Ed25519, ECDSA and RSA keys are)", flag=_FLAG) from None
    except ValueError:
        raise UsageError(f"{path} is not a valid SSH private key", flag=_FLAG) from None
    supported = (isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey))
                 or (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVES))
    if not supported:
        raise UsageError(f"the key {path} is of a type pybk's agent does not support "
                         "(Ed25519, ECDSA nistp256/384/521 and RSA keys are)", flag=_FLAG)
    comment = _openssh_comment(data) if _OPENSSH_BEGIN in data else ""
    return Identity(key, comment or path)


def key_files(path: str) -> list[str]:
    """The key files ``path`` names: itself, or a directory's files that look like keys."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.stat(full).st_mode):
                continue
            with open(full, "rb") as f:
                if looks_like_key(f.read(80)):
                    found.append(full)
    if not found:
        raise UsageError(f"no SSH private key in the directory {path}", flag=_FLAG)
    return found


def classify(paths: Sequence[str], ssh_id: str = "default") -> str | None:
    """The agent socket among ``paths`` (None: they are key files or directories); a socket
    mixed with keys, or two sockets, is a :class:`UsageError` (as in BuildKit)."""
    sockets, keys = [], []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"{ssh_id}: {path}: {exc.strerror or exc}", flag=_FLAG) from None
        (sockets if stat.S_ISSOCK(mode) else keys).append(path)
    if sockets and keys:
        raise UsageError(f"{ssh_id}: an agent socket ({sockets[0]}) and key files "
                         f"({keys[0]}) cannot be combined", flag=_FLAG)
    if len(sockets) > 1:
        raise UsageError(f"{ssh_id}: only one agent socket is allowed", flag=_FLAG)
    return sockets[0] if sockets else None


def load_keys(paths: Iterable[str]) -> list[Identity]:
    """Every key of ``paths`` (files and directories), in order, without duplicates."""
    identities: list[Identity] = []
    for path in paths:
        for file in key_files(path):
            identity = load_key(file)
            if all(other.blob != identity.blob for other in identities):
                identities.append(identity)
    return identities


class KeyAgent:
    """The agent protocol over ``identities`` (read-only)."""

    def __init__(self, identities: Sequence[Identity]):
        self.identities = list(identities)

    def answer(self, message: bytes) -> bytes:
        """The reply (without its length) to one request (without its length)."""
        if not message:
            return bytes([SSH_AGENT_FAILURE])
        kind, body = message[0], message[1:]
        if kind == SSH2_AGENTC_REQUEST_IDENTITIES:
            reply = bytes([SSH2_AGENT_IDENTITIES_ANSWER]) + struct.pack(">I",
                                                                        len(self.identities))
            for identity in self.identities:
                reply += _string(identity.blob) + _string(identity.comment.encode())
            return reply
        if kind == SSH2_AGENTC_SIGN_REQUEST:
            try:
                reader = _Reader(body)
                blob, data, flags = reader.string(), reader.string(), reader.uint32()
            except ValueError:
                return bytes([SSH_AGENT_FAILURE])
            for identity in self.identities:
                if identity.blob == blob:
                    return bytes([SSH2_AGENT_SIGN_RESPONSE]) + _string(identity.sign(data, flags))
        return bytes([SSH_AGENT_FAILURE])

    def serve(self, conn: socket.socket) -> None:
        """Answer ``conn``'s requests until it closes (or sends more than an agent takes)."""
        with contextlib.suppress(OSError), conn:
            while True:
                message = _read_message(conn)
                if message is None:
                    return
                reply = self.answer(message)
                conn.sendall(struct.pack(">I", len(reply)) + reply)

    def connect(self) -> socket.socket:
        """One end of a new connection to this agent (served by a thread)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        threading.Thread(target=self.serve, args=(ours,), daemon=True,
                         name="pybk-ssh-agent").start()
        return theirs


class ForwardingAgent:
    """An agent socket's requests relayed read-only, as BuildKit does unless ``raw=true``:
    listing identities and signing reach the agent at ``path``; anything else (adding,
    removing, locking, extensions) is answered ``SSH_AGENT_FAILURE`` without reaching it."""

    FORWARDED = (SSH2_AGENTC_REQUEST_IDENTITIES, SSH2_AGENTC_SIGN_REQUEST)

    def __init__(self, path: str):
        self.path = path

    def serve(self, conn: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(OSError), conn, upstream:
            upstream.settimeout(5)
            upstream.connect(self.path)
            upstream.settimeout(None)
            while True:
                message = _read_message(conn)
                if message is None:
                    return
                if not message or message[0] not in self.FORWARDED:
                    conn.sendall(struct.pack(">IB", 1, SSH_AGENT_FAILURE))
                    continue
                upstream.sendall(struct.pack(">I", len(message)) + message)
                reply = _read_message(upstream)
                if reply is None:
                    return
                conn.sendall(struct.pack(">I", len(reply)) + reply)

    def connect(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        threading.Thread(target=self.serve, args=(ours,), daemon=True,
                         name="pybk-ssh-agent").start()
        return theirs


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class AgentSocket:
    """A :class:`KeyAgent` (or :class:`ForwardingAgent`) listening on a unix socket (mode
    0600) in a private directory."""

    def __init__(self, agent: KeyAgent | ForwardingAgent):
        self.agent = agent
        self.directory = tempfile.mkdtemp(prefix="pybk-agent-")  # mode 0700
        self.path = os.path.join(self.directory, "agent.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True, name="pybk-ssh-agent").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self.agent.serve, args=(conn,), daemon=True,
                             name="pybk-ssh-agent").start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class AgentSockets(dict):
    """``{ssh id: agent socket path}`` for a build; :meth:`close` stops the agents this
    process serves for key files."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[AgentSocket] = []

    def close(self) -> None:
        while self.servers:
            self.servers.pop().close()


def spec_agent(spec: Any) -> KeyAgent | ForwardingAgent | None:
    """What serves one ``--ssh`` (``SSHSpec``): a :class:`KeyAgent` over its key files, a
    read-only :class:`ForwardingAgent` to the socket it names (default ``$SSH_AUTH_SOCK``), or
    None for a socket forwarded as it is (``raw=true``)."""
    paths = spec.paths or (os.environ.get("SSH_AUTH_SOCK", ""),)
    socket_path = classify(paths, spec.id) if spec.paths else paths[0]
    if socket_path is None:
        return KeyAgent(load_keys(paths))
    return None if getattr(spec, "raw", False) else ForwardingAgent(socket_path)


def agent_sockets(specs: Iterable[Any]) -> AgentSockets:
    """The agent socket of each ``--ssh`` spec (``SSHSpec``): one this process serves (see
    :func:`spec_agent`), or the socket it names with ``raw=true``."""
    sockets = AgentSockets()
    try:
        for spec in specs:
            agent = spec_agent(spec)
            if agent is None:
                sockets[spec.id] = spec.paths[0]
                continue
            server = AgentSocket(agent)
            sockets.servers.append(server)
            sockets[spec.id] = server.path
    except BaseException:
        sockets.close()
        raise
    return sockets
