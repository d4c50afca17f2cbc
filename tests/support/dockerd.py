"""A dockerd (Debian's docker.io, 20.10 with its vendored BuildKit) started by hand for tests.

``start_dockerd(workdir, insecure_registries=…)`` returns a running ``Dockerd`` or raises
``DockerdUnavailable`` with the reason (not installed, exited, no answer within the timeout).
The daemon has its own data-root, exec-root and socket under ``workdir``, no bridge network
(every ``docker build`` / ``docker run`` needs ``--network=none``) and BuildKit turned on.
``Dockerd.docker(*args)`` runs the 20.10 client (``/usr/bin/docker``) against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLIENT = "/usr/bin/docker"  # the 20.10 client; /usr/local/bin/docker lacks buildx


class DockerdUnavailable(Exception):
    """dockerd cannot be used here; the message says why."""


def dockerd_missing() -> str | None:
    """Why dockerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    for binary in (DOCKERD, DOCKER_CLIENT):
        if not os.path.exists(binary):
            return f"{binary} is not installed (apt-get install docker.io)"
    return None


class Dockerd:
    """A running dockerd; ``env`` points the client at its socket with BuildKit on."""

    def __init__(self, workdir: Path, proc: subprocess.Popen, env: dict[str, str]):
        self.workdir = workdir
        self.proc = proc
        self.env = env

    def docker(self, *args: str, check: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``/usr/bin/docker ARGS`` against this daemon (text output captured)."""
        done = subprocess.run([DOCKER_CLIENT, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stderr[-3000:]}")
        return done

    def log_tail(self, chars: int = 500) -> str:
        try:
            return (self.workdir / "dockerd.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, *, remove: bool = True) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_dockerd(workdir: str | Path, *, insecure_registries: tuple[str, ...] = (),
                  storage_driver: str = "overlay2", timeout: float = 60) -> Dockerd:
    """Start dockerd with its state under ``workdir``; wait until ``docker version`` answers."""
    reason = dockerd_missing()
    if reason:
        raise DockerdUnavailable(reason)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "docker.sock"
    config = {"data-root": str(workdir / "root"), "exec-root": str(workdir / "exec"),
              "pidfile": str(workdir / "dockerd.pid"), "hosts": [f"unix://{sock}"],
              "storage-driver": storage_driver, "exec-opts": ["native.cgroupdriver=cgroupfs"],
              "iptables": False, "ip-forward": False, "ip-masq": False, "bridge": "none",
              "insecure-registries": list(insecure_registries), "features": {"buildkit": True}}
    (workdir / "daemon.json").write_text(json.dumps(config, indent=1))
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1",
           "DOCKER_CONFIG": str(workdir / "client")}
    with open(workdir / "dockerd.log", "wb") as log:
        proc = subprocess.Popen([DOCKERD, "--config-file", str(workdir / "daemon.json")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    daemon = Dockerd(workdir, proc, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DockerdUnavailable(f"dockerd exited with {proc.returncode}: "
                                     f"{daemon.log_tail()}")
        if subprocess.run([DOCKER_CLIENT, "version"], env=env,
                          capture_output=True).returncode == 0:
            return daemon
        time.sleep(0.3)
    daemon.stop(remove=False)
    raise DockerdUnavailable(f"dockerd did not answer within {timeout:.0f} s: "
                             f"{daemon.log_tail()}")
