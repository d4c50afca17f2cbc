"""The client of a remote pybkd (``pybk --addr tcp://HOST:PORT COMMAND``,
:mod:`pybk.core.cli.grpcclient` checks the command line first).

A build goes as its validated :class:`pybk.core.engine.request.BuildRequest` with the client's
absolute paths; other commands go as their arguments. Then the client serves what the daemon
asks for during the command, over the same stream:

- ``stat``/``read``: the stats of a directory the command line named (the context, the build
  file's directory, ``--build-context`` directories), with the source's patterns applied here
  so excluded files never leave; then the contents of the files the daemon lacks
  (:mod:`pybk.core.remote.filesync`); ``readfile``/``readdir`` for the frontend (the build
  file, ``.dockerignore``). Nothing outside those directories is served.
- ``secret``: a ``--secret``'s bytes, read here when a step needs them;
- ``ssh-open``: a connection to the ``--ssh`` agent, relayed both ways.

It renders the daemon's progress events (``--progress`` plain/tty/rawjson/quiet), copies its
standard output and error, writes the ``local``/``tar``/``oci``/``docker`` outputs it streams
back (as this user), then ``--metadata-file``, ``--iidfile`` and ``--load`` here. Ctrl-C asks
the daemon to cancel (a second one too; a third leaves at once); if the client dies, the
daemon cancels by itself.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import sys
import threading
from typing import Any

import orjson

from pybk.core.errors import UsageError
from pybk.core.remote.frames import (
    CHUNK,
    MAX_FRAME,
    PROTOCOL_VERSION,
    SESSION_METHOD,
    FrameError,
    decode,
    encode,
    prefixed,
    read_message,
)

_END = object()


def client_key() -> str:
    """This client among a daemon's clients (with its certificate's name, the key of the
    daemon's copies of its directories): the machine and the user."""
    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError), open(path) as f:
            machine = f.read().strip()
            break
    import hashlib

    raw = f"{machine or socket.gethostname()}:{os.getuid()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def credentials(tls: dict[str, str]) -> tuple[Any, str | None]:
    """gRPC channel credentials from buildctl's TLS flags (None: plain TCP) and the server
    name to check (``--tlsservername``)."""
    directory = tls.get("--tlsdir")
    paths = {
        "ca": tls.get("--tlscacert"), "cert": tls.get("--tlscert"), "key": tls.get("--tlskey")}
    if directory:
        for name, file in (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem")):
            candidate = os.path.join(directory, file)
            if paths[name] is None and os.path.exists(candidate):
                paths[name] = candidate
    if not any(paths.values()):
        if tls.get("--tlsservername"):
            raise UsageError("--tlsservername needs TLS (--tlscacert or --tlsdir)")
        return None, None
    if bool(paths["cert"]) != bool(paths["key"]):
        raise UsageError("--tlscert and --tlskey go together")
    data: dict[str, bytes | None] = {}
    for name, path in paths.items():
        if not path:
            data[name] = None
            continue
        try:
            with open(path, "rb") as f:
                data[name] = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}",
                             flag={"ca": "--tlscacert", "cert": "--tlscert",
                                   "key": "--tlskey"}[name]) from None
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=data["ca"],
                                        private_key=data["key"],
                                        certificate_chain=data["cert"]), tls.get("--tlsservername")


