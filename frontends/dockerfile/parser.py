"""Dockerfile parser: physical lines → instruction nodes, as BuildKit's ``parser.Parse`` does.

Three stages:

1. a pre-pass over physical lines: parser directives (:mod:`pybk.core.directives`), comments, line
   continuations with the escape token, and heredoc bodies (``<<EOF`` … ``EOF``);
2. the Lark LALR grammar ``grammar/dockerfile.lark`` frames each logical line into keyword,
   ``--flag`` words and argument text (exec form candidate or shell form);
3. per-instruction argument production (JSON arrays, whitespace lists, quote-aware words for
   ARG/ENV/LABEL, ONBUILD nesting), byte-compatible with BuildKit's AST dump.

Input bytes are decoded as UTF-8 with ``surrogateescape`` so invalid bytes survive unchanged.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from pybk.core.directives import Directives, DirectiveScanner
from pybk.core.model import Model, evolve
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.shell import (
    GO_SPACES,
    Lexer,
    ShellExpansionError,
    go_trim_space,
)

GRAMMAR_PATH = Path(__file__).with_name("grammar") / "dockerfile.lark"

#: Instructions whose arguments may carry heredocs (ONBUILD wraps one of them).
HEREDOC_COMMANDS = frozenset({"add", "copy", "run"})

_BOM = "\ufeff"
_ASCII_BLANKS = re.compile(r"[\t\v\f\r ]+")
_BYTE_BLANKS = frozenset("\t\n\v\f\r \x85\xa0")
_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class Heredoc(Model):
    """One heredoc attached to an instruction.

    ``content`` is the body exactly as written (line endings included, tabs not stripped);
    ``body`` applies ``<<-`` tab stripping. ``expand`` is False when the delimiter was quoted.
    """

    name: str
    file_descriptor: int = 0
    expand: bool = True
    chomp: bool = False
    content: str = ""

    @property
    def body(self) -> str:
        """The content with leading tabs removed from every line when ``<<-`` was used."""
        return _LEADING_TABS.sub("", self.content) if self.chomp else self.content


class Node(Model):
    """One instruction as BuildKit's parser produces it.

    ``keyword`` is as written (``command`` is its lower-case form), ``flags`` the ``--`` words
    with quotes and escapes removed, ``args`` the argument nodes, ``trigger`` the nested
    instruction of ONBUILD. ``json`` is True for the exec (JSON array) form. ``original`` is the
    logical line (continuations joined, heredoc bodies excluded). Lines are 1-based and
    physical; ``end_line`` includes continuation, skipped and heredoc lines.
    """

    keyword: str
    flags: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    trigger: Node | None = None
    json: bool = False
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    heredocs: tuple[Heredoc, ...] = ()
    prev_comments: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The lower-cased keyword used for dispatch."""
        return self.keyword.lower()


class ParseWarning(Model):
    """A non-fatal finding of the parser (currently: empty continuation lines)."""

    message: str
    line: int


class ParseResult(Model):
    """A parsed file: instruction nodes in order, directives, escape token and warnings."""

    children: tuple[Node, ...]
    directives: Directives
    warnings: tuple[ParseWarning, ...]
    lines: tuple[str, ...]
    filename: str = "Dockerfile"

    @property
    def escape(self) -> str:
        return self.directives.escape

    @property
    def start_line(self) -> int:
        return self.children[0].start_line

    @property
    def end_line(self) -> int:
        return self.children[-1].end_line


# ---------------------------------------------------------------------------------------------
# Framing with the Lark grammar
# ---------------------------------------------------------------------------------------------

_BACKTICK_FLAG = (
    "%override FLAG.3: /--(?:[^\\t\\n\\v\\f\\r \\x85\\xa0'\"`]|`[\\s\\S]?"
    "|\"(?:[^\"`]|`[\\s\\S]?)*\"?|'(?:[^'`]|`[\\s\\S]?)*'?)*/\n"
)


@functools.lru_cache(maxsize=2)
def _lark_parser(escape: str):
    """The LALR parser for ``escape`` (built once per escape token)."""
    from lark import Lark

    grammar = GRAMMAR_PATH.read_text(encoding="utf-8")
    if escape == "`":
        grammar += _BACKTICK_FLAG
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True)


