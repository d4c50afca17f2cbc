"""Sizes and durations written the way BuildKit users write them.

- Sizes follow docker/go-units ``RAMInBytes``: a number with an optional binary unit, so
  ``"512MB"`` is 512 MiB (``k``/``m``/``g``/``t``/``p``, each optionally followed by ``b`` or
  ``ib``, case-insensitive, one optional space). A bare integer is bytes.
- Disk sizes may also be a percentage of the disk (``"10%"``); BuildKit turns it into bytes as
  ``(total * pct / 100 / 2**30 + 1) * 1e9``, i.e. rounded up to whole decimal gigabytes.
- Durations are Go duration strings (``"48h"``, ``"1h30m"``, ``"300ms"``; units ns, us, µs,
  ms, s, m, h — Go has no days) or an integer number of seconds.
"""

from __future__ import annotations

import re

from pybk.core.model import Model

__all__ = [
    "DEFAULT_DISK_CAP",
    "DiskSpace",
    "Seconds",
    "format_duration",
    "parse_duration",
    "parse_size",
]

#: bytes BuildKit assumes for a percentage when the disk size cannot be read (2 GB)
DEFAULT_DISK_CAP = 2_000_000_000

_BINARY = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_NUMBER = re.compile(r"[0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")


class Seconds(float):
    """A duration in seconds, as structured from a Go duration string or an integer."""

    def __repr__(self) -> str:
        return f"Seconds({float(self)!r})"


def _shown(value: object) -> str:
    """``boolean true``, ``float 1.5``, ``array`` — a value as a TOML user would name it."""
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    if isinstance(value, (int, float, str)):
        return f"{kind} {value!r}"
    return kind


def _ram_in_bytes(text: str) -> int:
    """docker/go-units RAMInBytes, reimplemented: binary multiples, optional b/ib suffix."""
    if text == "":
        raise ValueError("invalid size: empty string")
    sep = max(text.rfind(c) for c in "0123456789. ")
    if sep < 0:
        raise ValueError(f'invalid size "{text}": no number')
    if text[sep] == " ":
        number, suffix = text[:sep], text[sep + 1:]
    else:
        number, suffix = text[: sep + 1], text[sep + 1:]
    if not number or _NUMBER.fullmatch(number) is None or not any(c.isdigit() for c in number):
        raise ValueError(f'invalid size "{text}"')
    amount = float(number)
    lowered = suffix.lower()
    if lowered in ("", "b"):
        return int(amount)
    if len(lowered) > 3 or lowered[0] not in _BINARY or lowered[1:] not in ("", "b", "ib"):
        raise ValueError(f'invalid size "{text}": unknown unit "{suffix}" '
                         "(use B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB or P/PB/PiB)")
    return int(amount * _BINARY[lowered[0]])


