"""OpenSSH's client tools (Debian's openssh-client) for the SSH agent tests: key generation,
fingerprints, ``ssh-add`` against an agent socket, signatures made through an agent and
verified (``ssh-keygen -Y sign`` / ``-Y verify``), and a tree of the host's ``ssh-add`` and
``ssh-keygen`` with their shared libraries to copy into a step's image.

``require_openssh()`` skips the calling test when they are missing, and fails instead under
``CI=true``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.pythonimage import shared_libraries, skip_or_fail

TOOLS = ("ssh-add", "ssh-keygen")


def require_openssh() -> None:
    missing = [tool for tool in (*TOOLS, "ssh-agent") if not shutil.which(tool)]
    if missing:
        skip_or_fail(f"{', '.join(missing)} missing (apt-get install openssh-client)")


def keygen(path: Path, kind: str = "ed25519", *, comment: str = "", passphrase: str = "",
           bits: int | None = None, pem: bool = False) -> Path:
    args = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment, "-f", str(path)]
    if bits:
        args += ["-b", str(bits)]
    if pem:
        args += ["-m", "PEM"]
    subprocess.run(args, check=True, capture_output=True)
    return path


def fingerprint(key: Path) -> str:
    """``ssh-keygen -lf``'s line: ``BITS SHA256:… COMMENT (TYPE)``."""
    return subprocess.run(["ssh-keygen", "-lf", str(key)], check=True, capture_output=True,
                          text=True).stdout.strip()


def agent_env(sock: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    if sock:
        env["SSH_AUTH_SOCK"] = sock
    return env


def ssh_add(sock: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh-add", *args], env=agent_env(sock), capture_output=True,
                          text=True, timeout=30)


def sign_with_agent(sock: str | None, public_key: Path, message: Path
                    ) -> subprocess.CompletedProcess:
    """``ssh-keygen -Y sign`` of ``message`` with only the public key at hand: the private
    half must come from the agent at ``sock``."""
    return subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(public_key), "-n", "file",
                           str(message)], env=agent_env(sock), capture_output=True, text=True,
                          timeout=30)


def verify(public_key: Path, message: Path, signature: Path) -> subprocess.CompletedProcess:
    allowed = signature.with_suffix(".allowed")
    allowed.write_text(f"signer {public_key.read_text().strip()}\n")
    with open(message, "rb") as stdin:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "signer",
                               "-n", "file", "-s", str(signature)], stdin=stdin,
                              capture_output=True, text=True, timeout=30)


def tools_tree(dest: Path) -> Path:
    """``dest`` holding ``usr/bin/ssh-add``, ``usr/bin/ssh-keygen`` and the libraries ``ldd``
    names for them at the paths it names (copied as regular files): ``COPY dest/ /`` over
    busybox gives a step both tools."""
    binaries = [shutil.which(tool) or tool for tool in TOOLS]
    for host in (*binaries, *shared_libraries(binaries)):
        target = dest / host.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(host, target)
        os.chmod(target, 0o755)
    return dest
