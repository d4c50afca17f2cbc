"""pybkd's gRPC listener: ``tcp://`` addresses, TLS and mutual TLS, relaying each session.

pybkd forks children for commands, and gRPC's runtime must not be forked, so the listener is
a process of its own, forked by pybkd once at start (before anything of gRPC is imported
there). It serves the control API (``control.proto``) on each ``tcp://`` address. Each
``Session`` stream is relayed, message for message and without decoding, to pybkd's private
control socket, where pybkd forks the process that runs the command
(:func:`pybk.core.remote.daemonside.serve_session`); the relay's first frame says who the peer
is (its address and, with mutual TLS, its certificate's common name). ``Load`` is answered
here, from the daemon's running records (:func:`pybk.core.daemonstate.load`), on the same
server with the same credentials as ``Session``.

TLS comes from ``[grpc.tls]``: ``cert`` and ``key`` are the server's; with ``ca`` set a client
must present a certificate signed by it, or the handshake fails before any request. A
``tcp://`` address without TLS is refused unless ``[pybk] tcp-without-tls = true``. SIGHUP
(sent to pybkd, passed on to the listener) re-reads the certificate files: new connections
use them, established ones keep theirs. The listener stops with pybkd, and by itself if pybkd
disappears (its lifeline pipe closes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import orjson

from pybk.core.errors import UsageError
from pybk.core.remote.frames import MAX_FRAME, encode, prefixed

SERVICE = "pybk.control.v1.Control"
#: how long the listener may take to bind its addresses before pybkd gives up
READY_TIMEOUT = 30.0


def tcp_target(address: str) -> str:
    """``HOST:PORT`` of a ``tcp://HOST:PORT`` address (a usage error otherwise)."""
    rest = address[len("tcp://"):] if address.startswith("tcp://") else None
    host, sep, port = (rest or "").rpartition(":")
    if not rest or not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"pybkd: {address}: expected tcp://HOST:PORT")
    return rest


def check_tls(tls: Any, addresses: Sequence[str], tcp_without_tls: bool) -> bool:
    """Whether TLS is configured (cert and key readable); a usage error for half a
    configuration, unreadable files, or TCP without TLS when that is not allowed."""
    if tls.ca and not (tls.cert and tls.key):
        raise UsageError("pybkd: [grpc.tls] ca needs cert and key as well")
    if bool(tls.cert) != bool(tls.key):
        raise UsageError("pybkd: [grpc.tls] needs both cert and key")
    for name in ("cert", "key", "ca"):
        path = getattr(tls, name)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise UsageError(f"pybkd: [grpc.tls] {name} {path}: {exc.strerror}") from None
    secure = bool(tls.cert)
    if addresses and not secure and not tcp_without_tls:
        raise UsageError(f"pybkd: {addresses[0]} has no TLS: set [grpc.tls] cert and key (and "
                         "ca, to require client certificates), or [pybk] tcp-without-tls = "
                         "true to serve it in the clear")
    return secure


class Listener:
    """The running listener process, as pybkd sees it."""

    def __init__(self, pid: int, lifeline: int, bound: list[str], unix_path: str | None = None):
        self.pid = pid
        self.lifeline = lifeline
        self.bound = bound
        #: the private unix socket it serves gRPC on (for pybkd's relay), if any
        self.unix_path = unix_path

    def reload(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            os.close(self.lifeline)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
            directory = os.path.dirname(self.unix_path)
            if os.path.basename(directory).startswith("pybkd-grpc-"):  # a private temp dir
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


def start(addresses: Sequence[str], control_path: str, tls: Any, *,
          tcp_without_tls: bool, unix_path: str | None = None) -> Listener:
    """Fork the listener; return once it listens on every address (``tcp://HOST:0`` gets a
    free port: :attr:`Listener.bound` has the real addresses) and, in the clear, on the
    private ``unix_path`` (where pybkd relays gRPC clients of its unix socket). A usage error
    when it cannot."""
    targets = [tcp_target(a) for a in addresses]
    secure = check_tls(tls, addresses, tcp_without_tls)
    ready_r, ready_w = os.pipe()
    life_r, life_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the listener
        code = 1
        try:
            os.close(ready_r)
            os.close(life_w)
            from pybk.core import daemonlog

            _close_inherited(keep=(0, 1, 2, ready_w, life_r, daemonlog.log_fd()))
            code = _serve(targets, control_path, tls if secure else None, ready_w, life_r,
                          unix_path)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(life_r)
    report = _read_report(ready_r)
    if "error" in report:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(life_w)
        raise UsageError(f"pybkd: {report['error']}")
    return Listener(pid, life_w, [f"tcp://{t}" for t in report["bound"]], unix_path)


def _read_report(fd: int) -> dict[str, Any]:
    import select

    data = b""
    try:
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], READY_TIMEOUT)
            if not ready:
                return {"error": "the gRPC listener did not start in time"}
            chunk = os.read(fd, 65536)
            if not chunk:
                return {"error": "the gRPC listener exited while starting (see above)"}
            data += chunk
    finally:
        os.close(fd)
    return orjson.loads(data)


