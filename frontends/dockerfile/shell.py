"""Shell-like word processing for Dockerfiles: quote removal, escapes, ``$VAR`` expansion and
word splitting, with BuildKit's lexer semantics (``frontend/dockerfile/shell``).

Supported: ``$v``, ``${v}``, ``${v:-w}``, ``${v-w}``, ``${v:+w}``, ``${v+w}``, ``${v:?m}``,
``${v?m}``, ``${v#p}``, ``${v##p}``, ``${v%p}``, ``${v%%p}``, ``${v/p/r}``, ``${v//p/r}``.
Anything else inside ``${}`` is an error, as in BuildKit. Expansion never executes anything.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from pybk.core.errors import InputError
from pybk.core.model import Model

#: Go's ``unicode.IsSpace`` set (Python's ``str.isspace`` differs on U+001C..U+001F).
GO_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_HEREDOC_START = re.compile(r"[0-9]*<<-?\Z")


def go_trim_space(text: str) -> str:
    """``strings.TrimSpace``: strip Go's Unicode whitespace from both ends."""
    start, end = 0, len(text)
    while start < end and text[start] in GO_SPACES:
        start += 1
    while end > start and text[end - 1] in GO_SPACES:
        end -= 1
    return text[start:end]


class ShellExpansionError(InputError):
    """A word could not be processed (bad substitution, unterminated quote, ``${v:?}`` …)."""


class WordResult(Model):
    """Result of processing one word, with the variable names it looked up."""

    result: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


def _is_letter(ch: str) -> bool:
    return ch.isalpha() if ch.isascii() else unicodedata.category(ch)[0] == "L"


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9" if ch.isascii() else unicodedata.category(ch) == "Nd"


class _Words:
    """Accumulates the split words of a (default-mode) word list."""

    __slots__ = ("buf", "words", "in_word")

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACES:
            if self.in_word:
                word = "".join(self.buf)
                if not word:
                    return
                # ``<<`` followed by blanks stays with the heredoc word that follows.
                if _HEREDOC_START.match(word):
                    self.buf.append(ch)
                    return
                self.words.append(word)
                self.buf = []
                self.in_word = False
        else:
            self.buf.append(ch)
            self.in_word = True

    def add_raw_char(self, ch: str) -> None:
        self.buf.append(ch)
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def finish(self) -> list[str]:
        if self.buf:
            word = "".join(self.buf)
            if word:
                self.words.append(word)
            self.buf = []
            self.in_word = False
        return self.words


class _Error(Exception):
    """Internal: carries a lexer message up to ``Lexer._process``."""


_EOF = ""


