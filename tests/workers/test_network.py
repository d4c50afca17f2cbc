"""RUN steps' networks with the real CNI plugins: bridge (the default), cni, host, none; DNS,
/etc/hosts, proxies; nothing left behind after many steps or a killed build.

Every server a step talks to runs on this machine: on the bridge's gateway address (bound
with IP_FREEBIND before the bridge exists) or on 127.0.0.1 for host-network steps.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.netserver import StepServer

from pybk.core.cli.commands import main

CNI_DIR = "/usr/lib/cni"
GATEWAY = "10.10.0.1"


def _cni_missing() -> str | None:
    if os.geteuid() != 0 or not shutil.which("runc"):
        return "needs root and runc"
    missing = [p for p in ("bridge", "host-local", "loopback", "firewall")
               if not os.access(os.path.join(CNI_DIR, p), os.X_OK)]
    if missing:
        return f"CNI plugins missing in {CNI_DIR}: {', '.join(missing)}"
    if not shutil.which("iptables") or not shutil.which("ip"):
        return "iptables and iproute2 are needed by the bridge plugin"
    return None


@pytest.fixture(autouse=True)
def _needs_cni() -> None:
    reason = _cni_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (scripts/setup.sh installs containernetworking-plugins)")
        pytest.skip(reason)


# -- servers ----------------------------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[..., StepServer]]:
    servers: list[StepServer] = []

    def start(host: str = GATEWAY, handler=None) -> StepServer:
        server = StepServer(host, handler or (lambda req: (200, f"hello {req.path}\n".encode())))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# -- builds -----------------------------------------------------------------------------------


def _config(tmp_path: Path, extra: str = "", worker: str = "") -> str:
    path = tmp_path / "buildkitd.toml"
    path.write_text(f"{extra}\n[worker.oci]\ngc = false\n{worker}\n")
    return str(path)


def _build(capsys, root: str, config: str, context: Path, dockerfile: str, busybox_layout,
           *args: str, out: Path | None = None) -> tuple[int, str]:
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    output = ["-o", f"type=local,dest={out}"] if out is not None else []
    code = main(["--root", root, "--config", config, "build", "--progress", "plain",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}", *output, *args,
                 str(context)])
    return code, capsys.readouterr().err


def _address(text: str) -> ipaddress.IPv4Address:
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", text)
    assert match, text
    return ipaddress.IPv4Address(match.group(1))


def _net_state(bridge: str, subnet_prefix: str) -> dict[str, object]:
    """What the namespaces on ``bridge`` leave on the host: its ports (veths), IPAM leases,
    NAT and forwarding rules naming the network, the bridge or its subnet."""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    ports = Path(f"/sys/class/net/{bridge}/brif")
    ipam = Path(f"/var/lib/cni/networks/pybk-{bridge}")
    return {
        "bridge": ports.parent.exists(),
        "ports": sorted(p.name for p in ports.iterdir()) if ports.is_dir() else [],
        "leases": sorted(p.name for p in ipam.iterdir() if re.fullmatch(r"[\d.]+", p.name))
        if ipam.is_dir() else [],
        "rules": sorted(ln for ln in rules.splitlines() if ln.startswith("-A") and (
            subnet_prefix in ln or f"pybk-{bridge}" in ln or f" {bridge} " in ln)),
    }


def _nothing_left(state: dict[str, object], bridge: str, subnet: str) -> None:
    """No port, no address; only the bridge's own rules (made once, like BuildKit's)."""
    from pybk.workers.network import bridge_rules

    assert state["ports"] == [] and state["leases"] == []
    assert len(state["rules"]) == len(bridge_rules(bridge, subnet + "0/24"))


def _store_clean(root: str) -> bool:
    net = Path(root, "executor", "net")
    return not any((net / d).is_dir() and any((net / d).iterdir())
                   for d in ("ns", "state", "idle", "busy"))


@pytest.fixture
def own_bridge(tmp_path: Path) -> Iterator[Callable[[int], tuple[str, str, str]]]:
    """A bridge and subnet of the test's own (a config, the bridge name, the subnet prefix):
    what is left on the host is then the test's alone; removed afterwards."""
    from pybk.workers.network import remove_bridge

    made: list[tuple[str, str]] = []

    def make(third_octet: int) -> tuple[str, str, str]:
        bridge = f"pybkt{os.getpid() % 10000}x{third_octet}"[:15]
        subnet = f"10.211.{third_octet}."
        made.append((bridge, subnet + "0/24"))
        return (_config(tmp_path, worker=f'bridgeName = "{bridge}"\n'
                                         f'bridgeSubnet = "{subnet}0/24"'), bridge, subnet)

    yield make
    for bridge, subnet in made:
        remove_bridge(bridge, subnet)
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert not [ln for ln in subprocess.run(["iptables-save"], capture_output=True,
                                                text=True).stdout.splitlines()
                    if bridge in ln or subnet in ln]


