"""The one cattrs converter: TOML tables and CLI CSV attrs → attrs classes, strictly.

Fields keep Python snake_case names; ``setting(key=...)`` records BuildKit's spelling when it
differs (``maxUsedSpace``, ``insecure-entitlements``, ``max-parallelism``, ``ignore-error``).
Structuring is strict (a string is never an integer, a table never a list), unknown keys are
errors with a "did you mean", and every problem of a document is collected with its key path
(``worker.oci.gcpolicy[1].keepDuration: invalid duration "48x"``) instead of stopping at the
first one.

Plugin ``Options`` classes use the same machinery through :func:`structure_options`, which first
turns the all-string CLI attrs into the field types (``"true"`` → bool, ``"a;b"`` → list …).
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pybk.core.didyoumean import did_you_mean
from pybk.core.errors import UsageError
from pybk.core.model import NOTHING, Field, Model, field, fields, has, is_nothing, resolve_types
from pybk.core.units import DiskSpace, Seconds, format_duration, parse_duration

if typing.TYPE_CHECKING:
    import cattrs

__all__ = [
    "KeyPath",
    "Problem",
    "each",
    "each_key",
    "external_key",
    "field_meta",
    "get_converter",
    "problems_from_exception",
    "render_path",
    "setting",
    "structure_options",
    "suggest",
]

_META = "pybk"

#: A location inside a document: table keys and array indices.
KeyPath = tuple[str | int, ...]


class Problem(Model):
    """One thing wrong with a document, at ``path``."""

    path: KeyPath
    message: str

    def render(self) -> str:
        where = render_path(self.path)
        return f"{where}: {self.message}" if where else self.message


def setting(
    key: str | None = None,
    *,
    default: Any = NOTHING,
    factory: Callable[[], Any] | None = None,
    check: Callable[[Any], None] | None = None,
    unsupported: str | None = None,
    deprecated: str | None = None,
    prefix: str | None = None,
    sep: str = ",",
) -> Any:
    """An attrs field with pybk metadata.

    :param key: the external spelling (TOML key / CLI attr) when it differs from the field name.
    :param check: called with the structured value; raises ValueError to reject it.
    :param unsupported: why pybk ignores this key; setting it to a non-default value warns.
    :param deprecated: what to use instead; setting it warns.
    :param prefix: for a ``dict`` field of plugin options: collects CLI attrs ``<prefix>K=V``.
    :param sep: separator of list values given as one CLI attr (``,`` or ``;``).
    """
    meta = {"key": key, "check": check, "unsupported": unsupported, "deprecated": deprecated,
            "prefix": prefix, "sep": sep}
    if factory is not None:
        return field(factory=factory, metadata={_META: meta})
    return field(default=default, metadata={_META: meta})


def _meta(a: Field) -> Mapping[str, Any]:
    return a.metadata.get(_META, {})


def external_key(a: Field) -> str:
    """The spelling of field ``a`` in TOML and CLI attrs."""
    return _meta(a).get("key") or a.name


def field_meta(a: Field, name: str) -> Any:
    """The pybk metadata ``name`` of field ``a`` (``check``, ``unsupported``, ``prefix`` …)."""
    return _meta(a).get(name)


def suggest(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the closest candidate (case ignored), or ``""``."""
    return did_you_mean(word, candidates, case_sensitive=False, loose=True, quote='"')


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def render_path(path: KeyPath) -> str:
    """``worker.oci.gcpolicy[1].keepDuration``, ``registry."docker.io".mirrors``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += ("." if out else "") + text
    return out


# --------------------------------------------------------------------------------------------
# Strict hooks
# --------------------------------------------------------------------------------------------

_TOML_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string",
                    list: "array", dict: "table"}


def _describe(value: object) -> str:
    kind = _TOML_TYPE_NAMES.get(type(value))
    if kind is None:
        kind = "table" if isinstance(value, Mapping) else type(value).__name__
    if isinstance(value, (dict, list)) or kind == "table":
        return kind
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'{kind} "{shown}"'
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    return f"{kind} {value!r}"


class SchemaTypeError(TypeError):
    """A value of the wrong TOML type (its message is shown as is)."""


def _expect(kind: str, value: object) -> SchemaTypeError:
    return SchemaTypeError(f"expected {kind}, got {_describe(value)}")


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _expect("a string", value)
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expect("an integer", value)
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _expect("a number", value)
    return float(value)


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise _expect("true or false", value)
    return value


def _structure_seconds(value: object, _: type) -> Seconds:
    return parse_duration(value)


def _structure_disk_space(value: object, _: type) -> DiskSpace:
    return DiskSpace.parse(value)


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _is_list(tp: Any) -> bool:
    return _origin(tp) in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset)


def _is_dict(tp: Any) -> bool:
    return _origin(tp) in (dict, Mapping) or tp is dict


def _is_literal(tp: Any) -> bool:
    return _origin(tp) is typing.Literal


def each(check: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``check`` for a list field that tests every element (each bad one is reported with its
    index, alongside elements of the wrong type)."""

    def check_all(values: Iterable[Any]) -> None:
        for value in values:
            check(value)

    check_all.item_check = check  # type: ignore[attr-defined]
    return check_all


