"""Running a frontend process and holding the conversation with it.

:func:`converse` drives a :class:`Channel` (lines in, lines out, end of output) with a
:class:`~pybk.frontends.gateway.protocol.GatewayServer`, enforcing the protocol's limits: a
frontend that sends nothing for ``timeout`` seconds, crashes, writes garbage, returns twice or
exits without returning fails the build with a message naming what happened (plus the tail of
its stderr). :class:`ContainerChannel` is the channel of a frontend image run in a container
of the bridge's.
"""

from __future__ import annotations

import abc
import collections
import os
import queue
from collections.abc import Callable
from typing import Any

from pybk.core.errors import UsageError
from pybk.core.interfaces import FrontendContainer, ProcessSpec
from pybk.frontends.gateway.protocol import (
    MAX_LINE,
    GatewayError,
    GatewayServer,
    Returned,
    hello_message,
)

#: seconds a frontend may stay silent while it has the turn (``gateway-timeout`` opt,
#: ``PYBK_GATEWAY_TIMEOUT``)
DEFAULT_TIMEOUT = 300.0
_EOF = object()
_STDERR_TAIL = 2048


def gateway_timeout(opts: dict[str, str] | Any) -> float:
    """The silence limit: frontend opt ``gateway-timeout``, else ``$PYBK_GATEWAY_TIMEOUT``."""
    raw = opts.get("gateway-timeout") or os.environ.get("PYBK_GATEWAY_TIMEOUT") or ""
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UsageError(f"gateway timeout must be a positive number of seconds, not {raw!r}",
                         flag="--opt gateway-timeout")
    return value


class Channel(abc.ABC):
    """A running frontend process seen as lines."""

    @abc.abstractmethod
    def send(self, line: bytes) -> None:
        """Write one line to the process's stdin."""

    @abc.abstractmethod
    def close_input(self) -> None:
        """Close the process's stdin (after ``return`` was answered)."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> bytes | None:
        """The next line of its stdout, None once it exited.

        :raises TimeoutError: nothing within ``timeout`` seconds.
        """

    @abc.abstractmethod
    def exit_code(self) -> int | None:
        """The exit status once :meth:`receive` returned None."""

    @abc.abstractmethod
    def stderr_tail(self) -> str:
        """The last lines of its stderr."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Kill the process if it still runs and release it."""


def converse(server: GatewayServer, channel: Channel, *, timeout: float, name: str) -> Returned:
    """Speak the protocol with ``channel`` until the frontend exits; what it returned.

    :raises GatewayError: on every way a frontend can fail (see the module docstring).
    """
    try:
        channel.send(hello_message())
        closed = False
        while True:
            try:
                line = channel.receive(timeout)
            except TimeoutError:
                when = "after returning, it did not exit" if server.returned else \
                    "it sent nothing"
                raise GatewayError(f"frontend {name} timed out: {when} for {timeout:g} s") from None
            if line is None:
                break
            reply = server.handle(line)
            if reply is not None:
                channel.send(reply)
            if server.returned is not None and not closed:
                channel.close_input()
                closed = True
        code = channel.exit_code()
        if code:
            raise GatewayError(f"frontend {name} exited with code {code}"
                               + ("" if server.returned else " without returning a result"))
        if server.returned is None:
            raise GatewayError(f"frontend {name} exited without returning a result")
        if server.returned.error is not None:
            raise GatewayError(f"frontend {name} failed: {server.returned.error}")
        return server.returned
    except GatewayError as exc:
        tail = channel.stderr_tail()
        if tail:
            raise GatewayError(f"{exc}\nfrontend stderr (last lines):\n{tail}") from None
        raise
    finally:
        channel.stop()


class LineSplitter:
    """Cuts a byte stream into lines for a channel's queue; over-long lines become errors."""

    def __init__(self, put: Callable[[Any], None], limit: int = MAX_LINE):
        self._put = put
        self._limit = limit
        self._buffer = bytearray()
        self._failed = False

    def feed(self, chunk: bytes) -> None:
        if self._failed:
            return
        self._buffer += chunk
        while (end := self._buffer.find(b"\n")) >= 0:
            self._put(bytes(self._buffer[:end + 1]))
            del self._buffer[:end + 1]
        if len(self._buffer) > self._limit:
            self._failed = True
            self._buffer.clear()
            self._put(GatewayError(f"frontend wrote a line longer than {self._limit} bytes"))

    def finish(self) -> None:
        """End of output: a last line without a newline still counts."""
        if self._buffer and not self._failed:
            self._put(bytes(self._buffer))
        self._buffer.clear()


class QueueChannel(Channel):
    """The line queue, stderr tail and end-of-output bookkeeping every channel shares."""

    def __init__(self, on_stderr: Callable[[bytes], None] | None = None):
        self._lines: queue.Queue[Any] = queue.Queue()
        self._splitter = LineSplitter(self._lines.put)
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._on_stderr = on_stderr
        self._exit: int | None = None
        self._ended = False

    def _stdout(self, chunk: bytes) -> None:
        self._splitter.feed(chunk)

    def _stderr(self, chunk: bytes) -> None:
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size > _STDERR_TAIL and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft())
        if self._on_stderr is not None:
            self._on_stderr(chunk)

    def _finished(self, code: int | None, failure: BaseException | None = None) -> None:
        self._splitter.finish()
        self._exit = code
        if failure is not None:
            self._lines.put(failure)
        self._lines.put(_EOF)

    def receive(self, timeout: float) -> bytes | None:
        if self._ended:
            return None
        try:
            item = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if item is _EOF:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def exit_code(self) -> int | None:
        return self._exit

    def stderr_tail(self) -> str:
        text = b"".join(self._tail).decode("utf-8", "replace")
        lines = text.splitlines()[-20:]
        return "\n".join(lines)


class ContainerChannel(QueueChannel):
    """A frontend process in a container the bridge made
    (:meth:`~pybk.core.interfaces.FrontendBridge.new_container`)."""

    def __init__(self, container: FrontendContainer, process: ProcessSpec):
        super().__init__()
        self._container = container
        self._process = process

    def start(self) -> ContainerChannel:
        self._container.start(self._process, stdout=self._stdout, stderr=self._stderr,
                              exited=self._exited)
        return self

    def _exited(self, code: int | None, failure: BaseException | None) -> None:
        self._finished(code, None if failure is None
                       else GatewayError(f"cannot run the frontend: {failure}"))

    def send(self, line: bytes) -> None:
        self._container.write(line)

    def close_input(self) -> None:
        self._container.close_stdin()

    def stop(self) -> None:
        self._container.kill()
