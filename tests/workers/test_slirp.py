"""RUN steps' network through slirp4netns: what ``bridge`` is when the engine runs in a user
namespace, and ``networkMode = "slirp4netns"`` as real root.

The user-namespace tests run a script as root inside ``unshare --user --map-root-user
--mount`` (a user namespace mapping only uid 0, so the engine sees itself in a user
namespace, as rootless pybk does; the network namespace stays the host's). Every server is on
this machine: in a network namespace the test makes (:class:`support.slirpnet.NetnsServer`)
or on the host's 127.0.0.1, which the steps must not reach.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.pybkd import process_gone
from support.slirpnet import (
    HELLO,
    NAME,
    LoopbackServer,
    NetnsServer,
    check_build_network,
)

from pybk.core.cli.commands import main


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and veths of the test's own)"
    for tool in ("slirp4netns", "unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/setup.sh installs slirp4netns)"
    return None


@pytest.fixture(autouse=True)
def _needs_slirp() -> None:
    reason = _missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def netns_server() -> Iterator[NetnsServer]:
    with NetnsServer() as server:
        yield server


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


#: run in the user namespace: acquire a step network, look at it from inside, release it
_IN_USERNS = r"""
import asyncio, json, os, subprocess, sys
from pybk.workers import network
from pybk.workers.network import Networks, NetworkOptions

state, mode, url, loop_port = sys.argv[1:5]
CLIENT = ("import socket, sys\n"
          "try:\n"
          "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
          "    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); data = b''\n"
          "    while chunk := s.recv(4096): data += chunk\n"
          "    print(data.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')\n"
          "except OSError as e:\n"
          "    print('unreachable', e)\n")

def inside(netns, *cmd):
    return subprocess.run(["nsenter", f"--net={netns}", *cmd], capture_output=True,
                          text=True).stdout

async def run():
    out = {"rootless": network.rootless()}
    nets = Networks(state, NetworkOptions(mode=mode))
    out["mode"] = nets.default_mode()
    a = await nets.acquire("sandbox")
    out["attachment"] = [a.mode, a.address, a.gateway]
    host, port = url.split("//")[1].strip("/").split(":")
    out["addr"] = inside(a.netns, "ip", "-o", "-4", "addr", "show")
    out["route"] = inside(a.netns, "ip", "route")
    out["server"] = inside(a.netns, sys.executable, "-c", CLIENT, host, port)
    out["loopback"] = inside(a.netns, sys.executable, "-c", CLIENT, "10.0.2.2", loop_port)
    out["slirp_alive"] = os.path.exists(f"/proc/{nets._slirps[a.entry].pid}")
    pid = nets._slirps[a.entry].pid
    await nets.release(a)
    for _ in range(100):  # it goes on its own (its exit pipe closed), reaped by a thread
        if not os.path.exists(f"/proc/{pid}"):
            break
        await asyncio.sleep(0.05)
    out["slirp_after"] = os.path.exists(f"/proc/{pid}")
    out["none"] = (await nets.acquire("none")).netns
    out["left"] = {d: os.listdir(os.path.join(state, "net", d))
                   for d in ("ns", "state", "idle", "busy")}
    print(json.dumps(out))

asyncio.run(run())
"""


def _in_userns(script: str, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", sys.executable,
                           "-c", script, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("mode", ["bridge", "auto"])
def test_rootless_bridge_is_slirp4netns_with_its_address_and_no_host_loopback(
        tmp_path, netns_server, loopback, mode):
    done = _in_userns(_IN_USERNS, str(tmp_path / "state"), mode, netns_server.url,
                      str(loopback.port))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["rootless"] is True and out["mode"] == "slirp4netns"
    assert out["attachment"] == ["slirp4netns", "10.0.2.100", "10.0.2.2"]
    assert "tap0    inet 10.0.2.100/24" in out["addr"]
    assert out["route"].startswith("default via 10.0.2.2 dev tap0")
    assert out["server"] == HELLO.decode()  # a namespace the host routes to: reached
    assert out["loopback"].startswith("unreachable")  # the host's 127.0.0.1: not
    assert loopback.connections == 0
    assert out["slirp_alive"] is True and out["slirp_after"] is False
    assert out["none"] is None  # the runtime makes it, with loopback only
    assert out["left"] == {"ns": [], "state": [], "idle": [], "busy": []}


_DNS_IN_USERNS = r"""
import asyncio, json, subprocess, sys
from pybk.workers.network import Networks, NetworkOptions

state, resolv, name = sys.argv[1:4]
QUERY = ("import socket, struct, sys\n"
         "q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)\n"
         "q += b''.join(bytes([len(p)]) + p.encode() for p in sys.argv[1].split('.'))\n"
         "q += b'\\0' + struct.pack('>HH', 1, 1)\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
         "s.sendto(q, ('10.0.2.3', 53))\n"
         "r = s.recv(512)\n"
         "print(socket.inet_ntoa(r[-4:]) if r[7] else f'rcode {r[3] & 15}')\n")
# slirp4netns forwards 10.0.2.3 to the nameservers of the /etc/resolv.conf it sees
subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)