class DiskSpace(Model):
    """A disk size: absolute ``bytes``, or a ``percentage`` of the disk holding the store.

    Both zero means unset (BuildKit's zero value).
    """

    bytes: int = 0
    percentage: int = 0

    @classmethod
    def parse(cls, value: object) -> DiskSpace:
        """Read an integer (bytes), ``"512MB"`` or ``"10%"``; raise ValueError otherwise."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"invalid disk size: expected an integer or a string like "
                             f'"512MB" or "10%", got {_shown(value)}')
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError(f"invalid disk size {value}: must not be negative")
            return cls(bytes=int(value))
        if value == "":
            return cls()
        if value.endswith("%"):
            number = value[:-1]
            if _INTEGER.fullmatch(number) is None:
                raise ValueError(f'invalid disk size "{value}": a percentage must be a whole '
                                 "number")
            pct = int(number)
            if not 0 <= pct <= 100:
                raise ValueError(f'invalid disk size "{value}": a percentage must be between '
                                 "0 and 100")
            return cls(percentage=pct)
        if value.startswith("-"):
            raise ValueError(f'invalid disk size "{value}": must not be negative')
        return cls(bytes=_ram_in_bytes(value))

    @property
    def is_unset(self) -> bool:
        return self.bytes == 0 and self.percentage == 0

    def as_bytes(self, disk_total: int | None) -> int:
        """Bytes on a disk of ``disk_total`` bytes (BuildKit's 2 GB when it is unknown)."""
        if self.bytes:
            return self.bytes
        if not self.percentage:
            return 0
        if not disk_total:
            return DEFAULT_DISK_CAP
        share = disk_total * self.percentage // 100
        return (share // (1 << 30) + 1) * 1_000_000_000

    def to_json(self) -> int | str:
        """``"N%"`` for a percentage, else the byte count."""
        return f"{self.percentage}%" if self.percentage else self.bytes


def parse_size(value: object, *, disk_total: int | None = None) -> int:
    """Bytes for ``value`` (int bytes, ``"512MB"``, ``"1GiB"``, or ``"10%"`` of ``disk_total``).

    Raises ValueError with a message naming the bad value.
    """
    space = DiskSpace.parse(value)
    if space.percentage and disk_total is None:
        raise ValueError(f'size "{value}" is a percentage of the disk, but the disk size is '
                         "not known here")
    return space.as_bytes(disk_total)


# Go's time.ParseDuration units, in nanoseconds
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # µ (micro sign)
    "\u03bcs": 1_000,  # μ (Greek mu)
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([a-zµμ]*)")


def _go_duration_ns(text: str) -> int | None:
    """Nanoseconds for a Go duration string (no sign), or None when it is not one."""
    if text == "0":
        return 0
    if not text:
        return None
    total, pos = 0, 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            return None
        if unit not in _DURATION_UNITS:
            return None
        scale = _DURATION_UNITS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        pos = m.end()
    return total


def parse_duration(value: object) -> Seconds:
    """Seconds for a Go duration string (``"48h"``, ``"1h30m"``, ``"300ms"``) or an integer.

    Like BuildKit, an integer (or a string of digits) is a number of seconds, and an empty string
    is zero. Raises ValueError naming the value; days are not a Go unit and are rejected with a
    hint.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f'invalid duration: expected a string like "48h" or an integer number '
                         f"of seconds, got {_shown(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid duration {value}: must not be negative")
        return Seconds(value)
    if value == "":
        return Seconds(0)
    text = value
    sign = 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    ns = _go_duration_ns(text)
    if ns is None and _INTEGER.fullmatch(text):
        ns = int(text) * 1_000_000_000
    if ns is None:
        hint = ""
        if re.fullmatch(r"[0-9.]+[dw]", text):
            hint = ' (Go durations have no days or weeks; write hours, e.g. "1440h" for 60 days)'
        raise ValueError(f'invalid duration "{value}"{hint}')
    if sign < 0 and ns:
        raise ValueError(f'invalid duration "{value}": must not be negative')
    return Seconds(ns / 1_000_000_000)


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``48h0m0s``, ``1m30s``, ``300ms``, ``0s``."""
    ns = round(seconds * 1_000_000_000)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, scale in (("ns", 1), ("µs", 1_000), ("ms", 1_000_000)):
            if ns < scale * 1_000:
                return sign + _trim(ns, scale) + unit
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    text = _trim(rest, 1_000_000_000) + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return sign + text


def _trim(amount: int, scale: int) -> str:
    whole, frac = divmod(amount, scale)
    if not frac:
        return str(whole)
    digits = str(frac).rjust(len(str(scale)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def format_bytes(size: int) -> str:
    """Decimal units with two decimals (``1.23MB``, as ``buildctl du`` prints); below 1000,
    whole bytes (``512B``)."""
    if size < 1000:
        return f"{size}B"
    value, unit = float(size), 0
    while value >= 1000 and unit < len(_BYTE_UNITS) - 1:
        value /= 1000
        unit += 1
    return f"{value:.2f}{_BYTE_UNITS[unit]}"
