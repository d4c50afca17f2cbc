"""Reading and validating a ``buildkitd.toml`` into a :class:`~pybk.core.config.schema.Config`.

Unknown keys are errors with a "did you mean"; keys pybk knows but does not act on yet load with a
warning naming them; every problem of a file is reported at once with its key path and line (a
line scanner of the TOML text finds where each table, key and array element is).

Entry points: :func:`load_config`, :func:`load_config_text` and :func:`config_to_json`.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pybk.core.config.filters import FILTER_FIELDS, RECORD_TYPES, parse_filter
from pybk.core.config.schema import SUPPORTED_SNAPSHOTTERS, Config, OCIConfig, WorkerBase
from pybk.core.converter import (
    KeyPath,
    Problem,
    external_key,
    field_meta,
    get_converter,
    problems_from_exception,
    render_path,
    suggest,
)
from pybk.core.errors import ConfigError
from pybk.core.model import Factory, Field, evolve, fields, has, resolve_types
from pybk.core.units import DiskSpace

__all__ = ["config_to_json", "load_config", "load_config_text"]


def _unwrap(tp: Any) -> tuple[str, Any]:
    """('class'|'list'|'dict'|'other', attrs class) for a field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    if isinstance(tp, type) and has(tp) and tp is not DiskSpace:
        return "class", tp
    args = typing.get_args(tp)
    if origin is list and args and isinstance(args[0], type) and has(args[0]):
        return "list", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and has(args[1]):
        return "dict", args[1]
    return "other", None


def _fix_key_case(raw: Mapping[str, Any], cl: type, path: KeyPath,
                  warnings: list[Problem]) -> dict[str, Any]:
    """Keys differing only in case from a known key are renamed (BuildKit's TOML decoder
    accepts them), with a warning; nested tables are fixed too."""
    resolve_types(cl)
    known_fields = {external_key(a): a for a in fields(cl)}
    lowered = {k.lower(): k for k in known_fields}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        known = key
        if (key not in known_fields and key.lower() in lowered
                and lowered[key.lower()] not in raw and lowered[key.lower()] not in out):
            known = lowered[key.lower()]
            warnings.append(Problem((*path, key), f'matched "{known}" ignoring case; '
                                                  f'write "{known}"'))
        a = known_fields.get(known)
        if a is not None:
            kind, sub = _unwrap(a.type)
            if kind == "class" and isinstance(value, Mapping):
                value = _fix_key_case(value, sub, (*path, known), warnings)
            elif kind == "list" and isinstance(value, list):
                value = [_fix_key_case(v, sub, (*path, known, i), warnings)
                         if isinstance(v, Mapping) else v for i, v in enumerate(value)]
            elif kind == "dict" and isinstance(value, Mapping):
                value = {k: _fix_key_case(v, sub, (*path, known, k), warnings)
                         if isinstance(v, Mapping) else v for k, v in value.items()}
        out[known] = value
    return out


def _default_of(a: Field) -> Any:
    if isinstance(a.default, Factory):  # type: ignore[arg-type]
        return a.default.factory()
    return a.default


def _non_default_leaves(value: Any, default: Any, path: KeyPath) -> Iterable[KeyPath]:
    if value == default:
        return
    if has(type(value)) and type(value) is type(default) and type(value) is not DiskSpace:
        for a in fields(type(value)):
            yield from _non_default_leaves(getattr(value, a.name), getattr(default, a.name),
                                           (*path, external_key(a)))
        return
    yield path


def _flag_keys(obj: Any, path: KeyPath, warnings: list[Problem]) -> None:
    """Warnings for deprecated keys and for unsupported keys set to a non-default value."""
    if getattr(obj, "enabled", None) is False:
        return
    for a in fields(type(obj)):
        value = getattr(obj, a.name)
        here = (*path, external_key(a))
        unsupported, deprecated = field_meta(a, "unsupported"), field_meta(a, "deprecated")
        if deprecated and value != _default_of(a):
            note = ""
            if isinstance(value, DiskSpace) and 0 < value.bytes < 1_000_000:
                note = " (a plain number is bytes; older BuildKit read gckeepstorage as MB)"
            warnings.append(Problem(here, f"deprecated, {deprecated}{note}"))
        if unsupported:
            if getattr(value, "enabled", None) is False:
                continue
            leaves = list(_non_default_leaves(value, _default_of(a), here))
            if has(type(value)) and leaves:
                names = ", ".join(render_path(leaf[len(here):]) for leaf in leaves)
                warnings.append(Problem(here, f"{unsupported} (set: {names})"))
            else:
                warnings.extend(Problem(leaf, unsupported) for leaf in leaves)
            continue
        kind, _ = _unwrap(a.type)
        if kind == "class" and value is not None:
            _flag_keys(value, here, warnings)
        elif kind == "list":
            for i, item in enumerate(value):
                _flag_keys(item, (*here, i), warnings)
        elif kind == "dict":
            for k, item in value.items():
                _flag_keys(item, (*here, k), warnings)


