"""Shell expansion beyond the conformance data: ``#``/``%``/``/`` patterns (expectations
cross-checked with bash where BuildKit follows POSIX), BuildKit-specific forms, name capture."""

from __future__ import annotations

import pytest

from pybk.frontends.dockerfile.shell import (
    Lexer,
    ShellExpansionError,
    process_word,
    process_word_with_matches,
    process_words,
)

ENV = {
    "v": "abc.tar.gz",
    "p": "/usr/local/bin/tool",
    "e": "",
    "r": "aaa",
    "s": "a*b?c",
    "u": "héllo wörld",
    "d": "x.y.z",
}

# (word, expected) — identical to bash's output for the same variables.
POSIX_CASES = [
    ("${v#*.}", "tar.gz"),
    ("${v##*.}", "gz"),
    ("${v%.*}", "abc.tar"),
    ("${v%%.*}", "abc"),
    ("${v#abc}", ".tar.gz"),
    ("${v#xyz}", "abc.tar.gz"),
    ("${v%gz}", "abc.tar."),
    ("${v%%gz}", "abc.tar."),
    ("${p#/*/}", "local/bin/tool"),
    ("${p##*/}", "tool"),
    ("${p%/*}", "/usr/local/bin"),
    ("${p%%/*}", ""),
    ("${v/a/X}", "Xbc.tar.gz"),
    ("${v//a/X}", "Xbc.tXr.gz"),
    ("${v/./-}", "abc-tar.gz"),
    ("${v//./-}", "abc-tar-gz"),
    ("${v/tar/}", "abc..gz"),
    ("${p//\\//:}", ":usr:local:bin:tool"),
    ("${r/a/b}", "baa"),
    ("${r//a/b}", "bbb"),
    ("${e#x}", ""),
    ("${e%x}", ""),
    ("${e/x/y}", ""),
    ("${unset#x}", ""),
    ("${unset//a/b}", ""),
    ("${v#?}", "bc.tar.gz"),
    ("${v##?}", "bc.tar.gz"),
    ("${v%?}", "abc.tar.g"),
    ("${v%%?}", "abc.tar.g"),
    ("${v#*}", "abc.tar.gz"),
    ("${v##*}", ""),
    ("${v%*}", "abc.tar.gz"),
    ("${v%%*}", ""),
    ("${s#a\\*}", "b?c"),
    ("${s/\\?/Q}", "a*bQc"),
    ("${s//\\*/S}", "aSb?c"),
    ("${u#h?}", "llo wörld"),
    ("${u% *}", "héllo"),
    ("${u/ö/o}", "héllo world"),
    ("${d%.*}", "x.y"),
    ("${d%%.*}", "x"),
    ("${d#*.}", "y.z"),
    ("${d##*.}", "z"),
    ("${v/a*g/Z}", "Zz"),
    ("${v//?/_}", "__________"),
    ("${v/c.t/C}", "abCar.gz"),
    ("${p#/usr}", "/local/bin/tool"),
    ("${v%.tar*}", "abc"),
    ("pre${v%%.*}post", "preabcpost"),
    ('"${v#abc}"', ".tar.gz"),
]


@pytest.mark.parametrize(("word", "expected"), POSIX_CASES, ids=[c[0] for c in POSIX_CASES])
def test_pattern_forms_match_posix(word, expected):
    assert process_word(word, ENV) == expected


# Where BuildKit deliberately differs from bash.
BUILDKIT_CASES = [
    ("${v//[a]/X}", "abc.tar.gz"),  # no bracket expressions: "[a]" is literal
    ("${r/#a/b}", "aaa"),  # no "/#" anchoring: "#a" is a literal pattern
    ("${r//a/$}", "$$$"),  # a lone "$" in the replacement stays literal
]


@pytest.mark.parametrize(("word", "expected"), BUILDKIT_CASES)
def test_buildkit_specific_pattern_forms(word, expected):
    assert process_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${v:#x}", "unsupported modifier (:#) in substitution"),
        ("${v:%x}", "unsupported modifier (:%) in substitution"),
        ("${v:=x}", "unsupported modifier (:=) in substitution"),
        ("${v=x}", "unsupported modifier (=) in substitution"),
        ("${#v}", "unsupported modifier (v) in substitution"),
        ("${:-x}", "bad substitution"),
        ("${v^^}", "unsupported modifier (^) in substitution"),
        ("${r//a}", "missing '/' in ${}"),
        ("${r/a/b", "missing '}'"),
        ("${v#\\x}", "invalid escape '\\x'"),
        ("${unset:?custom message}", "unset: custom message"),
        ("${e:?}", "e: is not allowed to be empty"),
        ("${unset?}", "unset: is not allowed to be unset"),
    ],
)
def test_error_forms(word, message):
    with pytest.raises(ShellExpansionError) as info:
        process_word(word, ENV)
    assert message in str(info.value)
    assert str(info.value).startswith("failed to process ")


def test_matches_report_used_and_unset_names():
    result = process_word_with_matches("$v ${missing:-x} ${e} $1 ${other#y}", ENV)
    assert result.matched == frozenset({"v", "e"})
    assert result.unmatched == frozenset({"missing", "1", "other"})
    assert result.result == "abc.tar.gz x   "


def test_backtick_escape_token():
    assert process_word("a`$v b", ENV, escape="`") == "a$v b"
    assert process_word("a\\b", ENV, escape="`") == "a\\b"


def test_words_split_expansion_results_but_not_quotes():
    env = {"x": "1 2"}
    assert process_words("a$x 'b c' \"$x\"", env) == ["a1", "2", "b c", "1 2"]
    assert process_words('"" a', env) == ["a"]


def test_lexer_modes():
    raw = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert raw.process("'a b' \"c\\$d\" $unset ${unset:-x}", {}).words == (
        "'a b'",
        '"c\\$d"',
        "$unset",
        "${unset:-x}",
    )
    assert Lexer(skip_process_quotes=True).process("'a b'", {}).words == ("'a", "b'")
