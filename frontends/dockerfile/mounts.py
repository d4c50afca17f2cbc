"""``RUN --mount`` values (BuildKit ``instructions/commands_runmount.go``): Go's CSV record, the
keys each mount type accepts, and their checks."""

from __future__ import annotations

from collections.abc import Callable

from pybk.core.didyoumean import did_you_mean
from pybk.core.model import Model
from pybk.frontends.dockerfile.errors import InstructionError
from pybk.frontends.dockerfile.values import go_parse_bool, ram_in_bytes


class Mount(Model):
    """One ``RUN --mount`` (BuildKit ``instructions.Mount``)."""

    type: str = "bind"
    from_: str = ""
    source: str = ""
    target: str = ""
    read_only: bool = True
    required: bool = False
    size_limit: int = 0
    cache_id: str = ""
    sharing: str = ""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None


def _go_csv_record(text: str) -> list[str]:
    """One record of Go's ``encoding/csv`` reader (comma separator, strict quotes)."""
    if text == "":
        raise ValueError("EOF")
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            i += 1
            field: list[str] = []
            while True:
                quote = text.find('"', i)
                if quote == -1:
                    raise ValueError(
                        f'parse error on line 1, column {n + 1}: extraneous or missing " in quoted-field'
                    )
                field.append(text[i:quote])
                i = quote + 1
                if i < n and text[i] == '"':
                    field.append('"')
                    i += 1
                    continue
                if i < n and text[i] != ",":
                    raise ValueError(
                        f'parse error on line 1, column {i + 1}: extraneous or missing " in quoted-field'
                    )
                break
            fields.append("".join(field))
        else:
            comma = text.find(",", i)
            end = n if comma == -1 else comma
            field_text = text[i:end]
            if '"' in field_text:
                column = i + field_text.index('"') + 1
                raise ValueError(
                    f'parse error on line 1, column {column}: bare " in non-quoted-field'
                )
            fields.append(field_text)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma
        if i == n:
            fields.append("")
            return fields

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING_MODES = ("shared", "private", "locked")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size", "mode",
    "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)  # fmt: skip


def _parse_uint(value: str, base: int, what: str) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(ch not in digits for ch in value) or int(value, base) > 0xFFFFFFFF:
        raise InstructionError(f"invalid value {value} for {what}")
    return int(value, base)


def _only_for(values: dict[str, object], key: str, *types: str) -> None:
    if values["type"] not in types:
        raise InstructionError(f"unexpected key '{key}' for mount type '{values['type']}'")


def _converted(convert: Callable[[str], object], key: str, value: str) -> object:
    try:
        return convert(value)
    except ValueError:
        raise InstructionError(f"invalid value for {key}: {value}") from None


# One setter per key of ``key=value`` (``values`` holds Mount's fields by name; ``read_only``
# is present only when given explicitly).


def _set_type(values: dict[str, object], key: str, value: str) -> None:
    if value.lower() not in MOUNT_TYPES:
        raise InstructionError(
            f'unsupported mount type "{value}"' + did_you_mean(value, MOUNT_TYPES)
        )
    values["type"] = value.lower()


def _setter(field: str) -> Callable[[dict[str, object], str, str], None]:
    def set_value(values: dict[str, object], key: str, value: str) -> None:
        values[field] = value

    return set_value


def _set_read_only(values: dict[str, object], key: str, value: str) -> None:
    flag = _converted(go_parse_bool, key, value)
    values["read_only"] = flag if key in ("readonly", "ro") else not flag


def _set_required(values: dict[str, object], key: str, value: str) -> None:
    _only_for(values, key, "secret", "ssh")
    values["required"] = _converted(go_parse_bool, key, value)


def _set_size(values: dict[str, object], key: str, value: str) -> None:
    _only_for(values, key, "tmpfs")
    values["size_limit"] = _converted(ram_in_bytes, key, value)


def _set_sharing(values: dict[str, object], key: str, value: str) -> None:
    _only_for(values, key, "cache")
    if value.lower() not in _SHARING_MODES:
        raise InstructionError(f'unsupported sharing value "{value}"')
    values["sharing"] = value.lower()