def _review_worker(worker: WorkerBase, path: KeyPath, warnings: list[Problem]) -> WorkerBase:
    changes: dict[str, Any] = {}
    if isinstance(worker, OCIConfig) and worker.snapshotter not in SUPPORTED_SNAPSHOTTERS:
        warnings.append(Problem((*path, "snapshotter"),
                                f'"{worker.snapshotter}" is not supported by pybk yet; '
                                'using "auto"'))
        changes["snapshotter"] = "auto"
    for i, policy in enumerate(worker.gc_policy):
        for j, text in enumerate(policy.filters):
            for sel in parse_filter(text):
                where = (*path, "gcpolicy", i, "filters", j)
                name = sel.fieldpath[0]
                if name not in FILTER_FIELDS:
                    warnings.append(Problem(where, f'filter field "{name}" never matches a '
                                                   f"cache record"
                                                   f"{suggest(name, FILTER_FIELDS)}"))
                elif (name == "type" and sel.operator in ("==", "!=")
                      and sel.value not in RECORD_TYPES):
                    warnings.append(Problem(where, f'"{sel.value}" is not a cache record type'
                                                   f"{suggest(sel.value, RECORD_TYPES)}"))
    return evolve(worker, **changes) if changes else worker


def _review(config: Config, warnings: list[Problem]) -> Config:
    """Semantic warnings and the normalisations pybk applies."""
    _flag_keys(config, (), warnings)
    changes: dict[str, Any] = {}
    if config.log.level is None:
        level = "trace" if config.trace else "debug" if config.debug else "info"
        changes["log"] = evolve(config.log, level=level)
    else:
        changes["log"] = evolve(config.log, level=config.log.level.lower())
    for i, ent in enumerate(config.insecure_entitlements):
        if ent.partition("=")[0] == "device":
            warnings.append(Problem(("insecure-entitlements", i),
                                    "the device entitlement needs CDI, which pybk does not "
                                    "support yet; ignored"))
    for i, address in enumerate(config.grpc.address):
        scheme = address.partition("://")[0]
        if scheme not in ("unix", "tcp"):
            warnings.append(Problem(("grpc", "address", i),
                                    f'"{scheme}" listeners are not supported by pybk yet; '
                                    "ignored"))
    oci = _review_worker(config.worker.oci, ("worker", "oci"), warnings)
    if oci is not config.worker.oci:
        changes["worker"] = evolve(config.worker, oci=oci)
    return evolve(config, **changes)


_TOML_ERROR_AT = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.S)
_TOML_ERROR_END = re.compile(r"^(.*) \(at end of document\)$", re.S)


def _toml_syntax_error(exc: Exception, text: str, filename: str) -> str:
    message = str(exc)
    m = _TOML_ERROR_AT.match(message)
    if m:
        line, column = int(m.group(2)), int(m.group(3))
        lines = text.splitlines()
        shown = ""
        if 0 < line <= len(lines):
            source = lines[line - 1].expandtabs(1)
            shown = f"\n    {source}\n    {' ' * max(column - 1, 0)}^"
        return f"{filename}:{line}:{column}: invalid TOML: {m.group(1)}{shown}"
    m = _TOML_ERROR_END.match(message)
    if m:
        return f"{filename}:{len(text.splitlines()) or 1}: invalid TOML: {m.group(1)} " \
               "(at end of file)"
    return f"{filename}: invalid TOML: {message}"


def _explain(problem: Problem) -> Problem:
    """Extra hints for mistakes BuildKit's own docs lead to."""
    if problem.path == ("ghacache",):
        return Problem(problem.path, "unknown key; the signed GitHub Actions cache is "
                                     "configured under [cache.gha] (sign.command, verify)")
    return problem


def load_config_text(text: str, filename: str = "<config>") -> tuple[Config, list[str]]:
    """Parse a buildkitd.toml document; return the config and warning messages.

    Raises ConfigError listing every problem, each as ``file:line: key.path: message``.
    """
    import tomllib

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_syntax_error(exc, text, filename)], path=filename) from None
    lines = _KeyLines(text)
    warnings: list[Problem] = []
    raw = _fix_key_case(raw, Config, (), warnings)
    from cattrs.errors import BaseValidationError

    try:
        config = get_converter().structure(raw, Config)
    except BaseValidationError as exc:
        problems = [_explain(p) for p in problems_from_exception(exc)]
        problems.sort(key=lambda p: lines.line_of(p.path) or 0)
        raise ConfigError([lines.render(p, filename) for p in problems],
                          path=filename) from None
    config = _review(config, warnings)
    located = sorted(warnings, key=lambda w: lines.line_of(w.path) or 0)
    return config, [lines.render(w, filename) for w in located]


