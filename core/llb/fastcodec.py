"""Decoding LLB messages without the bookkeeping of error messages.

:func:`pybk.core.llb.ops.decode` checks every value and names the exact place of anything wrong
(``op.exec.mounts[2].dest: expected a string``), which costs a path string per value. The
decoders here, made once per type, make the same checks and build the same objects, but only
raise :class:`Invalid` (or whatever the message class raises); ``decode`` then runs its checked
decoder again for the message. A definition of a few hundred ops decodes about three times
faster.
"""

from __future__ import annotations

import base64
import binascii
import enum
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pybk.core.model import has

__all__ = ["Invalid", "decoder"]

Decoder = Callable[[Any], Any]
_UNION_TYPE = type(int | None)
_DECODERS: dict[Any, Decoder] = {}
_MAKING: set[Any] = set()


class Invalid(Exception):
    """The value does not decode; the checked decoder tells why."""


def decoder(tp: Any, specs: Callable[[type], Sequence[Any]], frozen: type) -> Decoder:
    """The decoder of type ``tp`` and, made with it, those of every type it holds;
    ``specs(cls)`` lists a message class's fields (``name``, ``key``, ``type``, ``oneof``) and
    ``frozen`` is the map type."""
    found = _DECODERS.get(tp)
    if found is None:
        found = _DECODERS[tp] = _make(tp, specs, frozen)
    return found


def _make(tp: Any, specs: Callable[[type], Sequence[Any]], frozen: type) -> Decoder:
    def lazy(inner: Any) -> Decoder:
        """``inner``'s decoder, made now; for a type being made (a message holding itself),
        one that looks it up when first used."""
        if inner not in _MAKING:
            try:
                return decoder(inner, specs, frozen)
            except TypeError:  # not a type LLB messages hold: the checked decoder says so
                return _refuse
        cell: list[Decoder] = []

        def run(raw: Any) -> Any:
            if not cell:
                cell.append(decoder(inner, specs, frozen))
            return cell[0](raw)
        return run

    _MAKING.add(tp)
    try:
        return _make_one(tp, lazy, specs, frozen)
    finally:
        _MAKING.discard(tp)


def _make_one(tp: Any, lazy: Callable[[Any], Decoder], specs: Callable[[type], Sequence[Any]],
              frozen: type) -> Decoder:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, _UNION_TYPE):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"ambiguous union {tp}")
        inner = lazy(members[0])
        return lambda raw: None if raw is None else inner(raw)
    if origin is tuple:
        item = lazy(typing.get_args(tp)[0])

        def sequence(raw: Any) -> tuple[Any, ...]:
            if not isinstance(raw, list):
                raise Invalid
            return tuple([item(v) for v in raw])
        return sequence
    if origin is frozen:
        value = lazy(typing.get_args(tp)[1])

        def mapping(raw: Any) -> Any:
            if not isinstance(raw, dict):
                raise Invalid
            return frozen({k: value(v) for k, v in raw.items()})
        return mapping
    if has(tp):
        return _message(tp, specs, lazy)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        def member(raw: Any) -> Any:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise Invalid
            return tp(raw)
        return member
    primitive = _PRIMITIVES.get(tp)
    if primitive is not None:
        return primitive
    raise TypeError(f"cannot decode {tp!r}")


def _refuse(raw: Any) -> Any:
    raise Invalid


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise Invalid
    return raw


def _integer(raw: Any) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise Invalid
    return raw


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid
    return raw


def _data(raw: Any) -> bytes:
    if not isinstance(raw, str):
        raise Invalid
    try:
        return base64.b64decode(raw.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Invalid from None


_PRIMITIVES: dict[Any, Decoder] = {bool: _boolean, int: _integer, str: _text, bytes: _data}


def _message(cls: type, specs: Callable[[type], Sequence[Any]],
             lazy: Callable[[Any], Decoder]) -> Decoder:
    known: dict[str, tuple[str, bool, Decoder]] = {}
    for spec in specs(cls):
        if spec.oneof is not None:
            for key, member in spec.oneof.items():
                known[key] = (spec.name, True, lazy(member))
        else:
            known[spec.key] = (spec.name, False, lazy(spec.type))

    def message(raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise Invalid
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            field = known.get(key)
            if field is None:
                raise Invalid
            name, oneof, decode = field
            if oneof and name in kwargs:
                raise Invalid
            kwargs[name] = decode(value)
        return cls(**kwargs)
    return message
