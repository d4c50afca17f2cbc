from pybk.core.didyoumean import closest, did_you_mean, levenshtein


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_buildkit_rule_is_strict_for_short_words():
    assert closest("COPPY", ["COPY", "RUN"]) == "COPY"
    assert closest("rnu", ["run", "copy"]) is None  # too far for a three-letter word
    assert closest("RUN", ["run"], case_sensitive=False) == "run"
    assert closest("zzzzzz", ["run", "copy"]) is None


def test_loose_rule_accepts_transpositions_and_prefixes():
    assert closest("rnu", ["run", "copy"], loose=True) == "run"
    assert closest("maximum", ["min", "max"], loose=True) == "max"
    assert closest("zzzzzz", ["run", "copy"], loose=True) is None


def test_message_and_quoting():
    assert did_you_mean("buidl", ["build", "prune"]) == " (did you mean build?)"
    assert did_you_mean("buidl", ["build"], quote='"') == ' (did you mean "build"?)'
    assert did_you_mean("xyz", ["build"]) == ""
