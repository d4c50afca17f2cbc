"""``pybkd``: the engine as a daemon, answering ``pybk`` commands.

The daemon is a pre-fork "zygote": it loads the configuration, imports and warms everything a
build needs (the core's and the built-in plugins' modules, the plugins, the command-line
parsers, what plugins prepare in ``pybk_warm_up`` such as the Dockerfile grammar), opens the
store once to clean up after dead builds, then waits on a unix socket. Each connection gets a
forked child that takes over the client's stdin, stdout, stderr and working directory (passed
as descriptors) and environment (less its ``PYBK_*`` variables: the daemon's own values of
those count), runs the ordinary command line
(:func:`pybk.core.cli.commands.main`) and sends the exit code back. So every command behaves
exactly as embedded, minus the interpreter start-up and imports. The wire protocol and the
client are :mod:`pybk.core.cli.remote`; see ``docs/daemon.md``.

A command ``pybk`` offers automatically (no ``--addr``) runs only if the daemon would do exactly
what the command would do in its own process (:meth:`Served.refusal`); otherwise the client runs
it itself. A daemon started on demand (``--on-demand``, by ``pybk`` for ``[pybk] daemon =
"auto"``) stops after ``[pybk] daemon-idle-timeout`` without a command, and when it finds its
configuration file or pybk's installation changed since it started.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import gc
import importlib
import io
import os
import pkgutil
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pybk.core import __version__, daemonlog, daemonstate
from pybk.core.cli import activation, debugserver
from pybk.core.cli.errors import interrupted, report, run_reported
from pybk.core.cli.remote import (
    ACCEPTED,
    AUTO,
    EXIT,
    GO,
    INTERRUPT,
    NOT_SERVED,
    AddressError,
    auto_target,
    daemon_argv,
    identity,
    reachable,
    read_request,
    socket_path,
)
from pybk.core.cli.remoteserve import (
    relay_grpc,
    serve_unix_session,
    start_grpc,
    wants_grpc,
    wants_session,
)
from pybk.core.errors import UsageError
from pybk.core.paths import SYSTEM_SOCKET, default_config, default_root, store_socket
from pybk.core.userns import enter, needs_namespace

DEFAULT_SOCKET = SYSTEM_SOCKET
#: a command's children get this long to finish their cancellation when the daemon stops
STOP_GRACE = 30.0
#: environment read when the daemon starts and kept by every command it runs (plugin selection,
#: the interpreter's path, the default TLS context's CA files): a client's must be the same for
#: a command to run here automatically
STARTUP_ENV = ("PYBK_PLUGINS", "PYBK_DISABLED_PLUGINS", "PYBK_DISABLE_PLUGIN_AUTOLOAD",
               "PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR")


def make_parser() -> argparse.ArgumentParser:
    from pybk.core.cli.commands import _Parser

    parser = _Parser(prog="pybkd", description="Serve pybk builds on a unix socket.")
    parser.add_argument("--config", default=None,
                        help="buildkitd.toml-format config file (default: $PYBK_CONFIG, else, "
                        "not root, $XDG_CONFIG_HOME/pybk/buildkitd.toml when it exists)")
    parser.add_argument("--root", default=None, help="store directory (default: the config's "
                        "root, else $PYBK_ROOT, else /var/lib/pybk, not root $XDG_DATA_HOME/pybk)")
    parser.add_argument("--addr", action="append", default=None,
                        help="listen address, repeatable: unix:///PATH (the local protocol; "
                        "default: the config's first unix [grpc] address, else the store's "
                        f"socket: {DEFAULT_SOCKET} for /var/lib/pybk, "
                        "$XDG_RUNTIME_DIR/pybk/pybkd.sock for a user's $XDG_DATA_HOME/pybk, "
                        "ROOT/pybkd.sock for any other store) or tcp://HOST:PORT (gRPC, TLS "
                        "from [grpc.tls]); given, it replaces the config's [grpc] address list")
    parser.add_argument("--on-demand", action="store_true",
                        help="started by pybk for [pybk] daemon = \"auto\": stop after "
                        "[pybk] daemon-idle-timeout without a command, or once the config file "
                        "or pybk's installation changes")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks; log every command")
    return parser


def split_addresses(addresses: Sequence[str], *, strict: bool = True
                    ) -> tuple[str | None, list[str]]:
    """``(first unix:// address or None, tcp:// addresses)``; other schemes are refused
    (``strict``, for ``--addr``) or skipped (the config's, which the loader warns about)."""
    unix = None
    tcp = []
    for address in addresses:
        if address.startswith("tcp://"):
            tcp.append(address)
        elif address.startswith("unix://"):
            unix = unix or address
        elif strict:
            raise UsageError(f"pybkd: {address}: only unix:// and tcp:// addresses are served")
    return unix, tcp


def listen_path(addr: str | None, config_addresses: Sequence[str], root: str) -> str:
    """The socket path to serve: ``--addr``, else the config's first ``unix://`` address, else
    the store's socket (:func:`pybk.core.paths.store_socket`)."""
    if addr is None:
        addr = next((a for a in config_addresses if a.startswith("unix://")),
                    f"unix://{store_socket(root)}")
    try:
        return socket_path(addr)
    except AddressError as exc:
        raise UsageError(str(exc).replace("pybk:", "pybkd:", 1)) from None


# -- warming up ---------------------------------------------------------------------------------


def warm_packages() -> list[str]:
    """The packages whose modules are imported before serving (children inherit them): the
    core's and those of the built-in plugins."""
    from pybk.core.plugins import read_builtin_plugins

    packages = ["pybk.core"]
    for entry in read_builtin_plugins():
        package = entry.module.rpartition(".")[0]
        if package not in packages:
            packages.append(package)
    return packages


def _import_all(package: str) -> None:
    """Import every module of ``package`` and of its subpackages."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__, package + "."):
        if info.ispkg:
            _import_all(info.name)
        elif not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def warm_up(root: str, config: Any, worker: Any = None) -> None:
    """Import what builds use, build both command-line parsers, load the plugins and let them
    prepare (``pybk_warm_up``), structure every output's and cache's options once, load the
    registry client's HTTP and TLS parts, recover the store and choose its snapshotter (an
    ``auto`` choice probes overlayfs once and keeps the answer in the store); everything done
    here is shared by every child. ``worker``: the selected worker, whose snapshotter recovers the store."""
    from pybk.core.plugins import get_plugin_manager

    for package in warm_packages():
        _import_all(package)
    pm = get_plugin_manager()
    from pybk.core.cli.commands import shared_parser

    shared_parser(True)
    shared_parser(False)
    pm.hook.pybk_warm_up(config=config)
    from pybk.core.engine.resolve import warm_up_options

    warm_up_options(pm)  # the converter's code for the outputs' and caches' options
    from pybk.core.llb.definition import prepare_decoders

    prepare_decoders()
    from pybk.core.registry.client import warm_up as warm_up_registry

    warm_up_registry()  # httpx's modules and the CA bundle, loaded once for every build
    from pybk.core.store.store import Store

    snapshotter = (worker.snapshotter if worker is not None  # type: ignore[attr-defined]
                   else config.worker.oci.snapshotter)  # type: ignore[attr-defined]
    store = Store.open(root, snapshotter=snapshotter)
    try:
        store.snapshotter  # noqa: B018 - an "auto" choice probes overlayfs once, kept in the store
    finally:
        store.close()


# -- serving ------------------------------------------------------------------------------------


def _lock(path: str) -> int:
    """Hold ``PATH.lock`` for the daemon's life (from before it warms up): one daemon per
    socket, and ``pybk`` starts none while one is starting or stopping."""
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"pybkd: cannot listen on {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(f"pybkd: another daemon is listening on {path} (or starting or "
                         "stopping there)") from None
    return fd


def _bind(path: str, uid: int | None = None, gid: int | None = None) -> socket.socket:
    """A listening socket at ``path`` (mode 0660); it appears at ``path`` only once it accepts
    connections. A live daemon already there is an error; a stale socket is replaced, anything
    else at ``path`` (a regular file, a directory, a symbolic link) is an error and left alone.
    Paths longer than a socket address allows are bound through their directory."""
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise UsageError(f"pybkd: {path}: {exc.strerror}") from None
    if existing is not None and not stat.S_ISSOCK(existing.st_mode):
        # never delete what is not a socket: the path may be mistyped, or point at a file
        raise UsageError(f"pybkd: {path} exists and is not a socket; not replacing it "
                         "(remove it, or listen elsewhere with --addr)")
    if existing is not None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with reachable(path) as where:
                probe.connect(where)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError as exc:
            raise UsageError(f"pybkd: {path}: {exc.strerror}") from None
        else:
            raise UsageError(f"pybkd: another daemon is listening on {path}")
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    staging = f"{path}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with reachable(staging) as where:
            listener.bind(where)
        os.chmod(staging, 0o660)
        if uid is not None or gid is not None:  # [grpc] uid/gid, as buildkitd does
            os.chown(staging, -1 if uid is None else uid, -1 if gid is None else gid)
        listener.listen(128)
        os.rename(staging, path)
    except OSError as exc:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise UsageError(f"pybkd: cannot listen on {path}: {exc.strerror}") from None
    return listener


def _read_config(path: str | None) -> bytes | None:
    """The config file's bytes (None without a file, or one that cannot be read)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def installed() -> list[tuple[str, int | None]]:
    """The modification times of the directories imports come from (``sys.path``, less the
    script's or working directory in front): installing or removing a package (a plugin, a new
    pybk) changes one of them."""
    paths = sys.path if sys.flags.safe_path else sys.path[1:]
    found = []
    for path in paths:
        try:
            found.append((path, os.stat(path or ".").st_mtime_ns))
        except OSError:
            found.append((path, None))
    return found


def _peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of ``conn``."""
    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return (int.from_bytes(cred[0:4], sys.byteorder), int.from_bytes(cred[4:8], sys.byteorder))


class Served:
    """What a daemon serves and how it was started: what a command offered automatically must
    match to run here."""

    def __init__(self, root: str, config_path: str | None, config_bytes: bytes | None, *,
                 on_demand: bool = False, verbose: bool = False, uid: int | None = None,
                 gid: int | None = None):
        self.root = root
        #: ``[grpc] uid``/``gid``: who else may run commands through the unix socket (in a
        #: session; the local protocol serves the daemon's own user only)
        self.uid, self.gid = uid, gid
        #: the gRPC listener's private unix socket (gRPC clients of the unix socket go there)
        self.grpc_socket: str | None = None
        self.config_path = config_path
        self.config_bytes = config_bytes
        self.on_demand = on_demand
        self.verbose = verbose
        self.identity = identity()
        self.environment = {key: os.environ.get(key) for key in STARTUP_ENV}
        self.installed = installed()

    def refusal(self, uid: int, request: Any) -> tuple[str | None, bool]:
        """Why the command of ``request`` (sent by user ``uid``, run by this process with the
        client's working directory and environment) must not run here automatically — None
        when it may — and whether the reason is that this daemon is out of date."""
        same = os.path.realpath
        if uid != os.geteuid():
            return f"the client's user ({uid}) is not the daemon's", False
        tag, _, package = request.identity.partition(" ")
        mine, _, my_package = self.identity.partition(" ")
        if tag != mine or same(package) != same(my_package):
            return f"the client runs another pybk ({request.identity})", False
        target = auto_target(request.argv)
        if target is None:
            return "its global options are not plain --root/--config", False
        root, config = target
        if same(root) != same(self.root):
            return f"its store {root} is not the daemon's", False
        if config is None or self.config_path is None:
            if config != self.config_path:
                return f"its config file ({config or 'none'}) is not the daemon's", False
        elif same(config) != same(self.config_path):
            return f"its config file {config} is not the daemon's", False
        for key, value in self.environment.items():
            if os.environ.get(key) != value:
                return f"its ${key} is not the daemon's", False
        if _read_config(config) != self.config_bytes:
            return f"{config} changed since the daemon started", True
        if installed() != self.installed:
            return "packages were installed or removed since the daemon started", True
        return None, False


class Daemon:
    """The accept loop: one forked child per connection. With ``idle_timeout``, the daemon
    stops once no command has run for that long; SIGUSR1 (sent by a child that finds the daemon
    out of date) stops it the same way: it stops listening and exits once its running commands
    are done."""

    def __init__(self, listener: socket.socket, path: str, served: Served, *,
                 idle_timeout: float | None = None, owns_socket: bool = True,
                 control: socket.socket | None = None, grpc_listener: Any = None):
        self.listener: socket.socket | None = listener
        #: the private socket the gRPC listener relays remote sessions to, and that process
        self.control = control
        self.grpc_listener = grpc_listener
        self.path = path
        self.owns_socket = owns_socket  # False: passed by socket activation, left in place
        self.served = served
        self.idle_timeout = idle_timeout or None
        self.children: set[int] = set()
        self.stopping = False
        self.retire_asked = False
        self._wake_r, self._wake_w = socket.socketpair()

    def serve(self) -> int:
        for fd in (self._wake_r, self._wake_w):
            fd.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGUSR1, self._retire_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGHUP, self._reload)
        gc.freeze()  # (collected before listening) the children's collections skip it all
        daemonlog.info(f"serving unix://{self.path} (store {self.served.root}, pid "
                       f"{os.getpid()})", address=f"unix://{self.path}",
                       root=self.served.root, pid=os.getpid())
        last = time.monotonic()
        try:
            while not self.stopping and (self.listener is not None or self.children):
                timeout = None
                if self.listener is not None and self.idle_timeout and not self.children:
                    timeout = max(0.0, last + self.idle_timeout - time.monotonic())
                watched = [self._wake_r] + ([self.listener] if self.listener else [])
                if self.control is not None and self.listener is not None:
                    watched.append(self.control)
                try:
                    ready, _, _ = select.select(watched, [], [], timeout)
                except InterruptedError:
                    ready = []
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(512):
                            pass
                busy = bool(self.children)
                self._reap()
                if busy and not self.children:
                    last = time.monotonic()
                if self.stopping or self.listener is None:
                    continue
                if self.retire_asked:
                    self._retire("SIGUSR1 (asked, or out of date)")
                elif self.listener in ready or (self.control is not None
                                                and self.control in ready):
                    if self.listener in ready:
                        self._accept()
                    if self.control is not None and self.control in ready:
                        self._accept(self.control)
                    last = time.monotonic()
                elif (self.idle_timeout and not self.children
                      and time.monotonic() - last >= self.idle_timeout):
                    self._retire(f"no command for {self.idle_timeout:g}s")
        finally:
            self._shutdown()
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _retire_signal(self, signum: int, frame: object) -> None:
        self.retire_asked = True

    def _reload(self, signum: int, frame: object) -> None:
        """SIGHUP: the gRPC listener re-reads its TLS certificates."""
        if self.grpc_listener is not None:
            self.grpc_listener.reload()

    def _retire(self, reason: str) -> None:
        """Stop listening (the socket goes first; connections already made are served) and
        let the running commands finish."""
        assert self.listener is not None
        daemonlog.info(f"stopping: {reason}")
        self._unlink()
        self.listener.setblocking(False)
        while self._accept():
            pass
        self.listener.close()
        self.listener = None

    def _accept(self, source: socket.socket | None = None) -> bool:
        assert self.listener is not None
        remote = source is not None
        source = source or self.listener
        try:
            conn, _ = source.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False
        conn.setblocking(True)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.listener.close()
                if self.control is not None:
                    self.control.close()
                self._wake_r.close()
                self._wake_w.close()
                if remote:
                    from pybk.core.cli.remoteserve import serve_session

                    code = serve_session(conn, self.served, daemonlog.info)
                else:
                    code = _serve_connection(conn, self.served)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        conn.close()
        self.children.add(pid)
        return True

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def _shutdown(self) -> None:
        """Stop listening, cancel the running commands (SIGINT, as a client's Ctrl-C would)
        and wait for them."""
        if self.listener is not None:
            self._unlink()
            self.listener.close()
            self.listener = None
        if self.grpc_listener is not None:
            self.grpc_listener.stop()
        if self.control is not None:
            self.control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        daemonlog.info("stopped")

    def _unlink(self) -> None:
        """Remove the socket (not one passed by socket activation: its owner keeps it)."""
        if self.owns_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


# -- one connection (in the forked child) -------------------------------------------------------


def _take_over(fds: list[int], env: dict[bytes, bytes]) -> None:
    """Become the client: its stdio on 0/1/2, its working directory and environment."""
    stdin, stdout, stderr, cwd = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    os.fchdir(cwd)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.environb.clear()
    os.environb.update(env)
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    unbuffered = bool(env.get(b"PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, errors=errors,  # noqa: SIM115
                                     closefd=False)
    sys.stdout = sys.__stdout__ = _writer(1, encoding, errors, unbuffered=unbuffered,
                                          line_buffering=os.isatty(1))
    sys.stderr = sys.__stderr__ = _writer(2, encoding, "backslashreplace",
                                          unbuffered=unbuffered, line_buffering=True)


def _writer(fd: int, encoding: str, errors: str, *, unbuffered: bool,
            line_buffering: bool) -> io.TextIOWrapper:
    """A standard output stream on ``fd`` as Python would make it for the client
    (``PYTHONUNBUFFERED`` included)."""
    raw = io.FileIO(fd, "w", closefd=False)
    binary = raw if unbuffered else io.BufferedWriter(raw)
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors,  # type: ignore[arg-type]
                            line_buffering=line_buffering, write_through=unbuffered)


def _watch(conn: socket.socket, done: threading.Event) -> None:
    """Turn the client's Ctrl-C (or its disappearance) into SIGINT for this process."""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if done.is_set():
            return
        if INTERRUPT in data or not data:
            os.kill(os.getpid(), signal.SIGINT)
        if not data:
            return


def _serve_connection(conn: socket.socket, served: Served) -> int:
    """Run one client's command in this (forked) process; return its exit code."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    own = _own_variables()
    try:
        client_pid, client_uid = _peer(conn)
        if wants_session(conn):
            return serve_unix_session(conn, served, client_pid, client_uid)
        if wants_grpc(conn):
            return relay_grpc(conn, served, client_pid, client_uid)
        if client_uid not in (os.geteuid(), 0):
            daemonlog.warning(f"refused pid {client_pid} (uid {client_uid}): the local protocol "
                              "serves the daemon's own user; other users' clients use sessions")
            return 1
        request = read_request(conn)
        _take_over(request.fds, request.env)
    except (OSError, ValueError) as exc:
        daemonlog.error(f"dropped a connection: {exc}")
        return 1
    if request.mode == AUTO:
        reason, stale = served.refusal(client_uid, request)
        if reason is not None:
            daemonlog.info(f"not running the command of pid {client_pid} automatically: "
                           f"{reason}", client_pid=client_pid, client_uid=client_uid)
            if stale and served.on_demand:
                os.kill(os.getppid(), signal.SIGUSR1)
            with contextlib.suppress(OSError):
                conn.sendall(NOT_SERVED)
            return 0
    try:
        conn.sendall(ACCEPTED)
        if request.mode == AUTO and conn.recv(1) != GO:
            return 0  # the client gave up waiting and runs the command itself
    except OSError:
        return 0
    # the daemon's store, configuration (what it grants included) and settings, never the
    # client's: its PYBK_* variables give way to the daemon's own
    _adopt_own_variables(own)
    with daemonstate.command(request.argv, client_pid=client_pid, client_uid=client_uid):
        code = _run_command(conn, request.argv, served)
    if served.verbose:
        daemonlog.debug(f"pid {client_pid} (uid {client_uid}): pybk {' '.join(request.argv)}: "
                        f"exit {code}", client_pid=client_pid, client_uid=client_uid,
                        argv=request.argv, exit=code)
    with contextlib.suppress(OSError):
        conn.sendall(EXIT + bytes([code]))
    _after_answer()
    return code


def _own_variables() -> dict[bytes, bytes]:
    """The daemon's own ``PYBK_*`` environment variables (read before adopting the client's)."""
    return {key: value for key, value in os.environb.items() if key.startswith(b"PYBK_")}


def _adopt_own_variables(own: dict[bytes, bytes]) -> None:
    """Drop every ``PYBK_*`` variable of the client's environment (store, configuration,
    daemon address, plugin selection, timeouts …) and put back the daemon's own values: a
    command run here is configured by the daemon alone. (Whether a command offered
    automatically may run here compares the client's values first: :meth:`Served.refusal`.)"""
    for key in [key for key in os.environb if key.startswith(b"PYBK_")]:
        del os.environb[key]
    os.environb.update(own)


def _run_command(conn: socket.socket, argv: list[str], served: Served) -> int:
    """``pybk ARGV`` with the daemon's store and configuration; its exit code (0-255)."""
    done = threading.Event()
    threading.Thread(target=_watch, args=(conn, done), daemon=True).start()
    sys.argv = ["pybk", *argv]
    code = 1
    try:
        from pybk.core.cli.commands import main
        from pybk.core.engine.build import answer_first

        answer_first()

        try:
            full = daemon_argv(argv, root=served.root, config_path=served.config_path)
        except UsageError as exc:
            code = report(exc)
        else:
            code = main(full)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = interrupted()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        done.set()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    return code & 0xFF


def _after_answer() -> None:
    """What the build left for after the answer (the automatic GC), with the client's streams
    let go first: nothing reaches the client after its exit code."""
    from pybk.core.engine.build import run_after_answer

    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    with contextlib.suppress(BaseException):  # the answer is given; nobody is left to tell
        run_after_answer()


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_reported(functools.partial(_start, argv), debug="--debug" in argv,
                        quiet_interrupt=True)


def _start(argv: list[str]) -> int:
    """Load the configuration and the workers, warm up, listen and serve until stopped."""
    from pybk.core.config.loader import load_config
    from pybk.core.engine.workers import load_workers, select_worker

    ns = make_parser().parse_args(argv)
    if needs_namespace():  # rootless: as root of a user namespace (docs/rootless.md)
        enter()
    if ns.config is None:
        ns.config = default_config()
    config_bytes = _read_config(ns.config)  # before loading: a later change is seen as one
    config, warnings = load_config(ns.config)
    level = "debug" if ns.debug else config.log.level
    daemonlog.configure(format=config.log.format, level=level)
    notes = [str(warning) for warning in warnings]
    passed = activation.passed_listener(notes)  # systemd's socket, if it passed one
    root = os.path.abspath(ns.root or config.root or default_root())
    config_path = os.path.abspath(ns.config) if ns.config else None
    if config_path is None:  # the commands run here read no file either (not one in a
        os.environ["PYBK_CONFIG"] = ""  # client's $XDG_CONFIG_HOME): paths.default_config
    unix_address, tcp_addresses = split_addresses(ns.addr or config.grpc.address,
                                                  strict=bool(ns.addr))
    if not ns.addr:
        notes += [f"[grpc] address {a} is not served: pybkd serves unix:// and tcp:// addresses"
                  for a in config.grpc.address if not a.startswith(("unix://", "tcp://"))]
    if passed is not None:
        path = activation.socket_path(passed)
        activation.check_addr(unix_address if ns.addr else None, path)
        notes += filter(None, [activation.unserved_config_address(config.grpc.address, path)])
    else:
        path = os.path.abspath(listen_path(unix_address, (), root))
    for note in notes:
        daemonlog.warning(note)
    if tcp_addresses:
        from pybk.core.remote.listener import check_tls

        check_tls(config.grpc.tls, tcp_addresses, config.pybk.tcp_without_tls)
    lock = _lock(path)
    debug = None
    try:
        # running commands, in files the debug endpoint and the control API's Load read
        daemonstate.setup(root)
        if config.grpc.debug_address:
            debug = debugserver.start(config.grpc.debug_address, root,
                                      log_format=config.log.format, log_level=level)
        workers = load_workers(config, root)
        daemonstate.describe(version=f"pybk {__version__}", platforms=_platforms(workers))
        warm_up(root, config, select_worker(workers))
        if debug is not None:
            debug.wait_ready()
        gc.collect()  # before the socket appears: the first command is answered at once
        listener = passed or _bind(path, config.grpc.uid, config.grpc.gid)
        if os.path.dirname(os.path.realpath(path)) == os.path.realpath(root):
            from pybk.core.store.db import secure_root

            secure_root(root)  # searchable by the users [grpc] uid/gid let in (root_mode)
        control, grpc_listener = start_grpc(root, tcp_addresses, config)
        for worker in workers:  # what the children give back stays for the next builds
            worker.serve()
        served = Served(root, config_path, config_bytes, on_demand=ns.on_demand,
                        verbose=daemonlog.enabled(daemonlog.DEBUG),
                        uid=config.grpc.uid, gid=config.grpc.gid)
        served.grpc_socket = grpc_listener.unix_path
        idle = config.pybk.daemon_idle_timeout if ns.on_demand else None
        try:
            return Daemon(listener, path, served, idle_timeout=idle,
                          owns_socket=passed is None, control=control,
                          grpc_listener=grpc_listener).serve()
        finally:
            _shutdown_workers(workers)
    finally:
        if debug is not None:
            debug.stop()
        daemonstate.teardown()
        os.close(lock)


def _platforms(workers: Sequence[Any]) -> list[str]:
    """The workers' platforms, normalised, each once."""
    from pybk.core.errors import InputError
    from pybk.core.platform import parse_platform

    out: list[str] = []
    for text in (text for worker in workers for text in worker.platforms()):
        with contextlib.suppress(InputError):
            text = str(parse_platform(text))
        out += [text] if text not in out else []
    return out


def _shutdown_workers(workers: Sequence[Any]) -> None:
    """Let each worker release what the daemon kept between builds (pooled network
    namespaces …)."""
    for worker in workers:
        try:
            worker.shutdown()
        except Exception as exc:  # the daemon is stopping: say so, never hang
            name = getattr(worker, "name", "?")
            daemonlog.error(f"shutting down worker {name}: {exc}", worker=name)


if __name__ == "__main__":
    sys.exit(main())