async def run():
    nets = Networks(state, NetworkOptions(mode="bridge"))
    a = await nets.acquire("sandbox")
    answers = [subprocess.run(["nsenter", f"--net={a.netns}", sys.executable, "-c", QUERY, n],
                              capture_output=True, text=True).stdout.strip()
               for n in (name, "unknown." + name)]
    await nets.release(a)
    print(json.dumps(answers))

asyncio.run(run())
"""


def test_rootless_dns_forwarder_asks_the_hosts_nameservers(tmp_path, netns_server):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {netns_server.address}\n")
    done = _in_userns(_DNS_IN_USERNS, str(tmp_path / "state"), str(resolv), NAME)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [netns_server.address, "rcode 3"]


_MODE_ONLY = r"""
import asyncio, sys
from pybk.workers.network import Networks, NetworkOptions
nets = Networks(sys.argv[1], NetworkOptions(mode=sys.argv[2]))
print(nets.default_mode())
try:
    asyncio.run(nets.acquire("sandbox"))
except Exception as e:
    print(type(e).__name__, e)
"""


def test_rootless_auto_without_slirp4netns_is_host_and_says_why(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _in_userns(_MODE_ONLY, str(tmp_path / "state"), "auto", env={"PATH": str(empty)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "host"
    assert done.stderr == ("WARNING: networkMode auto: slirp4netns not found (apt-get install "
                           "slirp4netns); rootless RUN steps use the host's network\n")


def test_rootless_bridge_without_slirp4netns_fails_with_the_fix(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _in_userns(_MODE_ONLY, str(tmp_path / "state"), "bridge", env={"PATH": str(empty)})
    assert done.stdout.splitlines() == [
        "slirp4netns", "SlirpError the rootless bridge network needs slirp4netns: slirp4netns "
        "not found (apt-get install slirp4netns)"]


def test_rootless_cni_is_refused(tmp_path):
    done = _in_userns(_MODE_ONLY, str(tmp_path / "state"), "cni")
    assert done.stdout.splitlines()[1] == (
        "CNIError networkMode cni needs pybk running as real root (in a user namespace it "
        "cannot attach veths on the host); rootless, use bridge (slirp4netns), host or none")


def test_resolv_conf_names_slirps_forwarder():
    from pybk.core.config.schema import DNSConfig
    from pybk.workers import slirp
    from pybk.workers.network import Attachment, step_resolv_conf

    host = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch example.org\noptions ndots:2\n"
    assert slirp.resolv_conf(host) == ("nameserver 10.0.2.3\nsearch example.org\n"
                                       "options ndots:2\n")
    dns = DNSConfig(nameservers=["127.0.0.1", "192.0.2.9"], search_domains=["corp"])
    assert slirp.resolv_conf(host, dns) == ("nameserver 192.0.2.9\nsearch corp\n"
                                            "options ndots:2\n")
    text = step_resolv_conf(Attachment("slirp4netns", "/x", slirp.ADDRESS, slirp.GATEWAY))
    assert text.splitlines()[0] == "nameserver 10.0.2.3"


def test_build_on_networkmode_slirp4netns(tmp_path, busybox_layout, capsys):
    """End to end as real root: ``networkMode = "slirp4netns"`` forces the rootless network."""
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\ngc = false\nnetworkMode = "slirp4netns"\n')
    root = tmp_path / "store"

    def build(context: Path, out: Path) -> int:
        code = main(["--root", str(root), "--config", str(config), "build", "--progress",
                     "plain", "--build-context", f"busybox=oci-layout://{busybox_layout}",
                     "-o", f"type=local,dest={out}", str(context)])
        if code != 0:
            print(capsys.readouterr().err)
        return code

    check_build_network(tmp_path, build)
    net = Path(root, "executor", "net")
    assert not any(any((net / d).iterdir()) for d in ("ns", "state", "idle", "busy"))




def test_a_killed_build_takes_its_slirp4netns_along(tmp_path, busybox_layout, capsys):
    """slirp4netns's exit pipe is the engine's: a SIGKILLed build's slirp4netns goes at once,
    and the next build on the store removes the namespace it left."""
    import signal
    import time

    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\ngc = false\nnetworkMode = "slirp4netns"\n')
    root = tmp_path / "store"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN touch /tmp/started; sleep 300\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybk.core.cli.commands", "--root", str(root), "--config",
         str(config), "build", "--progress", "plain", "--build-context",
         f"busybox=oci-layout://{busybox_layout}", str(ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    net = root / "executor" / "net"
    try:
        deadline = time.monotonic() + 120
        while not any((root / "executor" / "bundles").glob("*/rootfs/tmp/started")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        [state] = list((net / "state").iterdir())
        pid = json.loads(state.read_text())["slirp_pid"]
        assert not process_gone(pid)
        proc.send_signal(signal.SIGKILL)  # the build only: its runc and container live on
        proc.wait()
        deadline = time.monotonic() + 10
        while not process_gone(pid):
            assert time.monotonic() < deadline, "slirp4netns outlived the build"
            time.sleep(0.05)
        assert list((net / "ns").iterdir())  # until the next build opens the store
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
        code = main(["--root", str(root), "--config", str(config), "build", "--progress",
                     "plain", "--build-context", f"busybox=oci-layout://{busybox_layout}",
                     str(ctx)])
        assert code == 0, capsys.readouterr().err
        assert not any(any((net / d).iterdir()) for d in ("ns", "state", "idle", "busy"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
