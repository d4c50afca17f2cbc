"""A git server over SSH on 127.0.0.1 for tests: paramiko's SSH server (its own host key),
public-key authentication against ``authorized`` (public key blobs), and ``git-upload-pack``
run for the repositories under ``root``. OpenSSH's ``ssh`` (run by git) is the client. Every
key offered and accepted is recorded (``accepted``, as ``ssh-keygen -lf`` fingerprints)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shlex
import socket
import subprocess
import threading
from pathlib import Path

from support.pythonimage import skip_or_fail


def require_paramiko() -> None:
    try:
        import paramiko  # noqa: F401
    except ImportError:
        skip_or_fail("paramiko is missing (pip install paramiko: the tests' SSH git server)")


def fingerprint_of(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class GitSSHServer:
    def __init__(self, root: Path, host_key: Path):
        import paramiko

        self.root = root
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(host_key))
        self.authorized: set[bytes] = set()
        self.accepted: list[str] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.transports: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        import paramiko

        server = self

        class Interface(paramiko.ServerInterface):
            def get_allowed_auths(self, username: str) -> str:
                return "publickey"

            def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
                if key.asbytes() in server.authorized:
                    server.accepted.append(fingerprint_of(key.asbytes()))
                    return paramiko.AUTH_SUCCESSFUL
                return paramiko.AUTH_FAILED

            def check_channel_request(self, kind: str, chanid: int) -> int:
                return (paramiko.OPEN_SUCCEEDED if kind == "session"
                        else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

            def check_channel_exec_request(self, channel, command: bytes) -> bool:
                words = shlex.split(command.decode())
                if len(words) != 2 or words[0] != "git-upload-pack":
                    return False
                repo = (server.root / words[1].strip("/")).resolve()
                if server.root.resolve() not in repo.parents or not repo.is_dir():
                    return False
                threading.Thread(target=_upload_pack, args=(channel, repo),
                                 daemon=True).start()
                return True

        transport = paramiko.Transport(conn)
        self.transports.append(transport)
        transport.add_server_key(self.host_key)
        try:
            transport.start_server(server=Interface())
        except (paramiko.SSHException, EOFError, OSError):
            return

    def close(self) -> None:
        self.listener.close()
        for transport in self.transports:
            transport.close()


def _upload_pack(channel, repo: Path) -> None:
    proc = subprocess.Popen(["git-upload-pack", str(repo)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def feed() -> None:
        with contextlib.suppress(OSError):
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                proc.stdin.write(data)
                proc.stdin.flush()
        with contextlib.suppress(OSError):
            proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()
    while True:
        data = proc.stdout.read1(65536)
        if not data:
            break
        channel.sendall(data)
    channel.send_exit_status(proc.wait())
    channel.close()
