"""``pybkd``: the engine as a daemon, answering ``pybk --addr unix:///…`` commands.

The daemon is a pre-fork "zygote": it loads the configuration, imports and warms everything a
build needs (the core's and the built-in plugins' modules, the plugins, the command-line
parsers, what plugins prepare in ``pybk_warm_up`` such as the Dockerfile grammar), opens the
store once to clean up after dead builds, then waits on a unix socket. Each connection gets a
forked child that takes over the client's stdin, stdout, stderr and working directory (passed
as descriptors) and environment, runs the ordinary command line
(:func:`pybk.core.cli.commands.main`) and sends the exit code back. So every command behaves
exactly as embedded, minus the interpreter start-up and imports. The wire protocol and the
client are :mod:`pybk.core.cli.remote`; see ``docs/daemon.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import io
import os
import pkgutil
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pybk.core.cli.errors import interrupted, report, run_reported
from pybk.core.cli.remote import EXIT, INTERRUPT, AddressError, read_request, socket_path
from pybk.core.errors import UsageError

DEFAULT_SOCKET = "/run/pybk/pybkd.sock"
#: a command's children get this long to finish their cancellation when the daemon stops
STOP_GRACE = 30.0


def make_parser() -> argparse.ArgumentParser:
    from pybk.core.cli.commands import _Parser

    parser = _Parser(prog="pybkd", description="Serve pybk builds on a unix socket.")
    parser.add_argument("--config", default=None,
                        help="buildkitd.toml-format config file (default: $PYBK_CONFIG)")
    parser.add_argument("--root", default=None, help="store directory (default: the config's "
                        "root, else $PYBK_ROOT or /var/lib/pybk)")
    parser.add_argument("--addr", default=None, help="listen address, unix:///PATH (default: "
                        f"the config's first unix [grpc] address, else unix://{DEFAULT_SOCKET})")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def listen_path(addr: str | None, config_addresses: Sequence[str]) -> str:
    """The socket path to serve: ``--addr``, else the config's first ``unix://`` address."""
    if addr is None:
        addr = next((a for a in config_addresses if a.startswith("unix://")),
                    f"unix://{DEFAULT_SOCKET}")
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
    prepare (``pybk_warm_up``), load the registry client's HTTP and TLS parts, recover the store; everything done
    here is shared by every child. ``worker``: the selected worker, whose snapshotter recovers the store."""
    from pybk.core.plugins import get_plugin_manager

    for package in warm_packages():
        _import_all(package)
    pm = get_plugin_manager()
    from pybk.core.cli.commands import shared_parser

    shared_parser(True)
    shared_parser(False)
    pm.hook.pybk_warm_up(config=config)
    from pybk.core.registry.client import warm_up as warm_up_registry

    warm_up_registry()  # httpx's modules and the CA bundle, loaded once for every build
    from pybk.core.store.store import Store

    snapshotter = (worker.snapshotter if worker is not None  # type: ignore[attr-defined]
                   else config.worker.oci.snapshotter)  # type: ignore[attr-defined]
    Store.open(root, snapshotter=snapshotter).close()


# -- serving ------------------------------------------------------------------------------------


def _bind(path: str) -> socket.socket:
    """A listening socket at ``path`` (mode 0660); it appears at ``path`` only once it accepts
    connections. A live daemon already there is an error; a stale socket is replaced."""
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
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
        listener.bind(staging)
        os.chmod(staging, 0o660)
        listener.listen(128)
        os.rename(staging, path)
    except OSError as exc:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise UsageError(f"pybkd: cannot listen on {path}: {exc.strerror}") from None
    return listener


class Daemon:
    """The accept loop: one forked child per connection."""

    def __init__(self, listener: socket.socket, path: str, *, root: str,
                 config_path: str | None):
        self.listener = listener
        self.path = path
        self.root = root
        self.config_path = config_path
        self.children: set[int] = set()
        self.stopping = False
        self._wake_r, self._wake_w = socket.socketpair()

    def serve(self) -> int:
        for fd in (self._wake_r, self._wake_w):
            fd.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        gc.collect()
        gc.freeze()
        print(f"pybkd: serving unix://{self.path} (store {self.root})", file=sys.stderr,
              flush=True)
        try:
            while not self.stopping:
                try:
                    ready, _, _ = select.select([self.listener, self._wake_r], [], [])
                except InterruptedError:
                    ready = []
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(512):
                            pass
                self._reap()
                if self.listener in ready and not self.stopping:
                    self._accept()
        finally:
            self._shutdown()
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.listener.close()
                self._wake_r.close()
                self._wake_w.close()
                code = _serve_connection(conn, root=self.root, config_path=self.config_path)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        conn.close()
        self.children.add(pid)

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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.listener.close()
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
        print("pybkd: stopped", file=sys.stderr, flush=True)


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


def _global_options(argv: list[str]) -> dict[str, str]:
    """``--root``/``--config`` given before the command (``--x V`` and ``--x=V``)."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name, eq, value = argv[i].partition("=")
        if name in ("--root", "--config"):
            if not eq:
                if i + 1 >= len(argv):
                    break
                i += 1
                value = argv[i]
            found[name] = value
        i += 1
    return found


