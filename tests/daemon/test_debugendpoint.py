"""``[grpc] debugAddress``: pybkd's debug endpoint (its own process) — ``/debug/state``,
``/debug/tasks`` and ``/metrics`` — over TCP on 127.0.0.1 and over a unix socket."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.engine import require_runc
from support.pybkd import BASE_CONFIG, CLIENT, Pybkd, client_env, free_port, http_get

from pybk.core import daemonstate
from pybk.core.cli.debugserver import parse_address


def _config(address: str) -> str:
    return BASE_CONFIG + f'\n[grpc]\ndebugAddress = "{address}"\n'


def _tcp_daemon(tmp_path: Path) -> tuple[Pybkd, tuple[str, int]]:
    port = free_port()
    return Pybkd(tmp_path, _config(f"127.0.0.1:{port}")), ("127.0.0.1", port)


def _metrics(where) -> dict[str, float]:
    status, headers, body = http_get(where, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    values = {}
    for line in body.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP \w+ .+|TYPE \w+ (counter|gauge|summary))", line), line
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    for name in ("pybk_builds_total", "pybk_commands_running", "pybk_build_duration_seconds",
                 "pybk_cache_hits_total", "pybk_cache_misses_total",
                 "pybk_session_bytes_received_total", "pybk_session_bytes_sent_total"):
        assert f"# TYPE {name} " in body and f"# HELP {name} " in body
    return values


def _state(where) -> dict:
    status, headers, body = http_get(where, "/debug/state")
    assert status == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


SUCCESS = 'pybk_builds_total{result="success"}'
FAILURE = 'pybk_builds_total{result="failure"}'


def _build(d: Pybkd, busybox_layout: Path, ctx: Path) -> subprocess.CompletedProcess:
    return d.pybk("build", "--progress", "plain", "--build-context",
                  f"busybox=oci-layout://{busybox_layout}", str(ctx))


def test_metrics_count_builds_and_cache(tmp_path, busybox_layout):
    require_runc()
    d, where = _tcp_daemon(tmp_path)
    try:
        first = _metrics(where)
        assert first == {SUCCESS: 0, FAILURE: 0, "pybk_commands_running": 0,
                         "pybk_build_duration_seconds_sum": 0,
                         "pybk_build_duration_seconds_count": 0, "pybk_cache_hits_total": 0,
                         "pybk_cache_misses_total": 0, "pybk_session_bytes_received_total": 0,
                         "pybk_session_bytes_sent_total": 0}
        ok, bad = tmp_path / "ok", tmp_path / "bad"
        for ctx, run in ((ok, "echo hi > /hi"), (bad, "exit 3")):
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN {run}\n")
        assert d.pybk("du").returncode == 0  # not a build
        done = _build(d, busybox_layout, ok)
        assert done.returncode == 0, done.stderr.decode()
        m = _metrics(where)
        # the image source and the RUN step both ran
        assert (m[SUCCESS], m[FAILURE], m["pybk_build_duration_seconds_count"]) == (1, 0, 1)
        assert (m["pybk_cache_hits_total"], m["pybk_cache_misses_total"]) == (0, 2)
        assert m["pybk_build_duration_seconds_sum"] > 0

        again = _build(d, busybox_layout, ok)
        assert again.returncode == 0, again.stderr.decode()
        vertices = set(re.findall(rb"^#(\d+) ", again.stderr, re.M))
        cached = set(re.findall(rb"^#(\d+) CACHED$", again.stderr, re.M))
        assert len(vertices) == 2 and cached == vertices
        m = _metrics(where)
        assert (m[SUCCESS], m[FAILURE], m["pybk_build_duration_seconds_count"]) == (2, 0, 2)
        assert (m["pybk_cache_hits_total"], m["pybk_cache_misses_total"]) == (len(vertices), 2)

        failed = _build(d, busybox_layout, bad)
        assert failed.returncode == 1
        m = _metrics(where)
        # the image came from the cache; the failing step is neither hit nor miss
        assert (m[SUCCESS], m[FAILURE], m["pybk_build_duration_seconds_count"]) == (2, 1, 3)
        assert (m["pybk_cache_hits_total"], m["pybk_cache_misses_total"]) == (3, 2)
        assert m["pybk_commands_running"] == 0
        # a usage error is no build
        assert d.pybk("build", "--bogus", str(ok)).returncode == 2
        assert _metrics(where)[FAILURE] == 1
    finally:
        assert d.stop() == 0


def test_state_and_tasks_of_a_running_build(tmp_path, busybox_layout):
    require_runc()
    d, where = _tcp_daemon(tmp_path)
    try:
        state = _state(where)
        assert state["pid"] == d.proc.pid and state["root"] == str(d.root)
        assert state["commands"] == [] and state["uptime_seconds"] >= 0
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started && sleep 60\n")
        args = ["build", "--progress", "plain", "--no-cache", "--build-context",
                f"busybox=oci-layout://{busybox_layout}", str(ctx)]
        client = d.popen(*args)
        seen = b""
        while b"started" not in seen:
            line = client.stderr.readline()
            assert line, seen.decode()
            seen += line
        state = _state(where)
        [command] = state["commands"]
        assert command["pid"] in d.children()
        assert command["argv"] == args
        assert command["client_pid"] == client.pid and command["client_uid"] == os.geteuid()
        assert command["transport"] == "unix" and command["started"]
        assert _metrics(where)["pybk_commands_running"] == 1
        status, _, tasks = http_get(where, "/debug/tasks")
        assert status == 200
        assert tasks.startswith(f"=== command pid {command['pid']} ===\n"
                                f"pid {command['pid']}: pybk {' '.join(args)} ")
        assert "\nthread MainThread " in tasks and "in run_build" in tasks
        assert re.search(r"\nasyncio tasks: [1-9]", tasks)
        assert "coro=<Scheduler._execute()" in tasks  # the RUN step's task, waiting
        client.send_signal(signal.SIGINT)
        client.communicate(timeout=60)
        assert client.returncode == 130
        state = _state(where)
        assert state["commands"] == []
        assert _metrics(where)["pybk_commands_running"] == 0
        assert http_get(where, "/debug/tasks")[2] == "no command is running\n"
        assert http_get(where, "/nothing")[0] == 404
    finally:
        assert d.stop() == 0


def test_a_killed_command_is_not_left_running(tmp_path):
    d, where = _tcp_daemon(tmp_path)
    try:
        # `--llb -` waits for its definition on the client's stdin, which never comes
        client = subprocess.Popen([*CLIENT, "--addr", d.addr, "build", "--llb", "-"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=client_env())
        deadline = time.monotonic() + 30
        while not _state(where)["commands"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [command] = _state(where)["commands"]
        state_dir = d.root / "daemon" / str(d.proc.pid)
        assert len(list((state_dir / "running").iterdir())) == 1
        os.kill(command["pid"], signal.SIGKILL)
        client.communicate(timeout=30)
        assert client.returncode == 1  # "pybkd closed the connection"
        assert _state(where)["commands"] == []
        assert _metrics(where)["pybk_commands_running"] == 0
        assert list((state_dir / "running").iterdir()) == []  # the stale record was removed
    finally:
        assert d.stop() == 0


ADD_BYTES = """
import sys
from pybk.core import daemonstate
daemonstate.attach(sys.argv[1])
for _ in range(200):
    daemonstate.add_bytes(received=3, sent=5)
