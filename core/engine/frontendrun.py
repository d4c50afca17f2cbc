"""Containers for frontends that are programs: the engine's side of
:meth:`pybk.core.interfaces.FrontendBridge.new_container`.

:func:`open_container` solves the image (with the build's progress), and :class:`EngineContainer`
runs one process on a writable layer of it with the worker's executor, on a thread of its own
(with its own event loop) so that the frontend's conversation and the nested solves it asks for
stay on the caller's thread. Its stderr is logged to a ``[frontend] <name>`` progress line.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.interfaces import FrontendContainer, OutputCallback, ProcessSpec
from pybk.core.progress.events import STREAM_STDERR, Progress
from pybk.core.progress.ui import progress_sinks
from pybk.core.serialize import sha256_digest

Exited = Callable[[int | None, BaseException | None], None]


@contextlib.contextmanager
def open_container(client: Any, image: Any, *, name: str, progress: Any,
                   entitlements: frozenset[str]) -> Iterator[EngineContainer]:
    """A container on ``image`` (solved by ``client`` with ``progress``), released on exit."""
    solved = client.solve(image, progress=progress)
    container = EngineContainer(client.worker(), solved, name=name, progress=progress,
                                entitlements=entitlements)
    try:
        yield container
    except BaseException as exc:
        container.close(exc)
        raise
    container.close(None)


class EngineContainer(FrontendContainer):
    """One process on a solved image, run by the worker's executor."""

    def __init__(self, worker: Any, image: Any, *, name: str, progress: Any,
                 entitlements: frozenset[str]):
        self.image_config = dict(image.image_config or {})
        self._worker = worker
        self._image = image
        self._name = name
        self._progress = progress
        self._entitlements = entitlements
        self._renderers: list[Any] = []
        self._vertex: Any = None
        self._lease: Any = None
        self._record: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stdin: asyncio.Queue[bytes | None] | None = None

    def _check(self, process: ProcessSpec) -> None:
        if process.network == "host" and "network.host" not in self._entitlements:
            raise BuildError(f"[frontend] {self._name}: network mode host requires the "
                             "'network.host' entitlement (--allow network.host)")
        if process.security == "insecure" and "security.insecure" not in self._entitlements:
            raise BuildError(f"[frontend] {self._name}: security mode insecure requires the "
                             "'security.insecure' entitlement (--allow security.insecure)")

    def start(self, process: ProcessSpec, *, stdout: OutputCallback, stderr: OutputCallback,
              exited: Exited) -> None:
        if self._thread is not None:
            raise BuildError(f"[frontend] {self._name}: its container already runs a process")
        self._check(process)
        self._renderers, sinks = progress_sinks(self._progress)
        vertex = Progress(*sinks, *self._renderers).vertex(
            sha256_digest(f"gateway:{self._name}".encode()), f"[frontend] {self._name}")
        store = self._worker.store
        self._lease = store.lease()
        self._record = store.new_record(self._image.ref.snapshot, lease=self._lease,
                                        description=f"frontend {self._name}")
        self._vertex = vertex
        vertex.start()

        def log_stderr(data: bytes) -> None:
            vertex.log(STREAM_STDERR, data)
            stderr(data)

        root = store.mounts(self._record)
        self._thread = threading.Thread(
            target=self._thread_main, args=(process, root, stdout, log_stderr, exited),
            name="pybk-frontend", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _thread_main(self, process: ProcessSpec, root: Any, stdout: OutputCallback,
                     stderr: OutputCallback, exited: Exited) -> None:
        try:
            code = asyncio.run(self._main(process, root, stdout, stderr))
        except asyncio.CancelledError:
            exited(None, None)
        except BaseException as exc:  # reported to the frontend through ``exited``
            exited(None, exc)
        else:
            exited(code, None)
        finally:
            self._ready.set()

    async def _main(self, process: ProcessSpec, root: Any, stdout: OutputCallback,
                    stderr: OutputCallback) -> int:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._stdin = asyncio.Queue()
        self._ready.set()
        return await self._worker.executor.run(process, root, (), stdout=stdout, stderr=stderr,
                                               stdin=self._stdin_chunks())

    async def _stdin_chunks(self) -> AsyncIterator[bytes]:
        assert self._stdin is not None
        while (chunk := await self._stdin.get()) is not None:
            yield chunk

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process ended
                self._loop.call_soon_threadsafe(fn, *args)

    def write(self, data: bytes) -> None:
        if self._stdin is not None:
            self._call(self._stdin.put_nowait, data)

    def close_stdin(self) -> None:
        if self._stdin is not None:
            self._call(self._stdin.put_nowait, None)

    def kill(self) -> None:
        if self._thread is None:
            return
        if self._task is not None and self._thread.is_alive():
            self._call(self._task.cancel)
        self._thread.join()

    def close(self, failure: BaseException | None) -> None:
        """Stop the process, report the progress line and release the layer."""
        try:
            self.kill()
            if self._vertex is not None:
                if failure is None:
                    self._vertex.done()
                else:
                    text = str(failure)
                    self._vertex.error(text.splitlines()[0] if text else type(failure).__name__)
        finally:
            if self._record is not None:
                self._worker.store.discard(self._record)
            if self._lease is not None:
                self._lease.release()
            for renderer in self._renderers:
                renderer.close()
