"""Go's value parsers as BuildKit and moby use them on Dockerfile values: booleans, durations,
signals, chmod modes and RAM sizes, with Go's error messages."""

from __future__ import annotations

import re

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_parse_bool(value: str) -> bool:
    """Go ``strconv.ParseBool``; raises ValueError."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{value}": invalid syntax')


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def go_parse_duration(text: str) -> int:
    """Go ``time.ParseDuration`` → nanoseconds; raises ValueError with Go's message."""
    original = text
    quoted = '"' + original + '"'
    sign = 1
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        scale = _DURATION_UNITS.get(unit)
        if scale is None:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale / (10 ** len(frac))
        pos = match.end()
    if total > 2**63 - 1:
        raise ValueError(f"time: invalid duration {quoted}")
    return sign * int(total)


_SIGNALS = {
    "ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1,
    "ILL": 4, "INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27,
    "PWR": 30, "QUIT": 3, "SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15,
    "TRAP": 5, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12,
    "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25, "RTMIN": 34, "RTMAX": 64,
}  # fmt: skip
_SIGNALS.update({f"RTMIN+{i}": 34 + i for i in range(1, 16)})
_SIGNALS.update({f"RTMAX-{i}": 64 - i for i in range(1, 15)})


def parse_signal(value: str) -> int:
    """moby ``signal.ParseSignal``: a number or a name with or without ``SIG``."""
    if re.fullmatch(r"[+-]?[0-9]+", value):
        number = int(value)
        if number == 0:
            raise ValueError(f"invalid signal: {value}")
        return number
    upper = value.upper()
    number = _SIGNALS.get(upper[3:] if upper.startswith("SIG") else upper)
    if number is None:
        raise ValueError(f"invalid signal: {value}")
    return number


_SYMBOLIC_CLAUSE = re.compile(r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+")


def parse_chmod(value: str) -> int | str:
    """An octal mode (``755``) as int, or a validated symbolic mode (``u+x,go=rX``) as str."""
    if re.fullmatch(r"[0-7]+", value):
        mode = int(value, 8)
        if mode <= 0o7777:
            return mode
    elif value and all(_SYMBOLIC_CLAUSE.fullmatch(part) for part in value.split(",")):
        return value
    raise ValueError(f"invalid chmod parameter: {value!r}")


_RAM_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")


def ram_in_bytes(value: str) -> int:
    """go-units ``RAMInBytes`` (binary multipliers): ``64m`` → 67108864."""
    match = _RAM_SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid size: '{value}'")
    number = float(match.group(1))
    power = " kmgtp".index((match.group(2) or " ").lower())
    return int(number * 1024**power)


_PORT = re.compile(r"[0-9]+")


def _port_range(text: str) -> tuple[int, int]:
    """``8000`` or ``8000-8002`` as Go's ``ParseUint(…, 10, 16)`` reads each end; ValueError."""
    if not text:
        raise ValueError("empty string specified for ports")
    parts = text.split("-")
    if len(parts) > 2:
        raise ValueError(f"invalid port range format: {text}")
    numbers = []
    for part in parts:
        if not _PORT.fullmatch(part) or int(part) > 65535:
            raise ValueError(f"invalid port: {part!r}")
        numbers.append(int(part))
    start, end = numbers[0], numbers[-1]
    if end < start:
        raise ValueError(f"invalid range specified for port: {text}")
    return start, end


def expose_ports(spec: str) -> list[str]:
    """The ``ExposedPorts`` keys of one EXPOSE word, as BuildKit's ``nat.ParsePortSpecs`` makes
    them: ``[ip:][hostPort:]port[-end][/proto]`` → ``["8000/tcp", "8001/tcp", …]``, one per
    port of a range, the protocol lowercased (``tcp`` when none is given; ``udp``, ``sctp``).
    ValueError with BuildKit's message for a spec it refuses."""
    import ipaddress

    parts = spec.split(":")
    ip = ":".join(parts[:-2])
    host_port = parts[-2] if len(parts) > 1 else ""
    port, _, proto = parts[-1].partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto: {proto}")
    if ip:
        try:
            ipaddress.ip_address(ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip)
        except ValueError:
            raise ValueError(f"invalid IP address: {ip}") from None
    if not port:
        raise ValueError(f"no port specified: {spec}<empty>")
    try:
        start, end = _port_range(port)
    except ValueError:
        raise ValueError(f"invalid containerPort: {port}") from None
    if host_port:
        try:
            host_start, host_end = _port_range(host_port)
        except ValueError:
            raise ValueError(f"invalid hostPort: {host_port}") from None
        if end - start != host_end - host_start and end != start:
            raise ValueError("invalid ranges specified for container and host Ports: "
                             f"{port} and {host_port}")
    return [f"{number}/{proto}" for number in range(start, end + 1)]