def _fetch_in_subnet(capsys, root, config, tmp_path, busybox_layout, server, path, subnet):
    """A step fetches ``path`` from ``server`` with an address from ``subnet``."""
    code, err = _build(capsys, root, config, tmp_path / "ctx",
                       "FROM busybox\nRUN ip -4 -o addr show eth0 > /addr && "
                       f"wget -qO /got {server.url}{path}\n", busybox_layout,
                       out=tmp_path / "out")
    assert code == 0, err
    assert _address((tmp_path / "out" / "addr").read_text()) in ipaddress.ip_network(subnet)
    assert (tmp_path / "out" / "got").read_text() == f"hello {path}\n"


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "store")


# -- tests ------------------------------------------------------------------------------------


def test_default_network_is_a_bridge_with_an_address_and_a_way_out(
        tmp_path, root, busybox_layout, serve, capsys):
    server = serve()
    _fetch_in_subnet(capsys, root, _config(tmp_path), tmp_path, busybox_layout, server,
                     "/file", "10.10.0.0/16")
    client, path = server.requests[0]
    assert path == "/file" and ipaddress.IPv4Address(client) in ipaddress.ip_network(
        "10.10.0.0/16")
    assert _store_clean(root)  # the embedded build tore down what it made


def test_concurrent_steps_get_their_own_addresses_and_cannot_reach_each_other(
        tmp_path, root, busybox_layout, serve, capsys):
    """Two stages run at once (a barrier on the server proves it); each tells the other's
    address; a web server in one is unreachable from the other (isolated bridge ports)."""
    barrier = threading.Barrier(2, timeout=30)
    seen: dict[str, str] = {}

    def meet(req):
        name = req.path.rsplit("/", 1)[1]
        seen[name] = req.client_address[0]
        barrier.wait()
        return 200, seen["b" if name == "a" else "a"].encode()

    server = serve(handler=meet)
    dockerfile = f"""FROM busybox AS a
RUN mkdir /www && echo up > /www/x && httpd -p 8000 -h /www \\
 && wget -qO /self http://127.0.0.1:8000/x \\
 && wget -qO /peer {server.url}/meet/a && sleep 4 && ip -4 -o addr show eth0 > /addr
FROM busybox AS b
RUN wget -qO /peer {server.url}/meet/b \\
 && if timeout 3 wget -qO- http://$(cat /peer):8000/x; then echo reached; else echo isolated; fi > /result \\
 && ip -4 -o addr show eth0 > /addr
FROM busybox
COPY --from=a /addr /a
COPY --from=a /self /self
COPY --from=b /addr /b
COPY --from=b /result /result
"""
    code, err = _build(capsys, root, _config(tmp_path), tmp_path / "ctx", dockerfile,
                       busybox_layout, out=tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out"
    a, b = _address((out / "a").read_text()), _address((out / "b").read_text())
    assert a != b and {str(a), str(b)} == set(seen.values())
    assert (out / "self").read_text() == "up\n"  # a's server ran ...
    assert (out / "result").read_text() == "isolated\n"  # ... and b could not reach it


def test_network_none_and_host(tmp_path, root, busybox_layout, serve, capsys):
    bridge_server = serve()
    local = serve("127.0.0.1")
    config = _config(tmp_path)
    code, err = _build(capsys, root, config, tmp_path / "none",
                       "FROM busybox\nRUN --network=none ip -o link > /links; "
                       f"if timeout 3 wget -qO- {bridge_server.url}/x; then echo reached; "
                       "else echo unreachable; fi > /result\n",
                       busybox_layout, out=tmp_path / "out-none")
    assert code == 0, err
    assert (tmp_path / "out-none" / "result").read_text() == "unreachable\n"
    assert re.findall(r"^\d+: (\w+)", (tmp_path / "out-none" / "links").read_text(),
                      re.M) == ["lo"]
    assert bridge_server.requests == []

    host_df = f"FROM busybox\nRUN --network=host wget -qO /got {local.url}/local\n"
    code, err = _build(capsys, root, config, tmp_path / "host", host_df, busybox_layout)
    assert code != 0 and "network.host" in err  # no --allow
    granted = _config(tmp_path, 'insecure-entitlements = ["network.host"]')
    code, err = _build(capsys, root, granted, tmp_path / "host", host_df, busybox_layout,
                       "--allow", "network.host", out=tmp_path / "out-host")
    assert code == 0, err
    assert (tmp_path / "out-host" / "got").read_text() == "hello /local\n"
    assert local.requests == [("127.0.0.1", "/local")]


def test_dns_and_add_host_reach_the_step_but_not_the_image(
        tmp_path, root, busybox_layout, capsys):
    config = _config(tmp_path, '[dns]\nnameservers = ["10.10.0.1", "127.0.0.53"]\n'
                               'options = ["ndots:3", "timeout:1"]\n'
                               'searchDomains = ["build.test", "corp.test"]\n')
    code, err = _build(capsys, root, config, tmp_path / "ctx",
                       "FROM busybox\nRUN cat /etc/resolv.conf > /resolv && "
                       "cat /etc/hosts > /hosts && hostname > /hostname\n",
                       busybox_layout, "--add-host", "db.test:10.1.2.3",
                       "--add-host", "gw.test=host-gateway", out=tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out"
    # the loopback nameserver is dropped: it is unreachable from the step's namespace
    assert (out / "resolv").read_text() == ("nameserver 10.10.0.1\nsearch build.test corp.test\n"
                                            "options ndots:3 timeout:1\n")
    hosts = (out / "hosts").read_text()
    assert "10.1.2.3\tdb.test" in hosts and f"{GATEWAY}\tgw.test" in hosts
    assert f"localhost {(out / 'hostname').read_text().strip()}" in hosts
    for name in ("resolv.conf", "hosts"):  # the image keeps its own files (or none)
        exported = out / "etc" / name
        assert not exported.exists() or "test" not in exported.read_text()


def test_proxy_build_args_reach_the_step_and_stay_out_of_the_image(
        tmp_path, root, busybox_layout, serve, capsys):
    proxy = serve(handler=lambda req: (200, f"proxied {req.path}\n".encode()))
    code, err = _build(capsys, root, _config(tmp_path), tmp_path / "ctx",
                       "FROM busybox\nRUN wget -qO /got http://files.example.invalid/f.txt\n",
                       busybox_layout, "--build-arg", f"HTTP_PROXY={proxy.url}",
                       "-o", f"type=oci,dest={tmp_path / 'img.tar'}", out=None)
    assert code == 0, err
    assert proxy.requests == [(proxy.requests[0][0], "http://files.example.invalid/f.txt")]
    import tarfile

    with tarfile.open(tmp_path / "img.tar") as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    configs = [json.loads(b) for b in blobs.values()
               if b.startswith(b"{") and b'"rootfs"' in b]
    assert configs
    text = json.dumps(configs)
    assert proxy.url not in text and "HTTP_PROXY" not in text


def test_user_cni_config_with_its_own_subnet(tmp_path, root, busybox_layout, serve, capsys):
    conflist = {
        "cniVersion": "1.0.0", "name": "pybk-test-cni",
        "plugins": [{"type": "bridge", "bridge": "pybkcni0", "isGateway": True,
                     "isDefaultGateway": True, "ipMasq": True,
                     "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                              "ranges": [[{"subnet": "10.99.7.0/24"}]]}},
                    {"type": "firewall"}]}
    (tmp_path / "cni.json").write_text(json.dumps(conflist))
    server = serve("10.99.7.1")
    config = _config(tmp_path, worker=f'networkMode = "cni"\ncniConfigPath = '
                                      f'"{tmp_path / "cni.json"}"\ncniBinaryPath = "{CNI_DIR}"')
    try:
        _fetch_in_subnet(capsys, root, config, tmp_path, busybox_layout, server, "/cni",
                         "10.99.7.0/24")
        leases = [p.name for p in (tmp_path / "ipam" / "pybk-test-cni").iterdir()
                  if p.name.startswith("10.")]
        assert leases == []  # released after the build
    finally:
        subprocess.run(["ip", "link", "del", "pybkcni0"], capture_output=True)


def test_auto_without_plugins_falls_back_to_host_and_says_so_once(tmp_path, busybox_layout):
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    config = _config(tmp_path, worker=f'cniBinaryPath = "{empty}"')
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN ip -o link > /a\nRUN ip -o link > /b\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pybk.core.cli.entry", "--root", str(tmp_path / "store"),
         "--config", config, "build", "--progress", "plain", "--build-context",
         f"busybox=oci-layout://{busybox_layout}", "-o", f"type=local,dest={tmp_path / 'out'}",
         str(ctx)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("CNI plugins not found") == 1
    assert "use the host's network" in proc.stderr
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    route = subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                           text=True).stdout.split()
    uplink = route[route.index("dev") + 1] if "dev" in route else "lo"
    for name in ("a", "b"):  # the steps saw the host's interfaces
        seen = set(re.findall(r"^\d+: ([\w.-]+)", (tmp_path / "out" / name).read_text(), re.M))
        assert uplink in seen and seen <= set(re.findall(r"^\d+: ([\w.-]+)", host_links, re.M))


@pytest.mark.slow
def test_a_hundred_steps_reuse_one_namespace_and_leave_nothing(
        tmp_path, root, busybox_layout, capsys, own_bridge):
    config, bridge, subnet = own_bridge(1)
    steps = "".join(f"RUN ip -4 -o addr show eth0 >> /addrs # {i}\n" for i in range(100))
    code, err = _build(capsys, root, config, tmp_path / "many", "FROM busybox\n" + steps,
                       busybox_layout, out=tmp_path / "out")
    assert code == 0, err
    addresses = {_address(line) for line in (tmp_path / "out" / "addrs").read_text()
                 .splitlines()}
    assert len(addresses) == 1  # one namespace, set up once, given back after every step
    assert str(addresses.pop()).startswith(subnet)
    _nothing_left(_net_state(bridge, subnet), bridge, subnet)
    assert _store_clean(root)


def _wait_for(predicate: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_after_the_next_open(tmp_path, root, busybox_layout,
                                                           capsys, own_bridge):
    config, bridge, subnet = own_bridge(2)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN touch /tmp/started; sleep 300\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybk.core.cli.entry", "--root", root, "--config", config, "build",
         "--progress", "plain", "--build-context", f"busybox=oci-layout://{busybox_layout}",
         str(ctx)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        _wait_for(lambda: any(Path(root, "executor", "bundles").glob("*/rootfs/tmp/started")))
        busy = _net_state(bridge, subnet)
        assert busy["bridge"] and len(busy["ports"]) == 1 and len(busy["leases"]) == 1
        assert any("MASQUERADE" in rule for rule in busy["rules"])
        assert not _store_clean(root)
        proc.send_signal(signal.SIGKILL)  # the build only: its runc and container live on
        proc.wait()
        code, err = _build(capsys, root, config, tmp_path / "next", "FROM busybox\nRUN true\n",
                           busybox_layout)
        assert code == 0, err
        _nothing_left(_net_state(bridge, subnet), bridge, subnet)
        assert _store_clean(root)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_build_flag_network_applies_to_every_step(tmp_path, root, busybox_layout, serve, capsys):
    server = serve()
    dockerfile = ("FROM busybox\nRUN ip -o link > /links; "
                  f"if timeout 3 wget -qO- {server.url}/x; then echo reached; "
                  "else echo unreachable; fi > /result\n")
    code, err = _build(capsys, root, _config(tmp_path), tmp_path / "ctx", dockerfile,
                       busybox_layout, "--network", "none", out=tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "result").read_text() == "unreachable\n"
    assert re.findall(r"^\d+: (\w+)", (tmp_path / "out" / "links").read_text(), re.M) == ["lo"]
    code, err = _build(capsys, root, _config(tmp_path), tmp_path / "ctx", dockerfile,
                       busybox_layout, "--network", "host", "--allow", "network.host")
    assert code == 2 and "granting entitlement network.host is not allowed" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_pybkd_keeps_its_pool_between_builds_and_releases_it_when_it_stops(
        tmp_path, busybox_layout, own_bridge):
    config, bridge, subnet = own_bridge(3)
    root, sock = tmp_path / "store", tmp_path / "run" / "pybkd.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}
    log = open(tmp_path / "pybkd.log", "w")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen([sys.executable, "-m", "pybk.core.cli.daemon", "--root", str(root),
                               "--addr", f"unix://{sock}", "--config", config],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env)
    try:
        _wait_for(sock.exists)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        addresses = []
        for n in range(2):
            out = tmp_path / f"out{n}"
            (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN ip -4 -o addr show eth0 > /a #{n}\n")
            done = subprocess.run(
                [sys.executable, "-m", "pybk.core.cli.entry", "--addr", f"unix://{sock}", "build",
                 "--progress", "plain", "--build-context",
                 f"busybox=oci-layout://{busybox_layout}", "-o", f"type=local,dest={out}",
                 str(ctx)], capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 0, done.stderr
            addresses.append(_address((out / "a").read_text()))
            # the build's process is gone; its namespace waits in the daemon's pool
            state = _net_state(bridge, subnet)
            assert len(state["ports"]) == 1 and len(state["leases"]) == 1
            assert len(os.listdir(root / "executor" / "net" / "idle")) == 1
        assert addresses[0] == addresses[1] and str(addresses[0]).startswith(subnet)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    _nothing_left(_net_state(bridge, subnet), bridge, subnet)
    assert _store_clean(str(root))


@pytest.mark.parametrize("pool_size", [0, 1, 2])
def test_cni_pool_size_bounds_the_idle_namespaces(tmp_path, own_bridge, pool_size):
    """Three steps at once need three namespaces; afterwards ``cniPoolSize`` of them wait for
    the next step, the rest are torn down; closing tears down the pool."""
    import asyncio

    from pybk.workers.network import NetworkOptions, Networks

    _, bridge, subnet = own_bridge(4 + pool_size)
    networks = Networks(str(tmp_path / "executor"), NetworkOptions(
        mode="bridge", pool_size=pool_size, bridge_name=bridge,
        bridge_subnet=subnet + "0/24"))

    async def three_steps() -> list:
        taken = await asyncio.gather(*(networks.acquire("sandbox") for _ in range(3)))
        assert len({a.address for a in taken}) == 3 and all(a.gateway == subnet + "1"
                                                             for a in taken)
        for attachment in taken:
            await networks.release(attachment)
        return taken

    asyncio.run(three_steps())
    idle = os.listdir(tmp_path / "executor" / "net" / "idle")
    assert len(idle) == pool_size
    assert len(_net_state(bridge, subnet)["ports"]) == pool_size
    if pool_size:  # the next step takes a pooled namespace: no new address
        again = asyncio.run(networks.acquire("sandbox"))
        assert again.entry in {name.partition(".")[2] for name in idle}
        asyncio.run(networks.release(again))
    networks.close()
    _nothing_left(_net_state(bridge, subnet), bridge, subnet)
    assert _store_clean(str(tmp_path))


@pytest.mark.parametrize("mode", ["none", "host"])
def test_worker_network_mode_none_and_host(tmp_path, root, busybox_layout, capsys, mode):
    """``networkMode`` itself (not a step's ``--network``): the default network of every
    step; ``host`` needs no entitlement, the configuration chose it."""
    config = _config(tmp_path, worker=f'networkMode = "{mode}"')
    code, err = _build(capsys, root, config, tmp_path / "ctx",
                       "FROM busybox\nRUN ip -o link > /links\n", busybox_layout,
                       out=tmp_path / "out")
    assert code == 0, err
    seen = set(re.findall(r"^\d+: ([\w.-]+)", (tmp_path / "out" / "links").read_text(), re.M))
    host = set(re.findall(r"^\d+: ([\w.-]+)", subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True).stdout, re.M))
    route = subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                           text=True).stdout.split()
    uplink = route[route.index("dev") + 1] if "dev" in route else "lo"
    if mode == "none":
        assert seen == {"lo"}
    else:
        assert uplink in seen and seen <= host
    assert _store_clean(root)
