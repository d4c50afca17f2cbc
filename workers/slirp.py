"""The ``slirp4netns`` network of RUN steps: what ``bridge`` (and ``auto``) is when pybk runs
in a user namespace, where no veth, bridge or iptables rule can be made on the host.

Each step gets a network namespace of its own (made by the engine, which is root in its user
namespace) with ``slirp4netns`` attached to it::

    slirp4netns --configure --mtu=65520 --disable-host-loopback --netns-type=path \\
        --ready-fd=R --exit-fd=E NSPATH tap0

so the step sees ``tap0`` with :data:`ADDRESS`/24, a default route through :data:`GATEWAY`
and a DNS forwarder on :data:`NAMESERVER` (slirp4netns's resolver asks the nameservers of the
host's ``/etc/resolv.conf``). Its connections leave from the engine's own network namespace
as ordinary sockets of the user, so it reaches what the user reaches, except the host's
loopback addresses: ``--disable-host-loopback`` (always given) refuses ``10.0.2.2`` → the
host's ``127.0.0.1``.

``slirp4netns`` lives as long as the step: closing the write end of its exit pipe stops it
(and, as that end belongs to the engine, a killed engine takes its ``slirp4netns`` processes
with it).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time

from pybk.core.errors import BuildError

#: the step's address (``/24``), its gateway (the host as slirp4netns shows it) and the DNS
#: forwarder slirp4netns answers on
ADDRESS = "10.0.2.100"
GATEWAY = "10.0.2.2"
NAMESERVER = "10.0.2.3"
PREFIX = 24
MTU = 65520
#: the interface slirp4netns makes in the step's namespace
TAP = "tap0"
TUN_DEVICE = "/dev/net/tun"
#: how long slirp4netns may take to configure the namespace
READY_TIMEOUT = 10.0



class SlirpError(BuildError):
    """slirp4netns is missing, cannot be used, or failed to attach."""


def binary() -> str | None:
    """The ``slirp4netns`` on ``$PATH``."""
    return shutil.which("slirp4netns")


def missing() -> str | None:
    """Why slirp4netns cannot attach a namespace here (with the fix), or None."""
    if binary() is None:
        return "slirp4netns not found (apt-get install slirp4netns)"
    if not os.access(TUN_DEVICE, os.R_OK | os.W_OK):
        if not os.path.exists(TUN_DEVICE):
            return f"{TUN_DEVICE} is missing (modprobe tun)"
        return f"{TUN_DEVICE} is not readable and writable by this user (chmod 0666 {TUN_DEVICE})"
    return None


def resolv_conf(host_text: str, dns: object = None) -> str:
    """The step's resolv.conf: slirp4netns's forwarder (or ``[dns]`` nameservers when the
    config names them, loopback ones dropped), with the host's (or ``[dns]``'s) search
    domains and options."""
    lines = host_text.splitlines()

    def values(key: str) -> list[str]:
        return [w for ln in lines if ln.split()[:1] == [key] for w in ln.split()[1:]]

    configured = [s for s in getattr(dns, "nameservers", None) or []
                  if not (s.startswith("127.") or s == "::1")]
    search = (list(getattr(dns, "search_domains", None) or [])
              or values("search") or values("domain")[-1:])
    options = list(getattr(dns, "options", None) or []) or values("options")
    out = [f"nameserver {s}" for s in configured or [NAMESERVER]]
    if search:
        out.append("search " + " ".join(search))
    if options:
        out.append("options " + " ".join(options))
    return "\n".join(out) + "\n"


class Slirp:
    """A running ``slirp4netns`` attached to one network namespace."""

    def __init__(self, process: subprocess.Popen, exit_fd: int, log: object):
        self.process = process
        self._exit_fd: int | None = exit_fd
        self._log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 5.0, *, wait: bool = True) -> None:
        """Close its exit pipe and wait for it (killed when it does not go in ``timeout``);
        ``wait=False``: a thread of this process waits (slirp4netns takes 20-60 ms to go,
        tearing its tap device down, which the step need not wait for)."""
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None
        if not wait:
            threading.Thread(target=self.stop, args=(timeout,), name="pybk-slirp-reaper",
                             daemon=True).start()
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(Exception):
            self._log.close()  # type: ignore[attr-defined]


def attach(netns_path: str, *, timeout: float = READY_TIMEOUT) -> Slirp:
    """Start slirp4netns on the namespace pinned at ``netns_path``; return once ``tap0`` is
    configured (or raise :class:`SlirpError` with slirp4netns's own message)."""
    reason = missing()
    if reason:
        raise SlirpError(f"the rootless bridge network needs slirp4netns: {reason}")
    exe = binary()
    assert exe is not None
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process (Slirp.stop)
    try:
        process = subprocess.Popen(
            [exe, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
             "--netns-type=path", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
             netns_path, TAP],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            pass_fds=(ready_w, exit_r), start_new_session=True)
    except OSError as e:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            os.close(fd)
        log.close()
        raise SlirpError(f"cannot start slirp4netns: {e}") from None
    os.close(ready_w)
    os.close(exit_r)
    slirp = Slirp(process, exit_w, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SlirpError(f"slirp4netns did not configure {netns_path} in {timeout:g}s"
                                 + _tail(log))
            readable, _, _ = select.select([ready_r], [], [], min(left, 0.5))
            if readable:
                if os.read(ready_r, 1) == b"1":
                    return slirp
                process.wait(2)
                raise SlirpError(f"slirp4netns failed on {netns_path} "
                                 f"(exit {process.returncode})" + _tail(log))
            if process.poll() is not None:
                raise SlirpError(f"slirp4netns failed on {netns_path} "
                                 f"(exit {process.returncode})" + _tail(log))
    except BaseException:
        slirp.stop()
        raise
    finally:
        os.close(ready_r)


def _tail(log: object) -> str:
    """The last lines slirp4netns wrote to stderr, for an error message."""
    try:
        log.seek(0)  # type: ignore[attr-defined]
        text = log.read().decode("utf-8", "replace").strip()  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return ""
    lines = text.splitlines()[-3:]
    return (": " + " / ".join(lines)) if lines else ""
