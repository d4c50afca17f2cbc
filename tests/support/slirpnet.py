"""Servers for the slirp4netns network tests, all on this machine.

- :class:`NetnsServer`: a network namespace of the test's own, joined to the host by a veth
  pair (``192.168.213.N/30``), with an HTTP and a DNS server on its side: the host routes to
  it, so a step behind slirp4netns (whose connections leave from the host's namespace)
  reaches it.
- :class:`LoopbackServer`: an HTTP server on the host's ``127.0.0.1``, which a step behind
  slirp4netns must NOT reach (``--disable-host-loopback``: ``10.0.2.2`` is refused).

:func:`check_build_network` is the end-to-end check of a build on the slirp4netns network
(:func:`slirp_dockerfile` built, :func:`check_slirp_build` on what it exported): the same for
root with ``networkMode = "slirp4netns"`` (``tests/workers/test_slirp.py``) and for a rootless
build, which passes its own way of running ``pybk build``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

#: the body both servers answer with
HELLO = b"hello from the test's namespace\n"

_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
body = sys.argv[2].encode()
while True:
    c, _ = s.accept()
    try:
        c.settimeout(5)
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    c.close()
"""


_DNS = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
names = {n.encode(): socket.inet_aton(a) for n, a in (p.split("=") for p in sys.argv[2:])}
while True:
    query, peer = s.recvfrom(512)
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1:i + 1 + query[i]])
        i += query[i] + 1
    qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    address = names.get(b".".join(labels).lower()) if qtype == 1 else None
    flags = 0x8180 if address or qtype != 1 else 0x8183  # NXDOMAIN for an unknown name
    reply = query[:2] + struct.pack(">HHHHH", flags, 1, 1 if address else 0, 0, 0)
    reply += query[12:i + 5]
    if address:
        reply += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + address
    s.sendto(reply, peer)
"""

#: the name the test's DNS server answers (with the server's address)
NAME = "pybk-slirp-test.internal"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetnsServer:
    """A netns ``pybkslirp<pid>`` with ``address`` on a veth to the host (``host_address``),
    an HTTP server on ``address:port`` answering :data:`HELLO` and a DNS server on
    ``address:53`` answering :data:`NAME` with ``address``. Needs real root."""

    def __init__(self) -> None:
        n = os.getpid() % 60
        self.name = f"pybkslirp{os.getpid()}"
        self.host_address = f"192.168.213.{4 * n + 1}"
        self.address = f"192.168.213.{4 * n + 2}"
        self.veth = f"pbsl{os.getpid() % 100000}"
        self.port = 0
        self._server: subprocess.Popen | None = None
        self._dns: subprocess.Popen | None = None

    def __enter__(self) -> NetnsServer:
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
                "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.veth)
            _ip("link", "set", self.veth, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", "eth0")
            _ip("-n", self.name, "link", "set", "eth0", "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            self._server = subprocess.Popen(
                ["ip", "netns", "exec", self.name, sys.executable, "-c", _SERVER,
                 self.address, HELLO.decode()], stdout=subprocess.PIPE, text=True)
            assert self._server.stdout is not None
            self.port = int(self._server.stdout.readline())
            self._dns = subprocess.Popen(
                ["ip", "netns", "exec", self.name, sys.executable, "-c", _DNS, self.address,
                 f"{NAME}={self.address}"], stdout=subprocess.PIPE, text=True)
            assert self._dns.stdout is not None and self._dns.stdout.readline() == "ready\n"
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def __exit__(self, *exc: object) -> None:
        for server in (self._server, self._dns):
            if server is not None:
                server.kill()
                server.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)  # veth with it
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)


class LoopbackServer:
    """An HTTP server on the host's ``127.0.0.1:port`` (counting its connections)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nloopback\n")

    def close(self) -> None:
        self.sock.close()


def check_build_network(workdir: Path, run_build: Callable[[Path, Path], int], *,
                        resolv: bool = False) -> None:
    """The end-to-end check of a build whose RUN steps get the slirp4netns network:
    ``run_build(context, out)`` runs ``pybk build`` of the directory ``context`` with
    ``--build-context busybox=oci-layout://…`` and ``-o type=local,dest=OUT`` (as root with
    ``networkMode = "slirp4netns"``, or rootless with ``bridge``/``auto``) and returns its exit
    code. ``workdir`` must be writable by whoever runs the build. ``resolv``: also check that
    the step's resolv.conf names slirp4netns's forwarder ``10.0.2.3``. Needs real root (for
    the servers' namespace)."""
    context, out = workdir / "slirp-context", workdir / "slirp-out"
    context.mkdir(exist_ok=True)
    loopback = LoopbackServer()
    try:
        with NetnsServer() as server:
            (context / "Dockerfile").write_text(slirp_dockerfile(server, loopback))
            code = run_build(context, out)
            assert code == 0, f"the build failed ({code})"
            check_slirp_build(out, loopback, resolv=resolv)
    finally:
        loopback.close()


def slirp_dockerfile(server: NetnsServer, loopback: LoopbackServer) -> str:
    """Steps on the default network (fetch from ``server``, its address and route, try the
    host's loopback through ``10.0.2.2``) and one with ``--network=none``. (``timeout``, not
    ``wget -T``: busybox's ``wget -T`` crashes on a refused connection.)"""
    return (
        "FROM busybox\n"
        f"RUN timeout 10 wget -q -O /fetched {server.url} && ip -o -4 addr show > /addr && "
        "ip route > /route && cat /etc/resolv.conf > /resolv && "
        f"(timeout 3 wget -q -O - http://10.0.2.2:{loopback.port}/ && echo reached || "
        "echo unreachable) > /loopback\n"
        f"RUN --network=none ip -o link > /links; (timeout 2 wget -q -O - {server.url} && "
        "echo reached || echo unreachable) > /none\n")


def check_slirp_build(out: Path, loopback: LoopbackServer, *, resolv: bool = False) -> None:
    """What a build of :func:`slirp_dockerfile` exported to ``out`` shows (``resolv``: the
    step's resolv.conf names ``10.0.2.3`` first)."""
    if resolv:
        assert (out / "resolv").read_text().startswith("nameserver 10.0.2.3\n")
    assert (out / "fetched").read_bytes() == HELLO
    assert re.search(r"tap0\s+inet 10\.0\.2\.100/24", (out / "addr").read_text())
    assert (out / "route").read_text().startswith("default via 10.0.2.2 dev tap0")
    assert (out / "loopback").read_text() == "unreachable\n"
    assert loopback.connections == 0
    assert re.findall(r"^\d+: (\w+)", (out / "links").read_text(), re.M) == ["lo"]
    assert (out / "none").read_text() == "unreachable\n"