class _Word:
    """State of one ``process`` call: the text, a cursor and the looked-up names."""

    __slots__ = ("lex", "text", "pos", "env", "raw_escapes", "matched", "unmatched")

    def __init__(self, lex: Lexer, text: str, env: Mapping[str, str]):
        self.lex = lex
        self.text = text
        self.pos = 0
        self.env = env
        self.raw_escapes = lex.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    # -- cursor ---------------------------------------------------------------------------------
    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            return ch
        return _EOF

    def get_env(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False

    # -- grammar --------------------------------------------------------------------------------
    def process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._process_stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _process_stop_on(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        escape = self.lex.escape
        quotes = not self.lex.skip_process_quotes
        text = self.text
        n = len(text)
        while self.pos < n:
            ch = text[self.pos]
            if stop and ch == stop:
                self.pos += 1
                return "".join(result), words.finish()
            if ch == "$":
                tmp = self.process_dollar()
                result.append(tmp)
                words.add_string(tmp)
            elif quotes and ch == "'":
                tmp = self.process_single_quote()
                result.append(tmp)
                words.add_raw_string(tmp)
            elif quotes and ch == '"':
                tmp = self.process_double_quote()
                result.append(tmp)
                words.add_raw_string(tmp)
            else:
                self.pos += 1
                if ch == escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self.next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise _Error(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    def process_single_quote(self) -> str:
        result: list[str] = []
        ch = self.next()
        if self.lex.raw_quotes:
            result.append(ch)
        while True:
            ch = self.next()
            if ch == _EOF:
                raise _Error("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.lex.raw_quotes:
                    result.append(ch)
                return "".join(result)
            result.append(ch)

    def process_double_quote(self) -> str:
        result: list[str] = []
        ch = self.next()
        if self.lex.raw_quotes:
            result.append(ch)
        escape = self.lex.escape
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise _Error("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                if self.lex.raw_quotes:
                    result.append(ch)
                return "".join(result)
            if ch == "$":
                result.append(self.process_dollar())
                continue
            ch = self.next()
            if ch == escape:
                if self.raw_escapes:
                    result.append(ch)
                following = self.peek()
                if following == _EOF:
                    continue
                if following in ('"', "$", escape):
                    ch = self.next()
            result.append(ch)

    def process_name(self) -> str:
        name: list[str] = []
        while True:
            ch = self.peek()
            if ch == _EOF:
                break
            if not name and _is_digit(ch):
                while self.peek() != _EOF and _is_digit(self.peek()):
                    name.append(self.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (_is_letter(ch) or _is_digit(ch) or ch == "_"):
                break
            name.append(self.next())
        return "".join(name)

    def process_dollar(self) -> str:
        self.next()
        skip_unset = self.lex.skip_unset_env
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            value, found = self.get_env(name)
            if not found and skip_unset:
                return "$" + name
            return value

        self.next()
        ch = self.peek()
        if ch == _EOF:
            raise _Error("syntax error: missing '}'")
        if ch in "{}:":
            raise _Error("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        modifier = ch
        null_is_unset = False
        if ch == "}":
            value, found = self.get_env(name)
            if not found and skip_unset:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self._replace(name)
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        elif ch not in ("+", "-", "?", "#", "%"):
            raise _Error(f"unsupported modifier ({modifier}) in substitution")
        raw = ch in ("#", "%")
        if null_is_unset and raw:
            raise _Error(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.process_stop_on("}", raw)
        except _Error:
            if self.peek() == _EOF:
                raise _Error("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if skip_unset and not found:
            return "${" + name + modifier + word + "}"
        if ch == "-":
            return word if not found or (null_is_unset and value == "") else value
        if ch == "+":
            return "" if not found or (null_is_unset and value == "") else word
        if ch == "?":
            if not found:
                raise _Error(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _Error(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            greedy = word[:1] == ch
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _Error(f"unsupported modifier ({modifier}) in substitution")

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.process_stop_on("/", True)
        except _Error:
            if self.peek() == _EOF:
                raise _Error("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.process_stop_on("}", True)
        except _Error:
            if self.peek() == _EOF:
                raise _Error("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_to_regex(pattern, greedy=True, anchored=False)
        return _go_replace(regex, value, replacement, replace_all)


# -- glob patterns of ${v#p}, ${v%p}, ${v/p/r} --------------------------------------------------

_REGEX_SPECIAL = frozenset("[]{}.+()|^$")


def _pattern_to_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
            continue
        if ch == "?":
            out.append(".")
            continue
        if ch == "\\":
            following = pattern[i] if i < n else _EOF
            if following in ("}", "/"):
                continue
            i += 1
            if following not in ("*", "?", "\\"):
                shown = following if following else "%!c(int32=-1)"
                raise _Error(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{shown}'"
                )
            out.append("\\" + following)
            continue
        out.append("\\" + ch if ch in _REGEX_SPECIAL else ch)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_to_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    out: list[str] = []
    i, last = 0, len(pattern) - 1
    while i <= last:
        ch = pattern[i]
        if ch == "\\" and i != last:
            out.append("\\" + pattern[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(reversed(out))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


_TEMPLATE_REF = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _expand_template(template: str, match: re.Match[str]) -> str:
    """Go ``Regexp.Expand``: ``$$``, ``$0``/``${0}`` (the match); other names are empty."""

    def ref(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        return match.group(0) if name.isdigit() and int(name) == 0 else ""

    return _TEMPLATE_REF.sub(ref, template) if "$" in template else template


def _go_replace(regex: re.Pattern[str], value: str, replacement: str, replace_all: bool) -> str:
    if not replace_all:
        match = regex.search(value)
        if match is None:
            return value
        return value[: match.start()] + replacement + value[match.end() :]
    out: list[str] = []
    last_end = 0
    search = 0
    n = len(value)
    while search <= n:
        match = regex.search(value, search)
        if match is None:
            break
        start, end = match.span()
        out.append(value[last_end:start])
        if end > last_end or start == 0:
            out.append(_expand_template(replacement, match))
        last_end = end
        if search + 1 > end:
            search += 1
        else:
            search = end
    out.append(value[last_end:])
    return "".join(out)


# -- public API -----------------------------------------------------------------------------------


class Lexer(Model):
    """A configured word processor (BuildKit ``shell.Lex``).

    ``raw_quotes`` keeps quote characters, ``raw_escapes`` keeps escape tokens,
    ``skip_unset_env`` leaves references to unset variables as written,
    ``skip_process_quotes`` treats quotes as ordinary characters.
    """

    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_unset_env: bool = False
    skip_process_quotes: bool = False

    def process(self, text: str, env: Mapping[str, str]) -> WordResult:
        """Process ``text`` once; return the joined result, the split words and looked-up names."""
        state = _Word(self, text, env)
        try:
            result, words = state.process_stop_on(_EOF, self.raw_escapes)
        except _Error as err:
            raise ShellExpansionError(f"failed to process {go_quote_simple(text)}: {err}") from None
        except re.error as err:
            raise ShellExpansionError(f"failed to process {go_quote_simple(text)}: {err}") from None
        return WordResult(
            result, tuple(words), frozenset(state.matched), frozenset(state.unmatched)
        )


def go_quote_simple(text: str) -> str:
    """Double-quote ``text`` the way Go's ``%q`` does (see :func:`dump.go_quote`)."""
    from pybk.core.errors import go_quote

    return go_quote(text)


_LEXERS: dict[str, Lexer] = {}


def _lexer(escape: str) -> Lexer:
    lex = _LEXERS.get(escape)
    if lex is None:
        lex = _LEXERS[escape] = Lexer(escape=escape)
    return lex


def process_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand ``text`` as one word: quote removal and expansion, whitespace preserved."""
    return _lexer(escape).process(text, env).result


def process_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand ``text`` and split it into words (quoted parts never split)."""
    return list(_lexer(escape).process(text, env).words)


def process_word_with_matches(text: str, env: Mapping[str, str], escape: str = "\\") -> WordResult:
    """Like :func:`process_word`, also reporting which names were found (``matched``) and which
    were looked up but unset (``unmatched``)."""
    return _lexer(escape).process(text, env)