class Client:
    """One remote command: what it serves and what it writes."""

    def __init__(self, argv: list[str], *, command: str, debug: bool = False):
        self.argv = argv
        self.command = command
        self.debug = debug
        self.request: Any = None
        self.transport: Any = None
        self._responses: Any = None
        self.dirs: set[str] = set()
        self.outgoing: queue.Queue = queue.Queue()
        self.listings: dict[int, Any] = {}
        self._listing_ids = itertools.count(1)
        self.channels: dict[int, socket.socket] = {}
        #: ``--ssh`` ids served by an agent of this process (key files, read-only relays)
        self.agents: dict[str, Any] = {}
        self.outputs: dict[int, _Output] = {}
        self.responses: list[Any] = []
        self.renderer: Any = None
        self.code: int | None = None
        self.llb = b""
        #: where the command's standard output goes (None: this process's)
        self.stdout: Any = None

    # -- the request -----------------------------------------------------------------------

    def start_frame(self, request: Any = None) -> tuple[dict[str, Any], bytes]:
        """The first frame: the command, and a build's ``request`` (checked by the caller)."""
        header: dict[str, Any] = {"t": "start", "version": PROTOCOL_VERSION,
                                  "argv": self.argv, "client": client_key(),
                                  "debug": self.debug}
        if self.command != "build":
            header["command"] = "argv"
            return header, b""
        from pybk.core.model import evolve
        from pybk.core.remote.wire import request_to_wire

        absolute = os.path.abspath
        contexts = tuple(evolve(c, value=absolute(c.value)) if c.kind == "local" else c
                         for c in request.build_contexts)
        request = evolve(
            request, context=absolute(request.context) if request.context else request.context,
            file=absolute(request.file) if request.file else None, build_contexts=contexts)
        if request.llb:
            if request.llb == "-":
                self.llb = sys.stdin.buffer.read()
            else:
                try:
                    with open(request.llb, "rb") as f:
                        self.llb = f.read()
                except OSError as exc:
                    raise UsageError(f"cannot read {request.llb}: {exc.strerror}",
                                     flag="--llb") from None
        if request.context:
            self.dirs.add(request.context)
            self.dirs.add(os.path.dirname(request.file) if request.file else request.context)
        self.dirs.update(c.value for c in contexts if c.kind == "local")
        self.request = request
        self._load_agents(request)
        mode = "quiet" if request.quiet else request.progress
        if mode != "quiet":  # quiet: nothing to render, nothing to import
            from pybk.core.progress.ui import make_renderer

            self.renderer = make_renderer(mode, sys.stderr)
        env = {k: os.environ[k] for k in ("SOURCE_DATE_EPOCH",) if k in os.environ}
        header.update(command="build", request=request_to_wire(request), env=env)
        return header, self.llb

    # -- the stream ------------------------------------------------------------------------

    def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        self.outgoing.put(encode(header, data))

    def _requests(self) -> Any:
        while True:
            message = self.outgoing.get()
            if message is _END:
                return
            yield message

    def connect(self, transport: Any) -> None:
        """Open the session over ``transport`` (:class:`GrpcTransport` or
        :class:`SocketTransport`) before the request is ready: the connection and its TLS
        handshake (gRPC's own threads) and the daemon's fork overlap the command line's
        checks here. Nothing is sent before :meth:`run`."""
        self.transport = transport
        self._responses = transport.open(self._requests())

    def abandon(self) -> None:
        """Close a session :meth:`connect` opened, without running anything."""
        self.outgoing.put(_END)
        self.transport.close()

    def run(self, start: tuple[dict[str, Any], bytes]) -> int:
        """Send the start frame, serve the daemon until its exit frame; the exit code.

        Ctrl-C never interrupts the stream (gRPC's iterator cannot be resumed after an
        exception): SIGINT's handler asks the daemon to cancel (twice), and a third one
        cancels the call here."""
        import signal

        transport, responses = self.transport, self._responses
        interrupts = 0

        def interrupt(signum: int, frame: Any) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts >= 3:
                transport.cancel()
            else:
                self.send({"t": "interrupt"})

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, interrupt)
        self.send(*start)
        try:
            for message in responses:
                self._handle(*decode(message))
                if self.code is not None:
                    break
        except FrameError as exc:
            print(f"error: pybkd at {transport.address} sent a bad frame: {exc}",
                  file=sys.stderr)
            return 1
        except Exception as exc:
            code = transport.failure(exc)
            if code is None:
                raise
            if self.code is None:
                return code
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.outgoing.put(_END)
            for channel_sock in self.channels.values():
                with contextlib.suppress(OSError):
                    channel_sock.close()
            transport.close()
            if self.renderer is not None:
                self.renderer.close()
        if self.code is None:
            if interrupts >= 3:
                print("interrupted", file=sys.stderr)
                return 130
            print(f"error: pybkd at {transport.address} ended the session without an exit "
                  "code", file=sys.stderr)
            return 1
        if self.code == 0 and self.request is not None:
            self._finish()
        return self.code

    def _handle(self, header: dict[str, Any], data: bytes) -> None:
        kind = header.get("t")
        if kind == "stdout":
            out = self.stdout if self.stdout is not None else sys.stdout.buffer
            out.write(data)
            out.flush()
        elif kind == "stderr":
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
        elif kind == "progress":
            if self.renderer is not None:
                from pybk.core.progress.events import status_from_json

                self.renderer(status_from_json(orjson.loads(data)))
        elif kind == "call":
            self._call(header, data)
        elif kind in ("ssh-data", "ssh-close"):
            self._ssh_frame(header, data)
        elif kind == "ssh-open":
            self._ssh_open(header)
        elif kind == "output-begin":
            self.outputs[header["index"]] = _Output(self.request.outputs[header["index"]],
                                                   header.get("format", "file"))
        elif kind == "output":
            self.outputs[header["index"]].write(data)
        elif kind == "output-end":
            self.outputs.pop(header["index"]).close()
        elif kind == "responses":
            self.responses = orjson.loads(data)
        elif kind == "exit":
            self.code = int(header.get("code", 1))

    # -- serving the daemon's calls -------------------------------------------------------

    def _call(self, header: dict[str, Any], data: bytes) -> None:
        op = header.get("op")
        call_id = header.get("id")
        if op == "read":  # may be long: in its own thread, the stream keeps flowing
            threading.Thread(target=self._read, args=(header,), daemon=True).start()
            return
        try:
            reply, payload = self._answer(op, header)
        except OSError as exc:
            reply, payload = {"error": exc.strerror or str(exc), "errno": exc.errno or 0}, b""
        except Exception as exc:  # noqa: BLE001 - the daemon reports it as the build's error
            reply, payload = {"error": str(exc)}, b""
        self.send({"t": "reply", "id": call_id, **reply}, payload)

    def _directory(self, path: Any) -> str:
        if not isinstance(path, str) or path not in self.dirs:
            raise PermissionError(13, f"{path!r} is not a directory this command named")
        return path

    def _answer(self, op: Any, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        from pybk.core.fs.rootpath import resolve_in_root

        if op == "stat":
            from pybk.core.remote.filesync import FileServer, stat_tree

            root = self._directory(header.get("path"))
            entries = stat_tree(root, include=header.get("include") or (),
                                exclude=header.get("exclude") or (),
                                follow=header.get("follow") or ())
            listing = next(self._listing_ids)
            self.listings[listing] = FileServer(root, entries)
            return {"entries": entries, "listing": listing}, b""
        if op == "readfile":
            root = self._directory(header.get("path"))
            with open(resolve_in_root(root, str(header.get("rel", ""))), "rb") as f:
                f.seek(int(header.get("offset") or 0))
                length = header.get("length")
                return {}, f.read() if length is None else f.read(int(length))
        if op == "readdir":
            root = self._directory(header.get("path"))
            return {"names": sorted(os.listdir(resolve_in_root(root, str(header.get("rel", "")))))
                    }, b""
        if op == "secret":
            spec = next((s for s in self.request.secrets if s.id == header.get("secret")), None)
            if spec is None:
                raise UsageError(f"secret {header.get('secret')!r} was not given with --secret")
            return {}, spec.read()
        raise UsageError(f"unknown call {op!r} from the daemon")

    def _read(self, header: dict[str, Any]) -> None:
        call_id = header.get("id")
        try:
            server = self.listings[int(header["listing"])]
            for rel, data in server.read(list(header.get("rels") or ())):
                for start in range(0, max(len(data), 1), CHUNK):
                    self.send({"t": "chunk", "id": call_id, "rel": rel},
                              data[start:start + CHUNK])
            self.send({"t": "reply", "id": call_id})
        except OSError as exc:
            self.send({"t": "reply", "id": call_id, "error": exc.strerror or str(exc),
                       "errno": exc.errno or 0})
        except Exception as exc:  # noqa: BLE001 - reported by the daemon
            self.send({"t": "reply", "id": call_id, "error": str(exc)})

    # -- ssh ----------------------------------------------------------------------------------

    def _load_agents(self, request: Any) -> None:
        """What serves each ``--ssh`` here: an in-memory agent over key files (the keys stay
        here: the daemon's step reaches them through the session), or the read-only relay to
        an agent socket (none with ``raw=true``: the socket's bytes as they are)."""
        from pybk.core.engine.sshagent import spec_agent

        for spec in request.ssh:
            agent = spec_agent(spec)
            if agent is not None:
                self.agents[spec.id] = agent

    def _ssh_open(self, header: dict[str, Any]) -> None:
        channel = header.get("id")
        spec = next((s for s in self.request.ssh if s.id == header.get("ssh")), None)
        path = ((spec.paths or (os.environ.get("SSH_AUTH_SOCK", ""),))[0] if spec is not None
                else "")
        agent = self.agents.get(spec.id) if spec is not None else None
        if agent is not None:
            sock = agent.connect()
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                self.send({"t": "ssh-close", "id": channel})
                return
        self.channels[channel] = sock  # type: ignore[index]

        def pump() -> None:
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    self.send({"t": "ssh-data", "id": channel}, data)
            except OSError:
                pass
            self.send({"t": "ssh-close", "id": channel})

        threading.Thread(target=pump, daemon=True).start()

    def _ssh_frame(self, header: dict[str, Any], data: bytes) -> None:
        sock = self.channels.get(header.get("id"))  # type: ignore[arg-type]
        if sock is None:
            return
        with contextlib.suppress(OSError):
            if header.get("t") == "ssh-data":
                sock.sendall(data)
            else:
                sock.shutdown(socket.SHUT_WR)

    # -- after the build ----------------------------------------------------------------------

    def _finish(self) -> None:
        from pybk.core.engine.inputs import finish_outputs

        class _Result:
            metadata = {"exporter.responses": self.responses}

        finish_outputs(self.request, _Result())


class _Output:
    """An output the daemon streams back: a file (``tar``/``oci``/``docker``; ``dest=-`` is
    standard output) or a directory (``local``), written as this user."""

    def __init__(self, spec: Any, fmt: str):
        self.dest = spec.attrs.get("dest") or "-"
        self.fmt = fmt
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if fmt == "tar-dir":
            read_fd, write_fd = os.pipe()
            self._file = os.fdopen(write_fd, "wb")
            self._thread = threading.Thread(target=self._unpack, args=(read_fd,), daemon=True)
            self._thread.start()
        elif self.dest == "-":
            self._file = sys.stdout.buffer
        else:
            directory = os.path.dirname(os.path.abspath(self.dest))
            os.makedirs(directory, exist_ok=True)
            self._file = open(self.dest, "wb")  # noqa: SIM115

    def _unpack(self, read_fd: int) -> None:
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                unpack_tree(pipe, self.dest)
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self._error = exc

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.flush()
        if self._file is not sys.stdout.buffer:
            self._file.close()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise UsageError(f"writing the output to {self.dest}: {self._error}")


def unpack_tree(stream: Any, dest: str) -> None:
    """Unpack a ``local`` output's tar stream into ``dest`` as this user: modes and times
    kept, owners this process's, nothing written outside ``dest`` (no absolute names, no
    ``..``, never through a symlink)."""
    import tarfile

    os.makedirs(dest, exist_ok=True)
    real = os.path.realpath(dest)
    uid, gid = os.getuid(), os.getgid()

    def check(member: Any, path: str) -> Any:
        parts = member.name.split("/")
        if member.name.startswith("/") or ".." in parts:
            raise tarfile.OutsideDestinationError(member, path)
        target = os.path.normpath(os.path.join(real, member.name))
        parent = os.path.dirname(target)
        if os.path.realpath(parent) != parent or not (target + "/").startswith(real + "/"):
            raise tarfile.OutsideDestinationError(member, path)  # through a symlink
        if os.path.islink(target) and not member.issym():
            raise tarfile.OutsideDestinationError(member, path)  # would write through it
        if member.islnk() and (member.linkname.startswith("/")
                               or ".." in member.linkname.split("/")):
            raise tarfile.LinkOutsideDestinationError(member, path)
        return member.replace(uid=uid, gid=gid, uname="", gname="", deep=False)

    with tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(real, filter=check)


class GrpcTransport:
    """The control API's ``Session`` stream over gRPC (``tcp://``)."""

    def __init__(self, target: str, creds: Any, server_name: str | None):
        import grpc

        self.address = f"tcp://{target}"
        options = [("grpc.max_receive_message_length", MAX_FRAME),
                   ("grpc.max_send_message_length", MAX_FRAME)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = (grpc.secure_channel(target, creds, options=options)
                        if creds is not None else grpc.insecure_channel(target, options=options))
        self.responses: Any = None

    def open(self, requests: Any) -> Any:
        self.responses = self.channel.stream_stream(SESSION_METHOD)(requests)
        return self.responses

    def cancel(self) -> None:
        if self.responses is not None:
            self.responses.cancel()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cancel()
        self.channel.close()

    def failure(self, exc: BaseException) -> int | None:
        """Say why the daemon could not be used (connection, TLS, a refused client
        certificate); the exit code (None: not a gRPC error)."""
        import grpc

        if not isinstance(exc, grpc.RpcError):
            return None
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:  # as for an unreachable unix:// daemon
            print(f"error: cannot reach pybkd at {self.address}: {details}", file=sys.stderr)
            return 2
        if code == grpc.StatusCode.CANCELLED:
            print("interrupted", file=sys.stderr)
            return 130
        name = code.name if code is not None else "error"
        print(f"error: pybkd at {self.address}: {name}: {details}", file=sys.stderr)
        return 1


#: what a client sends first on a unix socket to speak sessions instead of the local protocol
SESSION_MAGIC = b"pybk-session1\n"


class SocketTransport:
    """Sessions over pybkd's unix socket, for a user other than the daemon's: the same frames,
    each preceded by its length."""

    def __init__(self, sock: socket.socket, address: str):
        self.sock = sock
        self.address = address

    def open(self, requests: Any) -> Any:
        self.sock.sendall(SESSION_MAGIC)

        def write() -> None:
            with contextlib.suppress(OSError):
                for message in requests:
                    self.sock.sendall(prefixed(message))

        threading.Thread(target=write, daemon=True, name="pybk-send").start()
        return self._messages()

    def _messages(self) -> Any:
        while True:
            message = read_message(self.sock)
            if message is None:
                return
            yield message

    def cancel(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cancel()
        self.sock.close()

    def failure(self, exc: BaseException) -> int | None:
        if isinstance(exc, OSError):
            print(f"error: pybkd at {self.address}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return None