def daemon_argv(argv: list[str], *, root: str, config_path: str | None) -> list[str]:
    """The client's arguments with the daemon's store and config; a different ``--root`` or
    ``--config`` is a usage error (the daemon serves one store with one configuration)."""
    given = _global_options(argv)
    same = os.path.realpath
    if "--root" in given and same(given["--root"]) != same(root):
        raise UsageError(f"pybk: --root {given['--root']} is not the store of the daemon "
                         f"({root}); leave --root out, or run without --addr")
    if "--config" in given and (config_path is None
                                or same(given["--config"]) != same(config_path)):
        raise UsageError(f"pybk: --config {given['--config']} is not the daemon's "
                         "configuration; restart pybkd with --config, or run without --addr")
    prefix = ["--root", root] + (["--config", config_path] if config_path else [])
    return prefix + argv


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


def _serve_connection(conn: socket.socket, *, root: str, config_path: str | None) -> int:
    """Run one client's command in this (forked) process; return its exit code."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        fds, argv, env = read_request(conn)
        # the daemon's configuration (what it grants included), never the client's
        env.pop(b"PYBK_CONFIG", None)
        _take_over(fds, env)
    except (OSError, ValueError) as exc:
        print(f"pybkd: dropped a connection: {exc}", file=sys.stderr, flush=True)
        return 1
    done = threading.Event()
    threading.Thread(target=_watch, args=(conn, done), daemon=True).start()
    sys.argv = ["pybk", *argv]
    code = 1
    try:
        from pybk.core.cli.commands import main
        from pybk.core.engine.build import answer_first

        answer_first()

        try:
            full = daemon_argv(argv, root=root, config_path=config_path)
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
    code &= 0xFF
    with contextlib.suppress(OSError):
        conn.sendall(EXIT + bytes([code]))
    _after_answer()
    return code


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
    from pybk.core.paths import default_root

    ns = make_parser().parse_args(argv)
    if ns.config is None:
        ns.config = os.environ.get("PYBK_CONFIG") or None
    config, warnings = load_config(ns.config)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    root = os.path.abspath(ns.root or config.root or default_root())
    config_path = os.path.abspath(ns.config) if ns.config else None
    path = os.path.abspath(listen_path(ns.addr, config.grpc.address))
    workers = load_workers(config, root)
    warm_up(root, config, select_worker(workers))
    listener = _bind(path)
    for worker in workers:  # what the children give back stays for the next builds
        worker.serve()
    try:
        return Daemon(listener, path, root=root, config_path=config_path).serve()
    finally:
        _shutdown_workers(workers)


def _shutdown_workers(workers: Sequence[Any]) -> None:
    """Let each worker release what the daemon kept between builds (pooled network
    namespaces …)."""
    for worker in workers:
        try:
            worker.shutdown()
        except Exception as exc:  # the daemon is stopping: say so, never hang
            name = getattr(worker, "name", "?")
            print(f"pybkd: shutting down worker {name}: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