def each_key(check: Callable[[str], None]) -> Callable[[Mapping[str, Any]], None]:
    """A ``check`` for a dict field that tests every key (each bad key is reported at its own
    path, alongside problems in the values)."""

    def check_all(values: Mapping[str, Any]) -> None:
        for key in values:
            check(key)

    check_all.key_check = check  # type: ignore[attr-defined]
    return check_all


def _list_hook_factory(tp: Any, converter: cattrs.Converter,
                       item_check: Callable[[Any], None] | None = None
                       ) -> Callable[[Any, Any], Any]:
    from cattrs.errors import IterableValidationError, IterableValidationNote

    args = typing.get_args(tp)
    container = _origin(tp) or tp
    if container is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
    else:
        item = args[0] if args else Any
    item_hook = converter.get_structure_hook(item)

    def hook(value: object, _: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _expect("an array", value)
        out, errors = [], []
        for index, element in enumerate(value):
            try:
                result = item_hook(element, item)
                if item_check is not None:
                    item_check(result)
                out.append(result)
            except Exception as exc:  # collected and reported with its index
                exc.__notes__ = [*getattr(exc, "__notes__", []),
                                 IterableValidationNote(f"@ index {index}", index, item)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
        return container(out) if container is not list else out

    return hook


def _dict_hook_factory(tp: Any, converter: cattrs.Converter,
                       key_check: Callable[[str], None] | None = None
                       ) -> Callable[[Any, Any], Any]:
    from cattrs.errors import IterableValidationError, IterableValidationNote

    args = typing.get_args(tp)
    value_type = args[1] if len(args) == 2 else Any
    value_hook = converter.get_structure_hook(value_type)

    def hook(value: object, _: Any) -> dict:
        if not isinstance(value, Mapping):
            raise _expect("a table", value)
        out, errors = {}, []
        for key, element in value.items():
            try:
                if key_check is not None:
                    key_check(key)
                out[key] = value_hook(element, value_type)
            except Exception as exc:  # collected and reported with its key
                exc.__notes__ = [*getattr(exc, "__notes__", []),
                                 IterableValidationNote(f"@ key {key!r}", key, value_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
        return out

    return hook


def _literal_hook_factory(tp: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    choices = typing.get_args(tp)

    def hook(value: object, _: Any) -> Any:
        if not any(value == c and type(value) is type(c) for c in choices):
            shown = ", ".join(f'"{c}"' if isinstance(c, str) else repr(c) for c in choices)
            hint = suggest(value, [str(c) for c in choices]) if isinstance(value, str) else ""
            raise ValueError(f"{_describe(value)} is not one of {shown}{hint}")
        return value

    return hook


def _attrs_hook_factory(cl: type, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    from cattrs.gen import make_dict_structure_fn, override

    resolve_types(cl)
    overrides = {}
    for a in fields(cl):
        key = external_key(a)
        check = field_meta(a, "check")
        struct_hook = None
        item_check = getattr(check, "item_check", None)
        key_check = getattr(check, "key_check", None)
        if item_check is not None:
            struct_hook = _list_hook_factory(a.type, converter, item_check)
        elif key_check is not None:
            struct_hook = _dict_hook_factory(a.type, converter, key_check)
        elif check is not None:
            inner = converter.get_structure_hook(a.type)

            def struct_hook(value: Any, tp: Any, _inner=inner, _check=check) -> Any:
                result = _inner(value, tp)
                _check(result)
                return result

        overrides[a.name] = override(rename=key if key != a.name else None,
                                     struct_hook=struct_hook)
    generated = make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=True,
                                       **overrides)

    def hook(value: object, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _expect("a table", value)
        return generated(value, cl)

    return hook


def _attrs_unstructure_factory(cl: type, converter: cattrs.Converter) -> Callable[[Any], Any]:
    from cattrs.gen import make_dict_unstructure_fn, override

    resolve_types(cl)
    overrides = {a.name: override(rename=external_key(a)) for a in fields(cl)
                 if external_key(a) != a.name}
    return make_dict_unstructure_fn(cl, converter, **overrides)


@functools.cache
def get_converter() -> cattrs.Converter:
    """The shared strict converter (built once)."""
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(Seconds, _structure_seconds)
    conv.register_structure_hook(DiskSpace, _structure_disk_space)
    conv.register_structure_hook_factory(_is_literal, _literal_hook_factory)
    conv.register_structure_hook_factory(_is_list, _list_hook_factory)
    conv.register_structure_hook_factory(_is_dict, _dict_hook_factory)
    conv.register_structure_hook_factory(
        lambda tp: isinstance(tp, type) and has(tp) and tp is not DiskSpace,
        _attrs_hook_factory)
    conv.register_unstructure_hook(Seconds, format_duration)
    conv.register_unstructure_hook(DiskSpace, DiskSpace.to_json)
    conv.register_unstructure_hook_factory(
        lambda tp: isinstance(tp, type) and has(tp) and tp is not DiskSpace,
        _attrs_unstructure_factory)
    return conv


# --------------------------------------------------------------------------------------------
# Turning cattrs' exception groups into located messages
# --------------------------------------------------------------------------------------------


def _note(exc: BaseException, kind: type) -> Any:
    for note in reversed(getattr(exc, "__notes__", [])):
        if isinstance(note, kind):
            return note
    return None


def _leaf_message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "missing required key"
    if isinstance(exc, (ValueError, SchemaTypeError)):
        return str(exc)
    return f"invalid value ({exc})"


def problems_from_exception(exc: BaseException, path: KeyPath = ()) -> list[Problem]:
    """Every leaf problem inside a cattrs validation error, with its key path.

    Unknown keys become ``unknown key "x" (did you mean "y"?)`` at the key's own path.
    """
    from cattrs.errors import (
        AttributeValidationNote,
        ClassValidationError,
        ForbiddenExtraKeysError,
        IterableValidationError,
        IterableValidationNote,
    )

    out: list[Problem] = []
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [external_key(a) for a in fields(exc.cl)]
        for key in sorted(exc.extra_fields):
            out.append(Problem((*path, key), f"unknown key{suggest(key, known)}"))
        return out
    if isinstance(exc, ClassValidationError):
        keys = {a.name: external_key(a) for a in fields(exc.cl)}
        missing_first = sorted(exc.exceptions, key=lambda e: not isinstance(e, KeyError))
        for sub in missing_first:
            note = _note(sub, AttributeValidationNote)
            sub_path = (*path, keys.get(note.name, note.name)) if note is not None else path
            out.extend(problems_from_exception(sub, sub_path))
        return out
    if isinstance(exc, IterableValidationError):
        for sub in exc.exceptions:
            note = _note(sub, IterableValidationNote)
            sub_path = (*path, note.index) if note is not None else path
            out.extend(problems_from_exception(sub, sub_path))
        return out
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            out.extend(problems_from_exception(sub, path))
        return out
    return [Problem(path, _leaf_message(exc))]


# --------------------------------------------------------------------------------------------
# Plugin options from CLI CSV attrs
# --------------------------------------------------------------------------------------------

_TRUE = {"1", "t", "T", "TRUE", "true", "True", ""}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _strip_optional(tp: Any) -> Any:
    if _origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _from_text(text: str, tp: Any, sep: str) -> Any:
    """``text`` (a CLI attr value) converted to ``tp``; ValueError when it does not fit."""
    tp = _strip_optional(tp)
    if tp is bool:
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f'expected true or false, got "{text}"')
    if tp is int:
        if re.fullmatch(r"[+-]?[0-9]+", text) is None:
            raise ValueError(f'expected an integer, got "{text}"')
        return int(text)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f'expected a number, got "{text}"') from None
    if tp in (str, Seconds, DiskSpace) or tp is Any:
        return text
    if _is_literal(tp):
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == text:
                return choice
        shown = ", ".join(str(c) for c in choices)
        raise ValueError(f'"{text}" is not one of {shown}{suggest(text, map(str, choices))}')
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if str(member.value) == text:
                return member
        values = [str(m.value) for m in tp]
        raise ValueError(f'"{text}" is not one of {", ".join(values)}{suggest(text, values)}')
    if _is_list(tp):
        args = typing.get_args(tp)
        item = args[0] if args else str
        return [_from_text(part, item, sep) for part in text.split(sep) if part != ""]
    if _is_dict(tp):
        args = typing.get_args(tp)
        value_type = args[1] if len(args) == 2 else str
        out = {}
        for part in (p for p in text.split(sep) if p):
            name, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f'expected key=value pairs, got "{part}"')
            out[name] = _from_text(value, value_type, sep)
        return out
    raise ValueError("cannot be set from a command-line attribute")


def _plain_type(tp: Any) -> bool:
    """Whether a value :func:`_from_text` made for ``tp`` is already what the converter would
    make of it (no hook of its own: not a duration, a size or a nested class)."""
    tp = _strip_optional(tp)
    if tp in (str, bool, int, float) or tp is Any or _is_literal(tp):
        return True
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return True
    if _is_list(tp) or _is_dict(tp):
        args = typing.get_args(tp)
        inner = _strip_optional(args[-1]) if args else str
        return not (_is_list(inner) or _is_dict(inner)) and _plain_type(inner)
    return False


def _construct_plain(cls: type, fields: Any, data: Mapping[str, Any]) -> Any:
    """``cls`` made directly from ``data`` (external keys, values from :func:`_from_text`) when
    every field given is of a plain type and passes its check and nothing required is missing;
    None whenever the converter should decide (it also words the errors). Spares a build that
    sets a few options the converter's import and generated code (~20 ms a process)."""
    kwargs: dict[str, Any] = {}
    for a in fields:
        key = external_key(a)
        if key not in data:
            if is_nothing(a.default):
                return None
            continue
        if not _plain_type(a.type):
            return None
        value = data[key]
        check = field_meta(a, "check")
        if check is not None:
            item_check = getattr(check, "item_check", None)
            key_check = getattr(check, "key_check", None)
            try:
                if item_check is not None:
                    for item in value:
                        item_check(item)
                elif key_check is not None:
                    for name in value:
                        key_check(name)
                else:
                    check(value)
            except (ValueError, TypeError):
                return None
        kwargs[a.alias] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError):
        return None


def structure_options(cls: type, attrs_in: Mapping[str, str], *, where: str) -> Any:
    """An instance of the plugin ``Options`` class ``cls`` from CLI attrs (all strings).

    Keys are the fields' external spellings; a ``dict`` field declared with
    ``setting(prefix="annotation.")`` collects ``annotation.K=V`` attrs. Raises UsageError naming
    ``where`` (the flag, e.g. ``--cache-to``) with every bad, unknown or missing attr.
    """
    resolve_types(cls)
    cls_fields = fields(cls)
    by_key = {external_key(a): a for a in cls_fields if not field_meta(a, "prefix")}
    prefixed = sorted(((field_meta(a, "prefix"), a) for a in cls_fields if field_meta(a, "prefix")),
                      key=lambda pair: -len(pair[0]))
    data: dict[str, Any] = {}
    problems: list[str] = []
    rejected: set[str] = set()
    for key, text in attrs_in.items():
        a = by_key.get(key)
        if a is not None:
            try:
                data[key] = _from_text(text, a.type, field_meta(a, "sep") or ",")
            except ValueError as exc:
                problems.append(f'attribute "{key}": {exc}')
                rejected.add(key)
            continue
        for prefix, pa in prefixed:
            if key.startswith(prefix) and len(key) > len(prefix):
                data.setdefault(external_key(pa), {})[key[len(prefix):]] = text
                break
        else:
            known = list(by_key) + [p + "<name>" for p, _ in prefixed]
            hint = suggest(key, by_key) or (f" (known: {', '.join(sorted(known))})"
                                            if known else " (this takes no attributes)")
            problems.append(f'unknown attribute "{key}"{hint}')
    if not problems:
        plain = _construct_plain(cls, cls_fields, data)
        if plain is not None:
            return plain
    from cattrs.errors import BaseValidationError

    try:
        result = get_converter().structure(data, cls)
    except BaseValidationError as exc:
        for problem in problems_from_exception(exc):
            if problem.path and problem.path[0] in rejected:
                continue
            if problem.path and problem.message == "missing required key":
                problems.append(f'missing required attribute "{problem.path[0]}"')
            elif problem.path:
                problems.append(f'attribute "{render_path(problem.path)}": {problem.message}')
            else:
                problems.append(problem.message)
        result = None
    except (ValueError, TypeError) as exc:
        problems.append(str(exc))
        result = None
    if problems:
        raise UsageError("; ".join(problems), flag=where)
    return result
