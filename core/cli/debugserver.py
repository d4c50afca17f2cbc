"""pybkd's debug endpoint (``[grpc] debugAddress``): an HTTP server in a process of its own.

The daemon starts it (:func:`start`) before it serves and stops it when it stops; it is a
separate interpreter (``python -m pybk.core.cli.debugserver``), not a thread of the daemon,
whose process forks a child per command and must stay single-threaded. It reads the files of
the daemon's state directory (:mod:`pybk.core.daemonstate`) and answers:

- ``/debug/state``: JSON — the daemon's pid, store, start date and uptime, and each running
  command (pid, arguments, client pid and uid, transport, start date);
- ``/debug/tasks``: text — each running command's thread stacks and asyncio tasks (the
  process writes them when asked by a signal), like Go's goroutine dump;
- ``/metrics``: Prometheus text exposition format (version 0.0.4): builds by result, build
  durations, commands running, vertices answered from the cache and run, bytes of remote
  sessions.

Addresses: ``tcp://HOST:PORT``, ``HOST:PORT`` (``[::1]:PORT``; ``:PORT`` is every interface,
as in Go) or ``unix:///PATH``. There is no authentication: an address that is not loopback
or unix is served with a warning. The server exits when the daemon does (SIGTERM from it, or
finding itself orphaned).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import ipaddress
import json
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import Any

from pybk.core import daemonlog, daemonstate

#: how long the daemon waits for the endpoint to listen
START_TIMEOUT = 30.0
#: how long /debug/tasks waits for each command's dump
DUMP_TIMEOUT = 3.0
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Address:
    """A parsed debug address: ``family`` (AF_UNIX, AF_INET or AF_INET6) and ``path`` or
    ``host``/``port``."""

    def __init__(self, family: int, *, path: str = "", host: str = "", port: int = 0):
        self.family, self.path, self.host, self.port = family, path, host, port

    @property
    def local(self) -> bool:
        """Whether only this machine can connect (a unix socket or a loopback address)."""
        if self.family == socket.AF_UNIX:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # "" (every interface) or a host name


def parse_address(address: str) -> Address:
    """Parse ``address`` (see the module's docstring); ValueError saying what is accepted."""
    usage = f"{address!r}: use tcp://HOST:PORT, HOST:PORT or unix:///PATH"
    scheme, sep, rest = address.partition("://")
    if sep and scheme == "unix":
        if not rest:
            raise ValueError(f"{address!r}: no socket path")
        return Address(socket.AF_UNIX, path=os.path.abspath(rest))
    if sep and scheme != "tcp":
        raise ValueError(usage)
    hostport = rest if sep else address
    host, colon, port = hostport.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535 or "/" in hostport:
        raise ValueError(usage)
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    elif ":" in host:
        raise ValueError(f"{address!r}: write an IPv6 host in brackets ([::1]:PORT)")
    return Address(family, host=host, port=int(port))


# -- the server (in its own process) ------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def metrics_text(directory: str) -> str:
    """The daemon's metrics in Prometheus text exposition format."""
    c = daemonstate.read_counters(directory)
    running = len(daemonstate.running(directory))
    lines = []

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{sample} {_number(value)}" for sample, value in samples)

    metric("pybk_builds_total", "counter", "Builds run by the daemon's commands, by result.",
           [('pybk_builds_total{result="success"}', c["builds_success"]),
            ('pybk_builds_total{result="failure"}', c["builds_failure"])])
    metric("pybk_commands_running", "gauge", "Commands running now.",
           [("pybk_commands_running", running)])
    metric("pybk_build_duration_seconds", "summary", "How long builds took.",
           [("pybk_build_duration_seconds_sum", c["build_duration_seconds_sum"]),
            ("pybk_build_duration_seconds_count", c["build_duration_seconds_count"])])
    metric("pybk_cache_hits_total", "counter", "Vertices answered from the cache.",
           [("pybk_cache_hits_total", c["cache_hits"])])
    metric("pybk_cache_misses_total", "counter", "Vertices run (not found in the cache).",
           [("pybk_cache_misses_total", c["cache_misses"])])
    metric("pybk_session_bytes_received_total", "counter",
           "Bytes received from clients over remote sessions.",
           [("pybk_session_bytes_received_total", c["session_bytes_received"])])
    metric("pybk_session_bytes_sent_total", "counter",
           "Bytes sent to clients over remote sessions.",
           [("pybk_session_bytes_sent_total", c["session_bytes_sent"])])
    return "\n".join(lines) + "\n"


_PUBLIC = ("pid", "argv", "client_pid", "client_uid", "transport", "started")


def state(directory: str) -> dict[str, Any]:
    """What ``/debug/state`` answers."""
    owner = daemonstate.owner(directory)
    started = owner.get("started_unix")
    return {"pid": owner.get("pid"), "root": owner.get("root"), "started": owner.get("started"),
            "uptime_seconds": round(time.time() - started, 3) if started else None,
            "commands": [{key: record.get(key) for key in _PUBLIC}
                         for record in daemonstate.running(directory)]}


_dump_lock = threading.Lock()


def tasks_text(directory: str) -> str:
    """What ``/debug/tasks`` answers: each running command's dump."""
    with _dump_lock:  # one request at a time per process: the dump file is per process
        out, seen = [], set()
        for record in daemonstate.running(directory):
            if record["pid"] in seen:
                continue
            seen.add(record["pid"])
            text = daemonstate.request_dump(directory, record, DUMP_TIMEOUT)
            if text is None:
                text = (f"pid {record['pid']}: pybk {' '.join(record['argv'])}: no dump "
                        "(finished, or no answer in time)\n")
            out.append(f"=== command pid {record['pid']} ===\n{text}")
    return "\n".join(out) if out else "no command is running\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "pybkd-debug"
    directory = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        route = self.path.split("?", 1)[0]
        if route == "/metrics":
            self._answer(200, PROMETHEUS_TYPE, metrics_text(self.directory))
        elif route == "/debug/state":
            self._answer(200, "application/json",
                         json.dumps(state(self.directory), indent=2) + "\n")
        elif route == "/debug/tasks":
            self._answer(200, "text/plain; charset=utf-8", tasks_text(self.directory))
        elif route in ("/", "/debug", "/debug/"):
            self._answer(200, "text/plain; charset=utf-8",
                         "/debug/state\n/debug/tasks\n/metrics\n")
        else:
            self._answer(404, "text/plain; charset=utf-8", f"{route}: not found\n")

    def _answer(self, code: int, kind: str, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        daemonlog.debug(f"debug endpoint: {self.command} {self.path}")


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def service_actions(self) -> None:
        _orphaned()


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def server_bind(self) -> None:
        from pybk.core.cli.remote import reachable

        path = self.server_address
        assert isinstance(path, str)
        if os.path.lexists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with reachable(path) as where:
                    probe.connect(where)
            except ConnectionRefusedError:
                os.unlink(path)  # stale
            else:
                raise OSError(f"{path}: something listens there already")
            finally:
                probe.close()
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with reachable(path) as where:
            self.socket.bind(where)
        os.chmod(path, 0o660)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)  # http.server expects a (host, port) pair

    def service_actions(self) -> None:
        _orphaned()


_daemon_pid = 0


def _orphaned() -> None:
    """Leave when the daemon is gone (killed without stopping this process)."""
    if os.getppid() != _daemon_pid:
        raise SystemExit(0)


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve(listen: str, directory: str, daemon_pid: int, ready: Any) -> int:
    """Serve the endpoint at ``listen`` until SIGTERM or the daemon is gone; writes
    ``ready URL`` (or ``error MESSAGE``) as one line to ``ready``."""
    global _daemon_pid
    _daemon_pid = daemon_pid
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the daemon's to handle
    address = parse_address(listen)

    class Handler(_Handler):
        pass

    Handler.directory = directory
    server: socketserver.BaseServer
    try:
        if address.family == socket.AF_UNIX:
            server = _UnixServer(address.path, Handler)
            url = f"unix://{address.path}"
        else:
            _TCPServer.address_family = address.family
            server = _TCPServer((address.host, address.port), Handler)
            host, port = server.socket.getsockname()[:2]
            url = f"http://{f'[{host}]' if address.family == socket.AF_INET6 else host}:{port}"
    except OSError as exc:
        ready.write(f"error cannot listen on {listen}: {exc.strerror or exc}\n")
        ready.flush()
        return 2
    ready.write(f"ready {url}\n")
    ready.flush()
    ready.close()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if address.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                os.unlink(address.path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pybk.core.cli.debugserver --listen ADDRESS --state DIR --daemon-pid PID``
    (started by the daemon, see :func:`start`)."""
    parser = argparse.ArgumentParser(prog="pybkd-debug")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--daemon-pid", type=int, required=True)
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--log-level", default="info")
    ns = parser.parse_args(argv)
    daemonlog.configure(format=ns.log_format, level=ns.log_level)
    ready = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # the pipe to the daemon is closed once ready
    os.close(devnull)
    try:
        return serve(ns.listen, ns.state, ns.daemon_pid, ready)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0


# -- the daemon's side --------------------------------------------------------------------------


class DebugServer:
    """The endpoint's process, as the daemon sees it."""

    def __init__(self, proc: subprocess.Popen[str], address: str):
        self.proc, self.address, self.url = proc, address, ""

    def wait_ready(self) -> str:
        """Wait until the endpoint listens; its URL. A usage error (exit 2) when it cannot."""
        from pybk.core.errors import UsageError

        assert self.proc.stdout is not None
        line = ""
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        if ready:
            line = self.proc.stdout.readline().strip()
        self.proc.stdout.close()
        if not line.startswith("ready "):
            self.stop()
            problem = line.removeprefix("error ") or "it did not start"
            raise UsageError(f"pybkd: [grpc] debugAddress {self.address}: {problem}")
        self.url = line.removeprefix("ready ")
        daemonlog.info(f"debug endpoint on {self.url} (/debug/state, /debug/tasks, /metrics)")
        return self.url

    def stop(self) -> None:
        """Stop the endpoint's process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(address: str, root: str, *, log_format: str = "text",
          log_level: str | None = "info") -> DebugServer:
    """Keep the daemon's state (:func:`pybk.core.daemonstate.setup`, unless the daemon
    already does) and start the endpoint at ``address`` for it; call
    :meth:`DebugServer.wait_ready` before serving. A malformed address is a usage error
    (exit 2); one that is not loopback or unix is warned about (no authentication)."""
    from pybk.core.errors import UsageError

    try:
        parsed = parse_address(address)
    except ValueError as exc:
        raise UsageError(f"pybkd: [grpc] debugAddress {exc}") from None
    if not parsed.local:
        daemonlog.warning(f"[grpc] debugAddress {address} is not a loopback or unix address: "
                          "the debug endpoint has no authentication; anyone who can reach it "
                          "sees the running commands and their arguments")
    directory = daemonstate.state_dir() or daemonstate.setup(root)
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "pybk.core.cli.debugserver", "--listen", address,
         "--state", directory, "--daemon-pid", str(os.getpid()), "--log-format",
         "json" if daemonlog.is_json() else "text", "--log-level", log_level or "info"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=daemonlog.log_fd(),
        text=True)
    return DebugServer(proc, address)


if __name__ == "__main__":
    sys.exit(main())
