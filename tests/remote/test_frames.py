"""The control API's ``Frame`` message: protobuf's wire format, as ``control.proto`` declares
it (pybk encodes it itself instead of generating code for two bytes fields)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pybk.core.remote import frames

PROTO = Path(frames.__file__).with_name("control.proto").read_text()


def test_the_proto_declares_what_the_code_speaks():
    assert "package pybk.control.v1;" in PROTO
    message = re.search(r"message Frame \{(.*?)\}", PROTO, re.S).group(1)
    assert re.findall(r"bytes (\w+) = (\d+);", message) == [("header", "1"), ("data", "2")]
    service = re.search(r"service (\w+) \{(.*?)\}", PROTO, re.S)
    method = re.search(r"rpc (\w+)\(stream Frame\) returns \(stream Frame\);", service.group(2))
    assert f"/pybk.control.v1.{service.group(1)}/{method.group(1)}" == frames.SESSION_METHOD


def test_encoding_is_protobufs():
    # field 1 (header), wire type 2: tag 0x0a, varint length, bytes; then field 2 (data): 0x12
    assert frames.encode({"t": "x"}, b"ab") == b'\x0a\x09{"t":"x"}\x12\x02ab'
    assert frames.encode({"t": "x"}) == b'\x0a\x09{"t":"x"}'  # proto3 leaves empty bytes out
    big = b"z" * 300  # a two-byte varint length
    assert frames.encode({}, big)[:7] == b'\x0a\x02{}\x12\xac\x02'


def test_decoding_skips_unknown_fields_and_refuses_garbage():
    known = frames.encode({"t": "y", "id": 3}, b"data")
    extra = b"\x18\x96\x01" + b"\x25abcd" + b"\x21" + b"12345678" + b"\x2a\x01q"  # fields 3-5
    assert frames.decode(extra + known) == ({"t": "y", "id": 3}, b"data")
    for bad in (b"\x0a\x05{}", b"\x0a\x02[]", b"\x0b", b"\x0a\x80"):
        with pytest.raises(frames.FrameError):
            frames.decode(bad)


def test_names_that_are_not_utf8_survive():
    header = {"t": "chunk", "rel": "caf\udce9.txt"}
    assert frames.decode(frames.encode(header, b"1")) == (header, b"1")
