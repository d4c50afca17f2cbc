"""Frames: the unit of every remote session (``control.proto``'s ``Frame`` message).

A frame is a JSON header (a dict whose ``"t"`` names its kind) and a data payload. On the gRPC
stream each frame is one ``Frame`` message, encoded here in protobuf's wire format (two
length-delimited fields, 1 = header and 2 = data; unknown fields are skipped, as protobuf
does). Between pybkd's gRPC listener and the process running the command, the same message
bytes travel over a unix socket, each preceded by its length (4 bytes, big-endian), so the
listener relays them without decoding.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any

import orjson

#: the largest frame either side accepts (a file chunk is at most CHUNK bytes)
MAX_FRAME = 32 << 20
#: how many bytes of a file or an output travel in one frame
CHUNK = 1 << 20
#: the gRPC method of the control API (control.proto)
SESSION_METHOD = "/pybk.control.v1.Control/Session"
#: the control API's unary method answering how busy the daemon is
LOAD_METHOD = "/pybk.control.v1.Control/Load"
PROTOCOL_VERSION = 1


class FrameError(Exception):
    """A frame that cannot be decoded (or a connection that broke mid-frame)."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise FrameError("truncated varint in a frame")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode(header: dict[str, Any], data: bytes = b"") -> bytes:
    """The ``Frame`` message for ``header`` and ``data`` (empty fields left out, as proto3
    does)."""
    try:
        head = orjson.dumps(header)
    except TypeError:  # a file name that is not UTF-8 (a lone surrogate): JSON escapes it
        head = json.dumps(header, ensure_ascii=True).encode()
    out = b"\x0a" + _varint(len(head)) + head
    if data:
        out += b"\x12" + _varint(len(data)) + bytes(data)
    return out


def decode(message: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header, data)`` of a ``Frame`` message."""
    header, data, pos = b"", b"", 0
    view = memoryview(message)
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            size, pos = _read_varint(message, pos)
            if pos + size > len(message):
                raise FrameError("truncated field in a frame")
            value = view[pos:pos + size]
            pos += size
            if field == 1:
                header = bytes(value)
            elif field == 2:
                data = bytes(value)
        elif wire == 0:
            _, pos = _read_varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise FrameError(f"unsupported wire type {wire} in a frame")
    try:
        parsed = orjson.loads(header) if header else {}
    except orjson.JSONDecodeError:
        try:  # escaped lone surrogates (file names that are not UTF-8), which orjson refuses
            parsed = json.loads(header)
        except ValueError as exc:
            raise FrameError(f"a frame's header is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise FrameError("a frame's header is not a JSON object")
    return parsed, data


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            if left == size:
                return None
            raise FrameError("the connection closed in the middle of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(sock: socket.socket) -> bytes | None:
    """The next length-prefixed message on ``sock`` (None at its end)."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size} bytes is over the limit of {MAX_FRAME}")
    body = _recv_exact(sock, size)
    if body is None:
        raise FrameError("the connection closed in the middle of a frame")
    return body


def prefixed(message: bytes) -> bytes:
    return len(message).to_bytes(4, "big") + message


class FrameSocket:
    """Frames over a unix socket; :meth:`send` may be called from any thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0

    def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        message = prefixed(encode(header, data))
        with self._lock:
            self.sock.sendall(message)
            self.bytes_sent += len(data)

    def recv(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame, None once the other side is gone."""
        try:
            message = read_message(self.sock)
        except OSError:
            return None
        if message is None:
            return None
        header, data = decode(message)
        self.bytes_received += len(data)
        return header, data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
