"""Parser behaviour not covered by the conformance data: heredocs, directives, flags framing."""

from __future__ import annotations

import pytest

from pybk.core.directives import detect_syntax, parse_directives, scan_directives
from pybk.core.errors import go_quote
from pybk.frontends.dockerfile.dump import dump_ast
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.parser import parse


def only(data: bytes):
    (node,) = parse(data).children
    return node


def test_heredoc_body_kept_exactly_with_line_endings():
    node = only(b"RUN <<EOF\n  echo a\r\n\techo b\n\nEOF\n")
    (doc,) = node.heredocs
    assert (doc.name, doc.expand, doc.chomp, doc.file_descriptor) == ("EOF", True, False, 0)
    assert doc.content == "  echo a\r\n\techo b\n\n"
    assert (node.start_line, node.end_line) == (1, 5)
    assert node.args == ("<<EOF",)


def test_heredoc_chomp_strips_tabs_and_matches_indented_terminator():
    node = only(b"RUN <<-EOT\n\t\techo a\n\techo b\n\tEOT\n")
    (doc,) = node.heredocs
    assert doc.chomp and doc.content == "\t\techo a\n\techo b\n"
    assert doc.body == "echo a\necho b\n"


@pytest.mark.parametrize("word", ['<<"EOF"', "<<'EOF'", '<<E"O"F', "<<-'EOF'"])
def test_quoted_delimiter_disables_expansion(word):
    node = only(f"COPY {word} /dest\n$HOME\nEOF\n".encode())
    (doc,) = node.heredocs
    assert doc.name == "EOF" and doc.expand is False and doc.content == "$HOME\n"


def test_multiple_heredocs_and_file_descriptors():
    data = b"RUN 3<<A cat /dev/fd/3 && cat <<-B\na1\nA\n\tb1\n\tB\nRUN echo after\n"
    first, second = parse(data).children
    assert [(d.name, d.file_descriptor, d.chomp, d.content) for d in first.heredocs] == [
        ("A", 3, False, "a1\n"),
        ("B", 0, True, "\tb1\n"),
    ]
    assert (first.start_line, first.end_line) == (1, 5)
    assert second.start_line == 6


def test_heredoc_with_space_after_operator():
    (doc,) = only(b"RUN cat << EOF\nx\nEOF\n").heredocs
    assert doc.name == "EOF" and doc.content == "x\n"


def test_heredocs_only_for_run_copy_add_and_not_json():
    assert only(b"ENV a=<<EOF\n").heredocs == ()
    assert only(b'RUN ["cat", "<<EOF"]\n').heredocs == ()
    result = parse(b"LABEL x=<<EOF\nEOF\n")
    assert [c.command for c in result.children] == ["label", "eof"]


def test_heredoc_inside_onbuild():
    node = only(b"ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert node.trigger.command == "run"
    assert node.heredocs[0].content == "echo hi\n"


def test_unterminated_heredoc_is_located():
    with pytest.raises(DockerfileParseError) as info:
        parse(b"FROM a\nRUN <<EOF\necho\n")
    assert info.value.line == 2 and "unterminated heredoc" in str(info.value)


def test_directives_escape_check_syntax_and_bom():
    data = b"\xef\xbb\xbf# syntax=docker/dockerfile:1\n# ESCAPE = `\n#check=error=true\nFROM a\nRUN echo `\n  b\n"
    result = parse(data)
    assert result.directives.syntax == "docker/dockerfile:1"
    assert result.directives.check == "error=true"
    assert result.escape == "`"
    assert result.children[1].args == ("echo   b",)
    assert parse_directives(data).escape == "`"


@pytest.mark.parametrize(
    ("data", "message", "line"),
    [
        (b"# escape=x\nFROM a\n", "invalid escape token 'x'", 1),
        (b"# syntax=a\n# syntax=b\nFROM a\n", "only one syntax parser directive", 2),
        (b"", "file with no instructions", 1),
    ],
)
def test_directive_errors(data, message, line):
    with pytest.raises(DockerfileParseError) as info:
        parse(data)
    assert message in str(info.value) and info.value.line == line


def test_directive_block_ends_at_first_other_line():
    result = parse(b"# hello\n# escape=`\nFROM a\n")
    assert result.escape == "\\" and result.directives.lines == {}


def test_detect_syntax_forms():
    assert detect_syntax(b"#!/usr/bin/env x\n# syntax=img:1 --opt\nFROM a\n").ref == "img:1"
    assert detect_syntax(b"// syntax = other\n").cmdline == "other"
    assert detect_syntax(b'{"syntax": "json/frontend"}').ref == "json/frontend"
    assert detect_syntax(b"FROM a\n") is None
    # BuildKit's order: "#" lines, then "//" lines, then a JSON object of strings
    assert detect_syntax(b"# escape=x\n# syntax=a\n").line == 2
    assert detect_syntax(b"# syntax=a\n# syntax=b\n").ref == "a"
    assert detect_syntax(b"# foo=bar\n# syntax=a\n") is None
    assert detect_syntax(b'{"syntax": "json/frontend", "n": 1}') is None


def test_scan_directives_for_choosing_a_frontend():
    assert scan_directives(b"\xef\xbb\xbf# syntax=yaml.v0\n# check=error=true\nFROM a\n") == {
        "syntax": "yaml.v0", "check": "error=true"}
    assert scan_directives(b"#!/bin/sh\n// syntax=toy --x\n") == {"syntax": "toy --x"}
    assert scan_directives(b"# escape=`\n# escape=\\\n# syntax=a\n") == {"escape": "`"}
    assert scan_directives(b"# unknown=1\n# syntax=a\n") == {}
    assert scan_directives(b"FROM a\n") == {}


def test_flags_quotes_escapes_and_terminator():
    node = only(b'RUN --mount="type=cache,target=/a b" --network=no\\ne -- --not-a-flag x\n')
    assert node.flags == ("--mount=type=cache,target=/a b", "--network=none")
    assert node.args == ("--not-a-flag x",)
    assert dump_ast(b"COPY -- --x /y\n") == '(copy "--x" "/y")'


def test_continuation_comments_blank_lines_and_warning():
    result = parse(b"RUN a \\\n# comment\n\n  b\n")
    (node,) = result.children
    assert node.args == ("a   b",)
    assert (node.start_line, node.end_line) == (1, 4)
    assert [w.line for w in result.warnings] == [4]


def test_invalid_utf8_survives_and_dumps_as_hex():
    assert dump_ast(b"LABEL a=\xff\n") == '(label "a" "\ufffd" "=")'
    assert dump_ast(b"RUN echo \xff\n") == '(run "echo \\xff")'


def test_go_quote():
    assert go_quote('a"b\\c\x00\x7f\u2028é😀') == '"a\\"b\\\\c\\x00\\x7f\\u2028é😀"'
