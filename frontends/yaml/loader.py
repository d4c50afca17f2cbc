"""Read a YAML pipeline into plain data, remembering where every key and value is.

Scalars are resolved strictly so that what is written is what is meant: ``true``/``false``
are booleans, ``null``/``~``/empty is null, a decimal integer without a leading zero is an
integer, and everything else (``0755``, ``1.20``, ``yes``, ``on``) stays a string. Merge keys
(``<<: *anchor``) are honoured; duplicate keys are problems.
"""

from __future__ import annotations

import re
from typing import Any

from pybk.core.converter import KeyPath
from pybk.core.model import Model, field

_INT = re.compile(r"0|[-+]?[1-9][0-9]*")
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_PLAIN = "tag:yaml.org,2002:"


class Mark(Model):
    """A 1-based place in the file; ``end_line`` is the last line of the node."""

    line: int
    column: int
    end_line: int


class LoadProblem(Model):
    path: KeyPath
    message: str
    mark: Mark


class Document(Model, frozen=False):
    """The data of a YAML file with the marks of its values (``marks``) and mapping keys
    (``key_marks``), both keyed by key path, and the problems found while reading it."""

    filename: str
    text: str
    data: Any = None
    marks: dict[KeyPath, Mark] = field(factory=dict)
    key_marks: dict[KeyPath, Mark] = field(factory=dict)
    problems: list[LoadProblem] = field(factory=list)

    def lines(self) -> list[str]:
        return self.text.splitlines()

    def mark(self, path: KeyPath, *, key: bool = False) -> Mark:
        """Where ``path`` is (its key when ``key``); the nearest enclosing node when absent."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        while path:
            if path in self.marks:
                return self.marks[path]
            path = path[:-1]
        return self.marks.get((), Mark(1, 1, 1))


class YamlSyntaxError(Exception):
    """The file is not YAML (carries PyYAML's 1-based mark)."""

    def __init__(self, message: str, line: int, column: int):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def _mark(node: Any) -> Mark:
    end = node.end_mark
    end_line = end.line + 1
    if end.column == 0 and end.line > node.start_mark.line:
        end_line -= 1  # a block node ends at the start of the next line
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1, end_line)


def _scalar(node: Any) -> Any:
    value = node.value
    if node.style is not None:  # quoted or block scalar: always a string
        return value
    if node.tag != _PLAIN + "str" and not node.tag.startswith(_PLAIN):
        return value
    if value in _NULL:
        return None
    if value in ("true", "false"):
        return value == "true"
    if _INT.fullmatch(value):
        return int(value)
    return value


def load_document(data: bytes | str, filename: str) -> Document:
    """Parse ``data``; raises :class:`YamlSyntaxError` when it is not well-formed YAML."""
    try:
        import yaml
    except ImportError:
        from pybk.core.errors import NotAvailableError

        raise NotAvailableError("the yaml.v0 frontend needs PyYAML: pip install 'pybk[yaml]'"
                                ) from None

    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = text.removeprefix("\ufeff")
    doc = Document(filename, text)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = " ".join(filter(None, [err.context, err.problem]))
        raise YamlSyntaxError(message, (mark.line + 1) if mark else 1,
                              (mark.column + 1) if mark else 1) from None
    except yaml.YAMLError as err:
        raise YamlSyntaxError(str(err), 1, 1) from None
    if root is None:
        doc.marks[()] = Mark(1, 1, 1)
        return doc
    doc.data = _walk(root, (), doc, set())
    return doc


def _walk(node: Any, path: KeyPath, doc: Document, active: set[int]) -> Any:
    import yaml

    doc.marks.setdefault(path, _mark(node))
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node)
    if id(node) in active:
        doc.problems.append(LoadProblem(path, "recursive alias", _mark(node)))
        return None
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), doc, active) for i, item in enumerate(node.value)]
    out: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _PLAIN + "merge":
            for source in _merge_sources(value_node, path, doc):
                walked = _walk(source, path, doc, active)  # None: a recursive alias (reported)
                for key, value in (walked or {}).items():
                    merged.setdefault(key, value)
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            doc.problems.append(LoadProblem(path, "a key must be a plain string",
                                            _mark(key_node)))
            continue
        key = key_node.value
        sub = (*path, key)
        if key in out:
            doc.problems.append(LoadProblem(sub, "duplicate key", _mark(key_node)))
            continue
        doc.key_marks[sub] = _mark(key_node)
        out[key] = _walk(value_node, sub, doc, active)
    for key, value in merged.items():
        out.setdefault(key, value)
    return out


def _merge_sources(node: Any, path: KeyPath, doc: Document) -> list[Any]:
    import yaml

    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    good = [s for s in sources if isinstance(s, yaml.MappingNode)]
    if len(good) != len(sources):
        doc.problems.append(LoadProblem(path, "a merge key (<<) needs a mapping or a list of "
                                        "mappings", _mark(node)))
    return good