"""


def test_session_bytes_from_other_processes(tmp_path):
    d, where = _tcp_daemon(tmp_path)
    try:
        state_dir = d.root / "daemon" / str(d.proc.pid)
        assert stat.S_IMODE((d.root / "daemon").stat().st_mode) == 0o700
        writers = [subprocess.Popen([sys.executable, "-c", ADD_BYTES, str(state_dir)],
                                    env=client_env()) for _ in range(4)]
        for writer in writers:
            assert writer.wait(60) == 0
        m = _metrics(where)
        assert m["pybk_session_bytes_received_total"] == 4 * 200 * 3
        assert m["pybk_session_bytes_sent_total"] == 4 * 200 * 5
        assert m[SUCCESS] == m[FAILURE] == 0
    finally:
        assert d.stop() == 0
    assert not state_dir.exists()  # removed with the daemon
    with pytest.raises(FileNotFoundError):
        daemonstate.attach(str(state_dir))


def test_unix_debug_address(tmp_path):
    sock = tmp_path / "debug" / "pybkd-debug.sock"
    d = Pybkd(tmp_path, _config(f"unix://{sock}"))
    try:
        assert stat.S_ISSOCK(sock.stat().st_mode)
        m = _metrics(str(sock))
        assert m[SUCCESS] == 0 and m["pybk_commands_running"] == 0
        assert d.pybk("du").returncode == 0
        assert _state(str(sock))["pid"] == d.proc.pid
        # pybkd's children: the debug endpoint's server and the gRPC listener
        [server] = [pid for pid in d.children()
                    if b"debugserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert f"pybkd: debug endpoint on unix://{sock} " in d.stderr.read_text()
    finally:
        assert d.stop() == 0
    assert not sock.exists()
    assert not Path(f"/proc/{server}").exists()


def test_bad_and_public_debug_addresses(tmp_path):
    for address, message in (("ftp://x:1", "use tcp://HOST:PORT, HOST:PORT or unix:///PATH"),
                             ("127.0.0.1", "use tcp://HOST:PORT"),
                             ("::1:80", "write an IPv6 host in brackets")):
        (tmp_path / "c.toml").write_text(_config(address))
        done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                               str(tmp_path / "store"), "--config", str(tmp_path / "c.toml")],
                              capture_output=True, text=True, env=client_env(), timeout=120)
        assert done.returncode == 2, done.stderr
        assert f"error: pybkd: [grpc] debugAddress '{address}': " in done.stderr
        assert message in done.stderr
    # not loopback: a warning (no authentication); this one is not on this machine either
    (tmp_path / "c.toml").write_text(_config("tcp://198.51.100.7:6060"))
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "store"), "--config", str(tmp_path / "c.toml")],
                          capture_output=True, text=True, env=client_env(), timeout=120)
    assert done.returncode == 2
    assert ("WARNING: [grpc] debugAddress tcp://198.51.100.7:6060 is not a loopback or unix "
            "address: the debug endpoint has no authentication") in done.stderr
    assert "error: pybkd: [grpc] debugAddress tcp://198.51.100.7:6060: cannot listen on " in (
        done.stderr)


def test_parse_address():
    assert parse_address("127.0.0.1:6060").local
    assert parse_address("tcp://localhost:1").local
    assert parse_address("[::1]:6060").local and parse_address("[::1]:6060").host == "::1"
    assert parse_address("unix:///run/x.sock").path == "/run/x.sock"
    assert not parse_address(":6060").local  # every interface, as in Go
    assert not parse_address("0.0.0.0:6060").local
    assert not parse_address("tcp://example.com:80").local
