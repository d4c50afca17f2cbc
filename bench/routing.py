"""What choosing a builder's node costs: ``pybk build --builder``'s choice among three pybkd
nodes on 127.0.0.1, each with mutual TLS from a CA of its own, measured in this process.

Sticky routing (one connect and TLS handshake), least-loaded with every node idle (one
``Load`` asked of the rendezvous-first node), with that node busy (a running ``pybk build``
record of a live process in its state directory: the other two are asked at once), with that
node refusing connections, and the daemon's own work for ``Load`` (reading three running
records). Importing grpc, which a ``tcp://`` build imports anyway, is not counted.

    python bench/routing.py [--runs 100]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def timed(func: Callable[[], object], runs: int) -> str:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    times.sort()
    return (f"median {times[len(times) // 2] * 1000:.1f} ms, "
            f"p90 {times[int(len(times) * 0.9)] * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    runs = parser.parse_args().runs

    import grpc  # noqa: F401 - imported by every tcp:// build; not what is measured
    from support.tlsdaemon import PKI, RemoteDaemon, tls_config

    from pybk.core import daemonstate
    from pybk.core.cli.builders import Builder, Node, choose_node, rendezvous_order

    base = Path(tempfile.mkdtemp(prefix="pybk-routing-"))
    daemons = []
    try:
        for i in range(3):
            (base / f"pki{i}").mkdir()
            (base / f"node{i}").mkdir()
            pki = PKI(base / f"pki{i}")
            daemons.append((RemoteDaemon(base / f"node{i}", tls_config(pki)), pki))
        nodes = tuple(Node(name=f"n{i}", endpoint=d.addr, tls={"--tlsdir": str(p.good)})
                      for i, (d, p) in enumerate(daemons))
        sticky = Builder(name="b", nodes=nodes)
        least = Builder(name="b", nodes=nodes, routing="least-loaded")
        first = rendezvous_order("key", [n.name for n in nodes])[0]
        print(f"sticky: {timed(lambda: choose_node(sticky, 'key'), runs)}")
        print(f"least-loaded, idle: {timed(lambda: choose_node(least, 'key'), runs)}")
        state = next((daemons[int(first[1:])][0].root / "daemon").iterdir())
        record = state / "running" / f"{os.getpid()}.1.json"
        record.write_text(json.dumps({"pid": os.getpid(), "argv": ["build", "."],
                                      "proc_start": daemonstate.proc_start(os.getpid())}))
        assert choose_node(least, "key").name != first
        print(f"least-loaded, first node busy: {timed(lambda: choose_node(least, 'key'), runs)}")
        record.unlink()
        refusing = Builder(name="b", routing="least-loaded", nodes=tuple(
            Node(name=n.name, endpoint="tcp://127.0.0.1:1", tls=n.tls) if n.name == first
            else n for n in nodes))
        print(f"least-loaded, first node refuses: "
              f"{timed(lambda: choose_node(refusing, 'key', io.StringIO()), runs)}")
    finally:
        for daemon, _ in daemons:
            daemon.stop()
    root = tempfile.mkdtemp(prefix="pybk-routing-state-")
    directory = daemonstate.setup(root)
    try:
        import contextlib

        with contextlib.ExitStack() as stack:
            for argv in (["build", "."], ["--root", "/x", "build", "."], ["du"]):
                stack.enter_context(daemonstate.command(argv))
            print(f"the daemon's Load (3 running records): "
                  f"{timed(lambda: daemonstate.load(directory), runs * 10)}")
    finally:
        daemonstate.teardown()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