def _set_mode(values: dict[str, object], key: str, value: str) -> None:
    values["mode"] = _parse_uint(value, 8, "mode")


def _set_id(values: dict[str, object], key: str, value: str) -> None:
    values[key] = _parse_uint(value, 10, key)


_SETTERS: dict[str, Callable[[dict[str, object], str, str], None]] = {
    "type": _set_type,
    "from": _setter("from_"),
    "source": _setter("source"),
    "src": _setter("source"),
    "target": _setter("target"),
    "dst": _setter("target"),
    "destination": _setter("target"),
    "readonly": _set_read_only,
    "ro": _set_read_only,
    "readwrite": _set_read_only,
    "rw": _set_read_only,
    "required": _set_required,
    "size": _set_size,
    "id": _setter("cache_id"),
    "sharing": _set_sharing,
    "mode": _set_mode,
    "uid": _set_id,
    "gid": _set_id,
    "env": _setter("env"),
}


def _bare_key(values: dict[str, object], key: str, field: str) -> None:
    """A key without ``=value``: ``ro``/``readonly``, ``rw``/``readwrite`` or ``required``."""
    if key in ("readonly", "ro"):
        values["read_only"] = True
    elif key in ("readwrite", "rw"):
        values["read_only"] = False
    elif key == "required":
        _only_for(values, key, "secret", "ssh")
        values["required"] = True
    else:
        raise InstructionError(f"invalid field '{field}' must be a key=value pair")


def _check_unexpanded(fields: list[str]) -> None:
    """What can be checked before expansion: ``from`` takes no variables."""
    for field in fields:
        key, has_value, value = field.partition("=")
        if has_value and key.lower() == "from":
            dollar = value.find("$")
            if dollar != -1 and dollar != len(value) - 1:
                raise InstructionError(
                    f"'{key.lower()}' doesn't support variable expansion, define alias stage "
                    "instead"
                )


def _check_mount(values: dict[str, object]) -> None:
    """The rules across keys, once all are read."""
    mount_type = values["type"]
    if mount_type not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if values.get(key) is not None:
                raise InstructionError(f'{key} not allowed for "{mount_type}" type mounts')
    if values.get("sharing") and mount_type != "cache":
        raise InstructionError(f"invalid cache sharing set for {mount_type} mount")
    if mount_type == "secret":
        if values.get("from_"):
            raise InstructionError("secret mount should not have a from")
        if not any(values.get(key) for key in ("source", "target", "cache_id")) and (
            values.get("env") is None
        ):
            raise InstructionError("one of source, target required")
        if values.get("source") and values.get("cache_id"):
            raise InstructionError("both source and id can't be set")


def parse_mount(spec: str, expand: Callable[[str], str] | None) -> Mount | None:
    """Parse one ``--mount`` value (BuildKit ``parseMount``).

    With ``expand=None`` only what can be checked before expansion is checked (CSV syntax,
    ``from`` without variables) and None is returned; with an expander every key and value is
    validated and the :class:`Mount` is returned.
    """
    try:
        fields = _go_csv_record(spec)
    except ValueError as err:
        raise InstructionError(f"failed to parse csv mounts: {err}") from None
    if expand is None:
        _check_unexpanded(fields)
        return None
    values: dict[str, object] = {"type": "bind"}
    for field in fields:
        key, has_value, value = field.partition("=")
        key = key.lower()
        if not has_value:
            _bare_key(values, key, field)
            continue
        setter = _SETTERS.get(key)
        if setter is None:
            # the value is expanded first, as BuildKit does, so its errors come first
            expand(value)
            raise InstructionError(
                f"unexpected key '{key}' in '{field}'" + did_you_mean(key, _MOUNT_KEYS)
            )
        setter(values, key, value if key == "from" else expand(value))
    _check_mount(values)
    values.setdefault("read_only", values["type"] not in ("cache", "tmpfs"))
    return Mount(**values)  # type: ignore[arg-type]