def load_config(path: str | Path | None) -> tuple[Config, list[str]]:
    """Load the file at ``path`` (``None``: all defaults); return (config, warnings).

    Raises ConfigError with every problem at once.
    """
    if path is None:
        return _review(Config(), []), []
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"], path=name) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 text (byte {exc.start})"], path=name) from None
    return load_config_text(text, name)


# --------------------------------------------------------------------------------------------
# Locating keys in the source (best effort, for messages)
# --------------------------------------------------------------------------------------------

_KEY_PART = re.compile(r'\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|\'([^\']*)\')\s*')


def _split_key(text: str) -> tuple[tuple[str, ...], int] | None:
    """(dotted key parts, end offset) at the start of ``text``, or None."""
    parts, pos = [], 0
    while True:
        m = _KEY_PART.match(text, pos)
        if m is None or m.end() == pos:
            return None
        part = m.group(1) if m.group(1) is not None else (
            m.group(2) if m.group(2) is not None else m.group(3))
        parts.append(part.replace('\\"', '"') if m.group(2) is not None else part)
        pos = m.end()
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


class _ValueScan:
    """Follows one TOML value across lines, noting the line of each element of an array."""

    def __init__(self, marks: dict[KeyPath, int], path: KeyPath):
        self.marks, self.path = marks, path
        self.depth, self.open_string = 0, None
        self.is_array, self.index, self.expecting = False, 0, False

    @property
    def done(self) -> bool:
        return self.depth <= 0 and self.open_string is None

    def _element(self, lineno: int) -> None:
        if self.is_array and self.depth == 1 and self.expecting:
            self.marks.setdefault((*self.path, self.index), lineno)
            self.expecting = False

    def feed(self, line: str, lineno: int) -> None:
        i, n = 0, len(line)
        while i < n:
            if self.open_string:
                end = line.find(self.open_string, i)
                if end < 0:
                    return
                i, self.open_string = end + 3, None
                continue
            c = line[i]
            if c == "#":
                return
            if c in "\"'":
                self._element(lineno)
                if line.startswith(c * 3, i):
                    self.open_string, i = c * 3, i + 3
                    continue
                end = i + 1
                while end < n and line[end] != c:
                    end += 2 if (c == '"' and line[end] == "\\") else 1
                i = end + 1
                continue
            if c in "[{":
                if self.depth == 0 and c == "[":
                    self.is_array, self.expecting = True, True
                else:
                    self._element(lineno)
                self.depth += 1
            elif c in "]}":
                self.depth -= 1
            elif c == "," and self.depth == 1:
                self.index, self.expecting = self.index + 1, True
            elif not c.isspace():
                self._element(lineno)
            i += 1


class _KeyLines:
    """Line numbers of the tables, keys and array elements of a TOML document."""

    def __init__(self, text: str):
        self.lines: dict[KeyPath, int] = {}
        table: KeyPath = ()
        arrays: dict[KeyPath, int] = {}
        scan: _ValueScan | None = None
        for lineno, line in enumerate(text.splitlines(), 1):
            if scan is not None:
                scan.feed(line, lineno)
                scan = None if scan.done else scan
                continue
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("[["):
                parsed = _split_key(stripped[2:])
                if parsed:
                    index = arrays.get(parsed[0], -1) + 1
                    arrays[parsed[0]] = index
                    table = (*parsed[0], index)
                    self._mark(table, lineno)
                continue
            if stripped.startswith("["):
                parsed = _split_key(stripped[1:])
                if parsed:
                    table = self._resolve(parsed[0], arrays)
                    self._mark(table, lineno)
                continue
            parsed = _split_key(stripped)
            if parsed and stripped[parsed[1]:parsed[1] + 1] == "=":
                path = (*table, *parsed[0])
                self._mark(path, lineno)
                scan = _ValueScan(self.lines, path)
                scan.feed(stripped[parsed[1] + 1:], lineno)
                scan = None if scan.done else scan

    @staticmethod
    def _resolve(keys: tuple[str, ...], arrays: Mapping[KeyPath, int]) -> KeyPath:
        """A ``[a.b.c]`` header inside the current ``[[a.b]]`` entry gets its index."""
        for cut in range(len(keys), 0, -1):
            if keys[:cut] in arrays:
                return (*keys[:cut], arrays[keys[:cut]], *keys[cut:])
        return keys

    def _mark(self, path: KeyPath, lineno: int) -> None:
        for cut in range(1, len(path) + 1):
            self.lines.setdefault(path[:cut], lineno)
        self.lines[path] = lineno

    def line_of(self, path: KeyPath) -> int | None:
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def render(self, problem: Problem, filename: str) -> str:
        line = self.line_of(problem.path)
        where = f"{filename}:{line}: " if line is not None else f"{filename}: "
        return where + problem.render()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def config_to_json(config: Config) -> dict[str, Any]:
    """The config as plain data with BuildKit's key spellings (sizes: bytes or ``"N%"``,
    durations: Go duration strings)."""
    return get_converter().unstructure(config)
