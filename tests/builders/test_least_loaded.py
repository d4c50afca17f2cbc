"""``--routing least-loaded`` and the control API's ``Load``: three real pybkd nodes on
127.0.0.1 with mutual TLS, one or two of them kept busy by a build sleeping in a ``RUN`` step
(through gRPC, or through the node's unix socket)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.engine import need_runc
from support.fleet import NAMES, Nodes, context
from support.pybkd import read_until
from support.tlsdaemon import CLIENT

from pybk.core.cli.builders import Builder, Node, choose_node, rendezvous_order, routing_key
from pybk.core.cli.nodeload import query_load


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    n = Nodes(tmp_path_factory.mktemp("least-loaded"))
    yield n
    n.stop()


def _tls(nodes: Nodes, name: str, which: str = "good") -> dict[str, str]:
    return {"--tlsdir": str(getattr(nodes.pki[name], which))}


def _load(nodes: Nodes, name: str):
    reason, found = query_load(nodes.daemons[name].addr, _tls(nodes, name), 5.0)
    assert reason is None, reason
    return found


def _sleeping(nodes: Nodes, name: str, busybox_ref: str, tmp_path: Path, *,
              unix: bool = False) -> subprocess.Popen:
    """A build on node ``name`` (over gRPC, or its unix socket) whose RUN step has begun and
    sleeps; its client process."""
    ctx = tmp_path / f"sleep-{name}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f'FROM {busybox_ref}\nRUN echo step-be""gun && sleep 120\n')
    daemon = nodes.daemons[name]
    where = (["--addr", f"unix://{daemon.root / 'pybkd.sock'}"] if unix else
             ["--addr", daemon.addr, "--tlsdir", str(nodes.pki[name].good)])
    client = subprocess.Popen([*CLIENT, *where, "build", "--no-cache", "--progress", "plain",
                               str(ctx)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=nodes.env())
    read_until(client, b"step-begun", 120)
    return client


def _until_idle(nodes: Nodes, name: str) -> None:
    deadline = time.monotonic() + 60
    while _load(nodes, name).builds:
        assert time.monotonic() < deadline, f"{name} still reports a build"
        time.sleep(0.2)


def _grew(nodes: Nodes, before: dict[str, int]) -> list[str]:
    return [name for name in NAMES if nodes.builds(name) > before[name]]


def test_load_answers_over_mutual_tls_only(fleet):
    found = _load(fleet, "alpha")
    assert (found.builds, found.others, found.known) == (0, 0, True)
    assert found.version.startswith("pybk ") and found.platforms
    addr = fleet.daemons["alpha"].addr
    # authenticated as Session is: a certificate of another CA, or none, gets no answer
    for tls in (_tls(fleet, "alpha", "stranger"), {"--tlscacert": str(fleet.pki["alpha"].ca)},
                _tls(fleet, "beta")):
        reason, answer = query_load(addr, tls, 5.0)
        assert reason is not None and answer is None, tls
    reason, _ = query_load("tcp://127.0.0.1:1", _tls(fleet, "alpha"), 5.0)
    assert reason == "Connection refused"
    # a port that accepts and never answers: given up after the timeout
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        reason, _ = query_load(f"tcp://127.0.0.1:{silent.getsockname()[1]}",
                               _tls(fleet, "alpha"), 0.5)
        assert reason == "timed out" and time.monotonic() - started < 5


def test_least_loaded_goes_to_an_idle_node(fleet, busybox_ref, tmp_path):
    need_runc()
    for name in NAMES:
        made = fleet.pybk("builder", "create", "fleet", "--node", fleet.daemons[name].addr,
                          "--node-name", name, "--tlsdir", str(fleet.pki[name].good),
                          "--routing", "least-loaded", *(["--append"] if name != "alpha" else []))
        assert made.returncode == 0, made.stderr
    contexts = [context(tmp_path, f"ctx{i}") for i in range(6)]
    first = {ctx: rendezvous_order(routing_key(str(ctx), None, None), list(NAMES))[0]
             for ctx in contexts}
    # idle: each project goes where the rendezvous hash sends it (sticky while idle)
    for ctx in contexts:
        before = {name: fleet.builds(name) for name in NAMES}
        done = fleet.pybk("build", "--builder", "fleet", "-q", str(ctx))
        assert done.returncode == 0, done.stderr
        assert _grew(fleet, before) == [first[ctx]], ctx
    busy = [
        _sleeping(fleet, "alpha", busybox_ref, tmp_path),  # a remote build, over gRPC
        _sleeping(fleet, "beta", busybox_ref, tmp_path, unix=True),  # a local one
    ]
    try:
        assert _load(fleet, "alpha").builds == 1
        assert _load(fleet, "beta").builds == 1
        assert _load(fleet, "gamma").builds == 0
        shown = fleet.pybk("builder", "inspect", "fleet")
        assert shown.returncode == 0, shown.stderr
        for name, running in (("alpha", 1), ("beta", 1), ("gamma", 0)):
            block = shown.stdout.split(f"Name:\t{name}\n")[1].split("\n\n")[0]
            assert f"Builds running:\t{running}\n" in block, shown.stdout
        # two nodes busy: every project goes to the idle one, whatever its hash says
        assert {first[ctx] for ctx in contexts} != {"gamma"}
        for ctx in contexts:
            before = {name: fleet.builds(name) for name in NAMES}
            done = fleet.pybk("build", "--builder", "fleet", "-q", str(ctx))
            assert done.returncode == 0, done.stderr
            assert _grew(fleet, before) == ["gamma"], ctx
            assert "did not answer" not in done.stderr
        # one node busy: the projects of alpha go to the idle node first in their order
        busy.pop(1).kill()
        _until_idle(fleet, "beta")
        for ctx in contexts:
            order = [n for n in rendezvous_order(routing_key(str(ctx), None, None), list(NAMES))
                     if n != "alpha"]
            before = {name: fleet.builds(name) for name in NAMES}
            done = fleet.pybk("build", "--builder", "fleet", "-q", str(ctx))
            assert done.returncode == 0, done.stderr
            assert _grew(fleet, before) == [order[0]], ctx
    finally:
        for client in busy:
            client.kill()
            client.wait()
    _until_idle(fleet, "alpha")
    # idle again: back to the rendezvous choice
    for ctx in contexts[:3]:
        before = {name: fleet.builds(name) for name in NAMES}
        assert fleet.pybk("build", "--builder", "fleet", "-q", str(ctx)).returncode == 0
        assert _grew(fleet, before) == [first[ctx]], ctx


def test_the_daemons_count_of_builds_reads_the_command_line(tmp_path):
    """What ``Load`` counts as a build: ``pybk build`` after any global options; other
    commands are ``others``; a record of a process that is gone is not counted."""
    import contextlib
    import json

    from pybk.core import daemonstate

    assert daemonstate.load(None) == {"builds": 0, "others": 0, "version": "",
                                      "platforms": []}
    directory = daemonstate.setup(str(tmp_path))
    try:
        daemonstate.describe(version="pybk 9", platforms=["linux/arm64"])
        with contextlib.ExitStack() as stack:
            for argv in (["build", "."], ["--root", "/r", "--config", "c.toml", "build", "."],
                         ["--debug", "build", "-"], ["du"], ["debug", "workers"],
                         ["history", "build"], ["--root", "build", "du"]):
                stack.enter_context(daemonstate.command(argv))
            gone = Path(directory) / "running" / "1.1.json"
            gone.write_text(json.dumps({"pid": 1, "proc_start": -1, "argv": ["build"]}))
            assert daemonstate.load(directory) == {
                "builds": 3, "others": 4, "version": "pybk 9", "platforms": ["linux/arm64"]}
        assert daemonstate.load(directory)["builds"] == 0
    finally:
        daemonstate.teardown()


def test_a_node_without_load_comes_after_those_that_report_theirs(fleet):
    """A gRPC server of the control API without ``Load`` (an older pybkd, here one serving
    only ``Session``, in the clear): it answers, its load is unknown, it is chosen last."""
    from concurrent import futures

    import grpc

    from pybk.core.cli.nodeload import least_loaded

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "pybk.control.v1.Control",
        {"Session": grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(()))}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        old = (f"tcp://127.0.0.1:{port}", {})
        reason, found = query_load(*old, 5.0)
        assert reason is None and found.known is False
        real = (fleet.daemons["gamma"].addr, _tls(fleet, "gamma"))
        chosen, answers = least_loaded([old, real], 5.0)
        assert chosen == 1 and answers[1][1].known
        assert least_loaded([old], 5.0)[0] == 0  # alone, it is still used
    finally:
        server.stop(None)


def test_least_loaded_skips_a_node_that_does_not_answer(fleet, tmp_path):
    """(Last: it stops the nodes.)"""
    builder = Builder(name="f", routing="least-loaded", nodes=tuple(
        Node(name=name, endpoint=fleet.daemons[name].addr, tls=_tls(fleet, name))
        for name in NAMES))
    ctx = context(tmp_path, "project")
    key = routing_key(str(ctx), None, None)
    order = rendezvous_order(key, list(NAMES))
    # a node whose certificate is not the one the client trusts does not answer either
    broken = Builder(name="f", routing="least-loaded", nodes=tuple(
        Node(name=n.name, endpoint=n.endpoint,
             tls=_tls(fleet, order[1]) if n.name == order[0] else n.tls)
        for n in builder.nodes))
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

    assert choose_node(broken, key, Out()).name == order[1]
    assert "".join(lines).startswith(f"builder f: node {order[0]} (")
    assert "did not answer (" in "".join(lines)

    # measured: least-loaded's choice among three idle nodes, in this process
    times = []
    for _ in range(100):
        started = time.perf_counter()
        assert choose_node(builder, key).name == order[0]
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"least-loaded choice: median {times[50] * 1000:.1f} ms, p90 {times[90] * 1000:.1f} ms")
    assert times[50] < 0.5  # a bound for a loaded machine; the documented figure is measured

    fleet.daemons[order[0]].stop()
    before = {name: fleet.builds(name) for name in NAMES}
    done = fleet.pybk("build", "--builder", "fleet", "-q", str(ctx))
    assert done.returncode == 0, done.stderr
    assert (f"builder fleet: node {order[0]} ({fleet.daemons[order[0]].addr}) did not answer "
            f"(Connection refused); building on node {order[1]}") in done.stderr
    assert _grew(fleet, before) == [order[1]]
    for name in order[1:]:
        fleet.daemons[name].stop()
    down = fleet.pybk("build", "--builder", "fleet", "-q", str(ctx))
    assert down.returncode == 1 and "Traceback" not in down.stderr
    for name in NAMES:
        assert f"{name} ({fleet.daemons[name].addr}): Connection refused" in down.stderr
