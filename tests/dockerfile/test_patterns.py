"""``.dockerignore`` reading and BuildKit's pattern matching."""

from __future__ import annotations

import pytest

from pybk.core.fs.patterns import PatternError, PatternMatcher, clean_path
from pybk.frontends.dockerfile.dockerignore import ignore_file_for, load_patterns, read_patterns

CASES = [
    (["*.md"], "README.md", True),
    (["*.md"], "docs/README.md", False),
    (["**/*.md"], "docs/deep/README.md", True),
    (["**/*.md"], "README.md", True),
    (["docs"], "docs/a/b.txt", True),
    (["docs/"], "docs/a.txt", True),
    (["docs/*"], "docs", False),
    (["docs/*"], "docs/x", True),
    (["docs/**"], "docs/a/b", True),
    (["docs/**"], "docsx", False),
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),
    (["[a-c]x"], "bx", True),
    (["[^a-c]x"], "bx", False),
    (["[^a-c]x"], "dx", True),
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["*", "!keep"], "keep", False),
    (["*", "!keep"], "drop", True),
    (["*", "!keep", "keep"], "keep", True),
    (["node_modules", "!node_modules/x"], "node_modules/x/y", False),
    (["/abs/path"], "abs/path", True),
    (["./rel/../x"], "x", True),
    (["**"], "anything/at/all", True),
    (["**/tmp/**"], "a/tmp/b", True),
    (["*/tmp/*"], "x/tmp/f", True),
    (["*/tmp/*"], "tmp/f", False),
    (["a.b"], "axb", False),
    (["a+b(c)"], "a+b(c)", True),
    (["**foo"], "barfoo", True),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), CASES)
def test_matches(patterns, path, expected):
    assert PatternMatcher(read_patterns("\n".join(patterns))).matches(path) is expected


def test_can_skip_dir():
    matcher = PatternMatcher(["vendor", "build", "!build/keep.txt", "cache", "!**/*.go"])
    assert matcher.can_skip_dir("vendor")
    assert not matcher.can_skip_dir("build")  # an exclusion starts inside it
    assert matcher.can_skip_dir("cache")  # wildcard re-includes do not count (BuildKit)
    assert not matcher.can_skip_dir("src")  # not matched at all


def test_bad_patterns():
    for bad in (["!"], ["[a-"], ["a\\"]):
        with pytest.raises(PatternError):
            PatternMatcher(bad)


def test_read_patterns_rules():
    text = "\ufeff# comment\n  \n /lead \n!/neg/./x\n  # not a comment\n*.tmp\r\n"
    assert read_patterns(text.encode()) == ["lead", "!neg/x", "# not a comment", "*.tmp"]
    assert clean_path("//a/../b/") == "/b" and clean_path("") == "."


def test_dockerfile_specific_ignore_file_wins(tmp_path):
    (tmp_path / ".dockerignore").write_text("root\n")
    dockerfile = tmp_path / "app.Dockerfile"
    dockerfile.write_text("FROM a\n")
    assert load_patterns(str(tmp_path), str(dockerfile)) == ["root"]
    (tmp_path / "app.Dockerfile.dockerignore").write_text("specific\n")
    assert ignore_file_for(str(tmp_path), str(dockerfile)).endswith("app.Dockerfile.dockerignore")
    assert load_patterns(str(tmp_path), str(dockerfile)) == ["specific"]
    assert load_patterns(str(tmp_path / "missing")) == []
