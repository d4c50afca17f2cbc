"""One remote command, in the process pybkd forks for it (see
:mod:`pybk.core.remote.daemonside`): the client's first frame says what to run; its standard
output and error go to the client; the exit code is the last frame.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from pybk.core import daemonlog, daemonstate
from pybk.core.cli.remote import reachable
from pybk.core.errors import PybkError, UsageError
from pybk.core.remote.daemonside import RemoteInputs
from pybk.core.remote.frames import FrameSocket
from pybk.core.remote.session import Session
from pybk.core.remote.wire import request_from_wire


class _Pump(threading.Thread):
    """Copies what this process writes on ``fd`` (1 or 2) to the client."""

    def __init__(self, session: Session, stream: str):
        super().__init__(daemon=True, name=f"pybk-{stream}")
        self.session = session
        self.stream = stream
        self.read_fd, self.write_fd = os.pipe()

    def run(self) -> None:
        while True:
            data = os.read(self.read_fd, 65536)
            if not data:
                break
            with contextlib.suppress(Exception):
                self.session.send({"t": self.stream}, data)
        os.close(self.read_fd)


def _redirect(session: Session) -> list[_Pump]:
    pumps = [_Pump(session, "stdout"), _Pump(session, "stderr")]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, pump in zip((1, 2), pumps, strict=True):
        os.dup2(pump.write_fd, fd)
        os.close(pump.write_fd)
        pump.start()
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False),
                                                   line_buffering=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False),
                                                   errors="backslashreplace",
                                                   line_buffering=True)
    return pumps


def _release(pumps: list[_Pump]) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    for pump in pumps:
        pump.join(5)


def serve_session(conn: Any, served: Any, log: Any, who: dict[str, Any] | None = None, *,
                  client: tuple[int, int] | None = None) -> int:
    """Run one remote command (the connection relayed by the listener); its exit code.
    ``served``: the daemon's :class:`pybk.core.cli.daemon.Served`; ``log(message)`` writes a
    line to the daemon's log; ``who``: the peer, for a session on pybkd's unix socket (else the
    listener's first frame says)."""
    from pybk.core.cli.errors import interrupted, report
    from pybk.core.engine.build import answer_first, run_after_answer

    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    frames = FrameSocket(conn)
    if who is None:  # relayed by the gRPC listener, which says who the peer is first
        peer = frames.recv()
        who = peer[0] if peer is not None else {}
    start = frames.recv()
    if start is None:  # the client went away first (a bad flag, Ctrl-C): nothing to run
        return 0
    if start[0].get("t") != "start":
        log(f"dropped a session: it opened with {start[0].get('t')!r}, not a start frame")
        return 1
    header, payload = start[0], start[1]
    session = Session(frames)
    work = os.path.join(served.root, "sessions", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(work, mode=0o700)
    os.chdir(work)
    os.environ.pop("PYBK_CONFIG", None)
    answer_first()
    session.start()
    pumps = _redirect(session)
    code = 1
    try:
        try:
            pid, uid = client or (None, None)
            with daemonstate.command(header.get("argv", []), client_pid=pid, client_uid=uid,
                                     transport="unix-session" if client else "grpc"):
                code = _run(header, payload, session, served, work, who)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = interrupted()
        except PybkError as exc:
            code = report(exc)
        except Exception:  # a bug: its traceback goes to the client, as embedded
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        _release(pumps)
        shutil.rmtree(work, ignore_errors=True)
    session.finished = True
    daemonstate.add_bytes(received=frames.bytes_received, sent=frames.bytes_sent)
    if served.verbose:
        log(f"{who.get('peer', '?')} ({who.get('identity') or 'no certificate'}): pybk "
            f"{' '.join(header.get('argv', []))}: exit {code}")
    with contextlib.suppress(Exception):
        session.send({"t": "exit", "code": code & 0xFF})
    with contextlib.suppress(BaseException):
        run_after_answer()
    return code & 0xFF


def _run(header: dict[str, Any], payload: bytes, session: Session, served: Any, work: str,
         who: dict[str, Any]) -> int:
    from pybk.core.cli.errors import run_reported

    if header.get("version") != 1:
        raise UsageError(f"this pybkd speaks version 1 of the control API, not "
                         f"{header.get('version')!r}")
    command = header.get("command")
    if command == "argv":
        from pybk.core.cli.commands import main
        from pybk.core.cli.remote import daemon_argv

        argv = [str(a) for a in header.get("argv", [])]
        return main(daemon_argv(argv, root=served.root, config_path=served.config_path))
    if command != "build":
        raise UsageError(f"unknown remote command {command!r}")

    def build() -> int:
        from pybk.core.cli.commands import check_request_plugins
        from pybk.core.engine.build import run_build, run_llb_build

        request = request_from_wire(header.get("request") or {})
        check_request_plugins(request)  # the client checked the flags, not our plugins
        client_key = f"{who.get('identity', '')}:{header.get('client', '')}"
        inputs = RemoteInputs(session, work, client_key=client_key,
                              env=header.get("env") or {})
        try:
            request = inputs.rewrite(request)
            if request.llb:
                return run_llb_build(payload, request, root=served.root,
                                     config_path=served.config_path, inputs=inputs)
            return run_build(request, root=served.root, config_path=served.config_path,
                             inputs=inputs)
        finally:
            inputs.close()

    return run_reported(build, debug=bool(header.get("debug")))


# -- pybkd's side of the listeners ---------------------------------------------------------


def _peek(conn: socket.socket, magic: bytes) -> bool:
    """Whether the connection's first bytes are ``magic`` (left unread)."""
    conn.settimeout(10)
    try:
        seen = b""
        while len(seen) < len(magic) and magic.startswith(seen):
            seen = conn.recv(len(magic), socket.MSG_PEEK)
            if not seen:
                return False
        return seen.startswith(magic)
    finally:
        conn.settimeout(None)


def wants_session(conn: socket.socket) -> bool:
    """Whether the client opened with :data:`SESSION_MAGIC` (consumed) rather than the local
    protocol's request."""
    from pybk.core.remote.clientside import SESSION_MAGIC

    if not _peek(conn, SESSION_MAGIC):
        return False
    conn.recv(len(SESSION_MAGIC))
    return True


def _groups(pid: int) -> set[int]:
    """The groups of process ``pid`` (effective and supplementary)."""
    found: set[int] = set()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Gid:"):
                found.add(int(line.split()[2]))
            elif line.startswith("Groups:"):
                found.update(int(g) for g in line.split()[1:])
    return found


def _allowed(served: Any, pid: int, uid: int) -> bool:
    """The daemon's user, root, ``[grpc] uid`` and members of ``[grpc] gid``; anyone else is
    refused (and logged) before anything runs."""
    allowed = (uid in (os.geteuid(), 0) or (served.uid is not None and uid == served.uid)
               or (served.gid is not None and served.gid in _groups(pid)))
    if not allowed:
        daemonlog.warning(f"refused pid {pid} (uid {uid}): not the daemon's user, [grpc] uid "
                          "or a member of [grpc] gid")
    return allowed


def serve_unix_session(conn: socket.socket, served: Any, pid: int, uid: int) -> int:
    """A session on the unix socket, for the peers :func:`_allowed` admits."""
    if not _allowed(served, pid, uid):
        return 1
    who = {"t": "peer", "peer": f"unix pid {pid}", "identity": f"uid {uid}"}
    return serve_session(conn, served, daemonlog.info, who, client=(pid, uid))


#: gRPC's unix addresses hold at most this many bytes of path
_GRPC_PATH_MAX = 107


def grpc_socket(root: str) -> str:
    """The listener's private unix socket, where pybkd relays gRPC clients of its own: in the
    store's private sessions directory, or in a private directory of its own under the
    temporary directory when that path is too long for gRPC."""
    path = os.path.join(root, "sessions", "grpc.sock")
    if len(os.fsencode(path)) <= _GRPC_PATH_MAX:
        return path
    import tempfile

    return os.path.join(tempfile.mkdtemp(prefix="pybkd-grpc-"), "grpc.sock")


#: what an HTTP/2 client sends first (RFC 9113 3.4): a gRPC client on pybkd's unix socket
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def wants_grpc(conn: socket.socket) -> bool:
    """Whether the client opened with HTTP/2's preface (not consumed)."""
    return _peek(conn, HTTP2_PREFACE)


def relay_grpc(conn: socket.socket, served: Any, pid: int, uid: int) -> int:
    """Relay a gRPC client of pybkd's unix socket, byte for byte, to the listener (the same
    peers as for sessions: :func:`serve_unix_session`)."""
    if not _allowed(served, pid, uid):
        return 1
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(served.grpc_socket)
    except OSError as exc:
        daemonlog.error(f"cannot reach the gRPC listener: {exc.strerror}")
        return 1
    import select

    ends = {conn: upstream, upstream: conn}
    open_ends = set(ends)
    while open_ends:
        ready, _, _ = select.select(list(open_ends), [], [])
        for end in ready:
            try:
                data = end.recv(65536)
            except OSError:
                data = b""
            if data:
                try:
                    ends[end].sendall(data)
                    continue
                except OSError:
                    pass
            open_ends.discard(end)
            with contextlib.suppress(OSError):
                ends[end].shutdown(socket.SHUT_WR)
    upstream.close()
    return 0


def start_grpc(root: str, addresses: Sequence[str], config: Any) -> tuple[socket.socket, Any]:
    """The private control socket remote sessions are relayed to, and the gRPC listener
    process serving ``addresses`` (:mod:`pybk.core.remote.listener`) and the private socket
    gRPC clients of pybkd's unix socket are relayed to."""
    from pybk.core.remote.listener import start

    sessions = os.path.join(root, "sessions")
    os.makedirs(sessions, mode=0o700, exist_ok=True)
    os.chmod(sessions, 0o700)
    control_path = os.path.join(sessions, "control.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control_path)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with reachable(control_path) as where:
        control.bind(where)
    control.listen(128)
    grpc_listener = start(addresses, control_path, config.grpc.tls,
                          tcp_without_tls=config.pybk.tcp_without_tls,
                          unix_path=grpc_socket(root))
    for address in grpc_listener.bound:
        tls = "mutual TLS" if config.grpc.tls.ca else ("TLS" if config.grpc.tls.cert
                                                        else "no TLS")
        daemonlog.info(f"serving {address} (gRPC, {tls})")
    return control, grpc_listener
