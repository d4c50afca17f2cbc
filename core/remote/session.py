"""The daemon's end of a remote session: calls into the client, and what the engine reads
through them.

A :class:`Session` runs in the process serving one remote command. A reader thread takes the
client's frames: replies to the daemon's calls go to the caller waiting for them, ``interrupt``
(the client's Ctrl-C) and the end of the stream (the client went away) become SIGINT for this
process, which cancels the build as a Ctrl-C does in the embedded command.

:class:`SessionDir` is a client directory as the engine sees it
(:class:`pybk.core.engine.inputs.ClientDir`): syncing asks the client for the stats of what the
source selects (the client applies the patterns, so excluded files never cross), then for the
changed files only (:mod:`pybk.core.remote.filesync`). :class:`SessionSecrets` fetches a secret
when a step needs it and keeps it in memory only. :class:`SSHForwarder` offers a unix socket
per ``--ssh`` id whose connections are relayed to the client's agent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.remote.frames import FrameSocket

_LOST = ({"t": "lost"}, b"")


class SessionLost(BuildError):
    """The client went away while the daemon waited for it."""


class Session:
    """Calls from the daemon into the client over one frame connection."""

    def __init__(self, frames: FrameSocket, *, on_lost: Callable[[], None] | None = None):
        self.frames = frames
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue] = {}
        self._channels: dict[int, Callable[[dict[str, Any], bytes], None]] = {}
        self._lock = threading.Lock()
        self.lost = False
        self.finished = False
        self._on_lost = on_lost or _interrupt_self
        self._reader = threading.Thread(target=self._read, name="pybk-session", daemon=True)

    def start(self) -> None:
        self._reader.start()

    # -- reading ---------------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                frame = self.frames.recv()
            except Exception:  # a malformed frame ends the session like a disconnect
                frame = None
            if frame is None:
                break
            header, data = frame
            kind = header.get("t")
            if kind in ("reply", "chunk"):
                pending = self._pending.get(header.get("id"))  # type: ignore[arg-type]
                if pending is not None:
                    pending.put((header, data))
            elif kind in ("ssh-data", "ssh-close"):
                channel = self._channels.get(header.get("id"))  # type: ignore[arg-type]
                if channel is not None:
                    channel(header, data)
            elif kind == "interrupt":
                os.kill(os.getpid(), signal.SIGINT)
        with self._lock:
            self.lost = True
            pending = list(self._pending.values())
            channels = list(self._channels.values())
        for waiting in pending:
            waiting.put(_LOST)
        for channel in channels:
            channel({"t": "ssh-close"}, b"")
        if not self.finished:
            self._on_lost()

    # -- calling ---------------------------------------------------------------------------

    def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        try:
            self.frames.send(header, data)
        except OSError:
            raise SessionLost("the client went away") from None

    def _open(self, op: str, data: bytes, args: dict[str, Any]) -> tuple[int, queue.Queue]:
        call_id = next(self._ids)
        waiting: queue.Queue = queue.Queue()
        with self._lock:
            if self.lost:
                raise SessionLost("the client went away")
            self._pending[call_id] = waiting
        self.send({"t": "call", "id": call_id, "op": op, **args}, data)
        return call_id, waiting

    def call(self, op: str, data: bytes = b"", **args: Any) -> tuple[dict[str, Any], bytes]:
        # ``args`` become header fields beside ``t``, ``id`` and ``op`` (never those names)
        """Ask the client; its reply ``(header, data)``. An error reply raises ``OSError``
        (with the client's errno) or :class:`BuildError`."""
        call_id, waiting = self._open(op, data, args)
        try:
            header, data = waiting.get()
        finally:
            self._pending.pop(call_id, None)
        _raise_for(header)
        return header, data

    def stream(self, op: str, **args: Any) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Ask the client for a stream: its ``chunk`` frames, until its ``reply``."""
        call_id, waiting = self._open(op, b"", args)
        try:
            while True:
                header, data = waiting.get()
                if header.get("t") == "chunk":
                    yield header, data
                    continue
                _raise_for(header)
                return
        finally:
            self._pending.pop(call_id, None)

    def channel(self, on_frame: Callable[[dict[str, Any], bytes], None]) -> int:
        """A new channel id whose ``ssh-data``/``ssh-close`` frames go to ``on_frame``."""
        channel_id = next(self._ids)
        with self._lock:
            if self.lost:
                raise SessionLost("the client went away")
            self._channels[channel_id] = on_frame
        return channel_id

    def close_channel(self, channel_id: int) -> None:
        self._channels.pop(channel_id, None)


def _interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def _raise_for(header: dict[str, Any]) -> None:
    if header.get("t") == "lost":
        raise SessionLost("the client went away")
    error = header.get("error")
    if error is None:
        return
    if header.get("errno"):
        raise OSError(int(header["errno"]), error)
    raise BuildError(f"client: {error}")


class SessionDir:
    """A directory of the client (:class:`pybk.core.engine.inputs.ClientDir`), named by the
    client's path, which the daemon only ever passes back to the client."""

    def __init__(self, session: Session, path: str, key: str,
                 count: Callable[[int], None] | None = None):
        self.session = session
        self.path = path
        self.key = key
        self._count = count

    def __str__(self) -> str:
        return f"client:{self.key}"

    def sync(self, dest: str, *, include: Sequence[str], exclude: Sequence[str],
             follow: Sequence[str], state_file: str,
             on_copied: Callable[[str], None] | None = None) -> Any:
        from pybk.core.remote.filesync import apply_tree

        header, _ = self.session.call("stat", path=self.path, include=list(include),
                                      exclude=list(exclude), follow=list(follow))
        listing = header.get("listing")

        def fetch(rels: list[str]) -> Iterator[tuple[str, bytes]]:
            if not rels:
                return
            for chunk, data in self.session.stream("read", path=self.path, listing=listing,
                                                   rels=rels):
                yield chunk["rel"], data

        stats = apply_tree(dest, header.get("entries", []), fetch, state_file=state_file,
                           on_copied=on_copied)
        if self._count is not None:
            self._count(stats.bytes_copied)
        return stats

    def read_file(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        _, data = self.session.call("readfile", path=self.path, rel=path, offset=offset,
                                    length=length)
        if self._count is not None:
            self._count(len(data))
        return data

    def read_dir(self, path: str) -> list[str]:
        header, _ = self.session.call("readdir", path=self.path, rel=path)
        return sorted(header.get("names", []))


class SessionSecrets(Mapping[str, bytes]):
    """The build's secrets, asked from the client the first time a step needs each; kept in
    this process's memory only (never on disk, never logged)."""

    def __init__(self, session: Session, ids: Sequence[str]):
        self.session = session
        self._ids = list(ids)
        self._values: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> bytes:
        if key not in self._ids:
            raise KeyError(key)
        if key not in self._values:
            _, self._values[key] = self.session.call("secret", secret=key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def fetched(self) -> dict[str, bytes]:
        """The secrets asked for so far (what the build's history record redacts: one never
        fetched was never in a step)."""
        return dict(self._values)

    def __repr__(self) -> str:
        return f"SessionSecrets({self._ids!r})"


class SSHForwarder:
    """A unix socket per ``--ssh`` id in a private directory; each connection to one is
    relayed, through the session, to the client's agent for that id."""

    def __init__(self, session: Session, directory: str):
        self.session = session
        self.directory = directory
        self._listeners: list[socket.socket] = []
        self._closing = False

    def socket_for(self, ssh_id: str) -> str:
        path = os.path.join(self.directory, f"ssh-{len(self._listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(16)
        self._listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener, ssh_id), daemon=True,
                         name="pybk-ssh").start()
        return path

    def _accept(self, listener: socket.socket, ssh_id: str) -> None:
        while not self._closing:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn, ssh_id), daemon=True).start()

    def _relay(self, conn: socket.socket, ssh_id: str) -> None:
        def on_frame(header: dict[str, Any], data: bytes) -> None:
            with contextlib.suppress(OSError):
                if header.get("t") == "ssh-data" and data:
                    conn.sendall(data)
                else:
                    conn.shutdown(socket.SHUT_WR)

        try:
            channel = self.session.channel(on_frame)
        except SessionLost:
            conn.close()
            return
        try:
            self.session.send({"t": "ssh-open", "id": channel, "ssh": ssh_id})
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.session.send({"t": "ssh-data", "id": channel}, data)
            self.session.send({"t": "ssh-close", "id": channel})
        except (OSError, SessionLost):
            pass
        finally:
            self.session.close_channel(channel)
            conn.close()

    def close(self) -> None:
        self._closing = True
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