def _close_inherited(keep: Sequence[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _credentials(grpc: Any, tls: Any) -> Any:
    """Server credentials re-reading the files after SIGHUP (on the next handshake)."""
    reload = threading.Event()

    def configuration() -> Any:
        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_server_certificate_configuration(
            [(read(tls.key), read(tls.cert))], root_certificates=read(tls.ca))

    def fetch() -> Any:
        if not reload.is_set():
            return None
        reload.clear()
        try:
            fresh = configuration()
        except OSError as exc:
            _log(f"reloading the TLS certificates: {exc}; keeping the old ones")
            return None
        _log("TLS certificates reloaded")
        return fresh

    credentials = grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=bool(tls.ca))
    return credentials, reload


def _identity(context: Any) -> str:
    """Who the peer is, stable across its connections: its certificate's common name (else
    its first subject alternative name), else its address without the port."""
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names = auth.get(key)
        if names:
            return f"cert:{names[0].decode(errors='replace')}"
    peer = context.peer()
    if peer.startswith("unix:"):  # relayed by pybkd from its unix socket (peer checked there)
        return "unix-grpc"
    return f"addr:{peer.rpartition(':')[0]}"  # ipv4:127.0.0.1:PORT, ipv6:[::1]:PORT


def _log(message: str) -> None:
    from pybk.core import daemonlog

    daemonlog.info(message)


def _serve(targets: Sequence[str], control_path: str, tls: Any, ready_fd: int,
           lifeline: int, unix_path: str | None) -> int:
    import asyncio

    import grpc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pybkd decides when to stop
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)

    async def relay(request_iterator: Any, context: Any) -> Any:
        who = {"t": "peer", "peer": context.peer(), "identity": _identity(context)}
        try:
            reader, writer = await asyncio.open_unix_connection(control_path)
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"pybkd is not serving: {exc}")
        writer.write(prefixed(encode(who)))

        async def upstream() -> None:
            try:
                async for message in request_iterator:
                    writer.write(prefixed(message))
                    await writer.drain()
            except Exception:  # noqa: BLE001 - the client went away: the relay ends
                pass
            finally:
                writer.close()

        task = asyncio.ensure_future(upstream())
        try:
            while True:
                head = await reader.readexactly(4)
                size = int.from_bytes(head, "big")
                if size > MAX_FRAME:
                    return
                yield await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            task.cancel()
            writer.close()

    async def load(request: bytes, context: Any) -> bytes:
        """``Load``: the running builds and other commands (the daemon's running records,
        whatever transport brought each), its version and platforms."""
        from pybk.core import daemonstate

        return encode({"t": "load", **daemonstate.load(daemonstate.state_dir())})

    async def main() -> int:
        options = [("grpc.max_receive_message_length", MAX_FRAME),
                   ("grpc.max_send_message_length", MAX_FRAME),
                   ("grpc.keepalive_time_ms", 30000),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", 10000)]
        server = grpc.aio.server(options=options)
        handlers = {"Session": grpc.stream_stream_rpc_method_handler(relay),
                    "Load": grpc.unary_unary_rpc_method_handler(load)}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        reload = None
        if tls is not None:
            credentials, reload = _credentials(grpc, tls)
        bound = []
        try:
            for target in targets:
                port = (server.add_secure_port(target, credentials) if tls is not None
                        else server.add_insecure_port(target))
                if not port:
                    raise RuntimeError(f"cannot listen on tcp://{target}")
                bound.append(f"{target.rpartition(':')[0]}:{port}")
            if unix_path is not None and not server.add_insecure_port(f"unix:{unix_path}"):
                raise RuntimeError(f"cannot listen on unix://{unix_path}")
            await server.start()
        except (RuntimeError, OSError) as exc:
            os.write(ready_fd, orjson.dumps({"error": str(exc)}) + b"\n")
            return 2
        os.write(ready_fd, orjson.dumps({"bound": bound}) + b"\n")
        os.close(ready_fd)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload.set)
        else:
            loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_reader(lifeline, stopping.set)  # readable only once pybkd is gone
        await stopping.wait()
        await server.stop(grace=1.0)
        return 0

    sys.stdin = None  # type: ignore[assignment]
    return asyncio.run(main())