class _Framed(Model):
    keyword: str
    flags: tuple[str, ...]
    args: str
    exec_candidate: bool


def _to_bytes_view(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _from_bytes_view(view: str) -> str:
    return view.encode("latin-1").decode("utf-8", "surrogateescape")


def _unquote_flag(word: str, escape: str) -> str:
    """Remove quotes and escapes from one flag word (byte view in, byte view out)."""
    out: list[str] = []
    quote = ""
    i, n = 0, len(word)
    while i < n:
        ch = word[i]
        i += 1
        if quote:
            if ch == quote:
                quote = ""
                continue
        elif ch in ("'", '"'):
            quote = ch
            continue
        if ch == escape:
            if i == n:
                break
            ch = word[i]
            i += 1
        out.append(ch)
    return "".join(out)


def _frame(line: str, escape: str) -> _Framed:
    """Split a logical line into keyword, flags and trimmed argument text."""
    from lark.exceptions import LarkError

    view = _to_bytes_view(go_trim_space(line))
    try:
        tree = _lark_parser(escape).parse(view)
    except LarkError as err:  # the grammar accepts every trimmed non-empty line
        raise DockerfileParseError(f"cannot parse instruction: {err}") from None
    keyword = _from_bytes_view(tree.children[0])
    flags: list[str] = []
    args_view = ""
    exec_candidate = False
    if len(tree.children) > 1:
        rest = tree.children[1]
        for item in rest.children:
            if isinstance(item, str):  # a FLAG token
                flag = _unquote_flag(item, escape)
                if flag == "--":
                    args_view = view[item.end_pos :]
                    exec_candidate = go_trim_space(_from_bytes_view(args_view)).startswith("[")
                    break
                flags.append(_from_bytes_view(flag))
            else:
                token = item.children[0]
                args_view = str(token)
                exec_candidate = item.data == "exec_form"
    args = go_trim_space(_from_bytes_view(args_view))
    return _Framed(keyword, tuple(flags), args, exec_candidate)


# ---------------------------------------------------------------------------------------------
# Argument production per instruction
# ---------------------------------------------------------------------------------------------


class _ArgError(Exception):
    """Internal: an instruction's arguments are invalid (located by the caller)."""


def _fix_surrogates(text: str) -> str:
    """Invalid UTF-8 read rune by rune becomes U+FFFD, as Go's decoder does."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def parse_words(rest: str, escape: str) -> list[str]:
    """Quote-aware words (BuildKit ``parseWords``): quotes and escapes are kept verbatim."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote = ""
    blank_ok = False
    rest = _fix_surrogates(rest)
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        i += 1
        if not in_word:
            if ch in GO_SPACES:
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i == n:
                    quote = ""
                    continue
                word.append(ch)
                ch = rest[i]
                i += 1
            word.append(ch)
            continue
        if ch in GO_SPACES:
            if blank_ok or word:
                words.append("".join(word))
            word = []
            blank_ok = False
            in_word = False
            continue
        if ch in ("'", '"'):
            quote = ch
            blank_ok = True
        if ch == escape:
            if i == n:
                continue
            word.append(ch)
            ch = rest[i]
            i += 1
        word.append(ch)
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _parse_json(rest: str) -> list[str] | None:
    """The JSON array of strings in ``rest``, or None when ``rest`` is not valid JSON."""

    def reject(constant: str):
        raise ValueError(constant)

    try:
        value = json.loads(rest, parse_constant=reject)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _ArgError(_NOT_STRING_ARRAY)
    return [_fix_surrogates(item) for item in value]


def _maybe_json(rest: str, exec_candidate: bool) -> tuple[list[str], bool] | None:
    if exec_candidate and rest.startswith("["):
        items = _parse_json(rest)
        if items is not None:
            return items, True
    return None


def _ws_split(rest: str) -> list[str]:
    return _ASCII_BLANKS.split(rest) if rest else []


def _name_vals(rest: str, escape: str, command: str) -> list[str]:
    words = parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _ASCII_BLANKS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _ArgError(f"{command} must have two arguments")
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for word in words:
        if "=" not in word:
            from pybk.core.errors import go_quote

            raise _ArgError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        key, value = word.split("=", 1)
        out += [key, value, "="]
    return out


def _health(rest: str, exec_candidate: bool) -> tuple[list[str], bool]:
    view = _to_bytes_view(rest)
    sep = 0
    while sep < len(view) and view[sep] not in _BYTE_BLANKS:
        sep += 1
    nxt = sep
    while nxt < len(view) and view[nxt] in _BYTE_BLANKS:
        nxt += 1
    if sep == 0:
        return [], False
    kind = _from_bytes_view(view[:sep])
    command = _from_bytes_view(view[nxt:])
    if not command:
        return [kind], False
    parsed = _maybe_json(command, command.startswith("["))
    if parsed is not None:
        return [kind, *parsed[0]], True
    return [kind, command], False


def node_from_line(line: str, escape: str, comments: tuple[str, ...] = ()) -> Node:
    """Frame one logical line and produce its argument nodes (no line numbers yet)."""
    framed = _frame(line, escape)
    command = framed.keyword.lower()
    rest = framed.args
    args: list[str] = []
    is_json = False
    trigger = None
    if command in ("from", "expose"):
        args = _ws_split(rest)
    elif command in ("add", "copy", "volume"):
        parsed = _maybe_json(rest, framed.exec_candidate)
        args, is_json = parsed if parsed is not None else (_ws_split(rest), False)
    elif command in ("run", "cmd", "entrypoint", "shell"):
        if rest:
            parsed = _maybe_json(rest, framed.exec_candidate)
            args, is_json = parsed if parsed is not None else ([rest], False)
    elif command == "healthcheck":
        args, is_json = _health(rest, framed.exec_candidate)
    elif command in ("maintainer", "user", "workdir", "stopsignal"):
        args = [rest] if rest else []
    elif command == "arg":
        args = parse_words(rest, escape)
    elif command == "env":
        args = _name_vals(rest, escape, "ENV")
    elif command == "label":
        args = _name_vals(rest, escape, "LABEL")
    elif command == "onbuild":
        if rest:
            trigger = node_from_line(rest, escape)
    else:
        args = [""]
    return Node(
        keyword=framed.keyword,
        flags=framed.flags,
        args=tuple(args),
        trigger=trigger,
        json=is_json,
        original=line,
        prev_comments=comments,
    )


# ---------------------------------------------------------------------------------------------
# Heredocs
# ---------------------------------------------------------------------------------------------

_HEREDOC_LINE_LEXER = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
_HEREDOC_NAME_LEXER = Lexer(skip_unset_env=True)
_HEREDOC_NAME_RAW_LEXER = Lexer(skip_unset_env=True, raw_quotes=True)


def parse_heredoc_word(word: str) -> Heredoc | None:
    """The heredoc a word such as ``<<EOF``, ``<<-"EOT"`` or ``3<<x`` starts, or None."""
    match = _HEREDOC_WORD.match(word)
    if match is None:
        return None
    fd, chomp, rest = match.groups()
    if not rest:
        return None
    words = _HEREDOC_NAME_LEXER.process(rest, {}).words
    if len(words) != 1:
        return None
    raw_words = _HEREDOC_NAME_RAW_LEXER.process(rest, {}).words
    if len(raw_words) != len(words):
        raise ShellExpansionError(
            f"internal lexing of heredoc produced inconsistent results: {rest}"
        )
    name, raw = words[0], raw_words[0]
    quotes = name.count("'") + name.count('"')
    raw_quotes = raw.count("'") + raw.count('"')
    return Heredoc(
        name=name, file_descriptor=int(fd or 0), expand=quotes == raw_quotes, chomp=chomp == "-"
    )


def heredocs_from_line(line: str) -> list[Heredoc]:
    """The heredocs a logical line opens, in order."""
    if "<<" not in line:
        return []
    try:
        words = _HEREDOC_LINE_LEXER.process(line, {}).words
    except ShellExpansionError:
        return []
    docs = []
    for word in words:
        doc = parse_heredoc_word(word)
        if doc is not None:
            docs.append(doc)
    return docs


def _can_contain_heredoc(node: Node) -> bool:
    if node.command == "onbuild" and node.trigger is not None:
        node = node.trigger
    return node.command in HEREDOC_COMMANDS and not node.json


# ---------------------------------------------------------------------------------------------
# The pre-pass
# ---------------------------------------------------------------------------------------------


def _physical_lines(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _trim_leading_space(line: str) -> str:
    i = 0
    while i < len(line) and line[i] in GO_SPACES:
        i += 1
    return line[i:]


def _is_comment(line: str) -> bool:
    return _trim_leading_space(_trim_newline(line)).startswith("#")


@functools.lru_cache(maxsize=2)
def _continuation_regex(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z", re.DOTALL)


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    match = _continuation_regex(escape).search(line)
    if match is None:
        return line, True
    return line[: match.start()] + (match.group(1) or ""), False


def decode(data: bytes) -> str:
    """Decode Dockerfile bytes, keeping invalid UTF-8 bytes as surrogate escapes."""
    return data.decode("utf-8", "surrogateescape")


def _located(
    message: str, filename: str, lines: list[str], start: int, end: int | None = None
) -> DockerfileParseError:
    source = _trim_newline(lines[start - 1]) if 0 < start <= len(lines) else None
    return DockerfileParseError(
        message, filename=filename, line=max(start, 1), end_line=end, source_line=source
    )


def parse(data: bytes | str, filename: str = "Dockerfile") -> ParseResult:
    """Parse a Dockerfile into instruction nodes (BuildKit ``parser.Parse``).

    Raises :class:`DockerfileParseError` (located) for bad directives, unterminated heredocs,
    non-string JSON arrays, ENV/LABEL without value and files without instructions.
    """
    text = decode(data) if isinstance(data, bytes) else data
    if text.startswith(_BOM):
        text = text[1:]
    lines = _physical_lines(text)
    directives = DirectiveScanner()
    children: list[Node] = []
    warnings: list[ParseWarning] = []
    comments: list[str] = []
    line_iter: Iterator[str] = iter(lines)
    current = 0

    def process(raw: str, strip_left: bool, lineno: int) -> str:
        token = _trim_newline(raw)
        if strip_left:
            token = _trim_leading_space(token)
        try:
            directives.feed(token)
        except ValueError as err:
            raise _located(str(err), filename, lines, lineno) from None
        return "" if token.startswith("#") else token

    for raw in line_iter:
        if _is_comment(raw):
            comment = go_trim_space(raw[1:])
            if comment:
                comments.append(comment)
            else:
                comments = []
        token = process(raw, True, current + 1)
        current += 1
        start = current
        line, end_of_line = _trim_continuation(token, directives.escape)
        if end_of_line and line == "":
            if not _is_comment(raw):
                comments = []
            continue
        empty_continuation = False
        while not end_of_line:
            raw = next(line_iter, None)
            if raw is None:
                break
            token = process(raw, False, current + 1)
            current += 1
            if _is_comment(raw):
                continue
            if not _trim_leading_space(token):
                empty_continuation = True
                continue
            more, end_of_line = _trim_continuation(token, directives.escape)
            line += more
        if empty_continuation:
            warnings.append(ParseWarning("Empty continuation line found in: " + line, current))
        try:
            node = node_from_line(line, directives.escape, tuple(comments))
        except _ArgError as err:
            raise _located(str(err), filename, lines, start, current) from None
        except DockerfileParseError as err:
            raise _located(err.message, filename, lines, start, current) from None
        heredocs: list[Heredoc] = []
        if _can_contain_heredoc(node):
            try:
                found = heredocs_from_line(line)
            except ShellExpansionError as err:
                raise _located(err.message, filename, lines, start, current) from None
            for doc in found:
                body: list[str] = []
                terminated = False
                for raw in line_iter:
                    current += 1
                    candidate = _trim_newline(raw)
                    if doc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == doc.name:
                        terminated = True
                        break
                    body.append(raw)
                if not terminated:
                    raise _located("unterminated heredoc", filename, lines, start, current)
                heredocs.append(evolve(doc, content="".join(body)))
        children.append(
            evolve(node, start_line=start, end_line=current, heredocs=tuple(heredocs))
        )
        comments = []

    if not children:
        raise _located("file with no instructions", filename, lines, current)
    return ParseResult(
        children=tuple(children),
        directives=directives.result(),
        warnings=tuple(warnings),
        lines=tuple(_trim_newline(raw) for raw in lines),
        filename=filename,
    )
