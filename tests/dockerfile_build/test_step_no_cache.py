"""Per-step cache busting (a pybk extension): ``RUN/COPY/ADD --no-cache`` behind the
``# pybk=no-cache`` directive, ``no-cache: true`` on a YAML step, ``--no-cache-filter`` step
selectors. Each step writes random bytes, so a step that ran again has new contents."""

from __future__ import annotations

import pytest

from pybk.core.errors import InputError
from pybk.frontends.dockerfile.errors import DockerfileParseError

RAND = "head -c 12 /dev/urandom | od -An -tx1 > /{0}"


def _three(marks=("", "", ""), directive="# pybk=no-cache\n") -> str:
    return (directive + "FROM busybox\n"
            + "".join(f"RUN {m}{RAND.format(n)}\n"
                      for m, n in zip(marks, ("one", "two", "three"), strict=True)))


def _texts(b) -> tuple[str, str, str]:
    return b.text("one"), b.text("two"), b.text("three")


def test_run_no_cache_reruns_that_step_and_its_dependents(dfbuild):
    text = _three(("", "--no-cache ", ""))
    first = _texts(dfbuild(text))
    second = _texts(dfbuild(text))
    assert first[0] == second[0]
    assert first[1] != second[1]
    assert first[2] != second[2]


def test_run_no_cache_on_the_last_step_only_reruns_it(dfbuild):
    text = _three(("", "", "--no-cache=true "))
    first = _texts(dfbuild(text))
    second = _texts(dfbuild(text))
    assert first[:2] == second[:2]
    assert first[2] != second[2]


def test_copy_and_add_no_cache_run_again(dfbuild, tmp_path):
    text = ("# pybk=no-cache\nFROM busybox\nRUN " + RAND.format("one") + "\n"
            "COPY --no-cache a /a\nADD --no-cache b /b\nRUN " + RAND.format("two") + "\n")
    b = dfbuild(text, {"a": "a\n", "b": "b\n"})
    meta = [op.get("OpMetadata") or {} for op in b.ops()]
    ignored = sorted(m["description"]["llb.customname"] for m in meta if m.get("ignore_cache"))
    assert ignored == ["[3/5] COPY --no-cache a /a", "[4/5] ADD --no-cache b /b"]
    again = dfbuild(text, context=b.context)
    assert (again.text("a"), again.text("b")) == ("a\n", "b\n")
    assert again.text("one") == b.text("one")
    assert again.text("two") != b.text("two")  # after the busted COPY: ran again


def test_without_the_directive_the_flag_is_refused_located(dfbuild):
    with pytest.raises(DockerfileParseError) as err:
        dfbuild(_three(("", "--no-cache ", ""), directive=""))
    message = str(err.value)
    assert message.startswith("Dockerfile:3: unknown flag: no-cache (--no-cache is a pybk "
                              "extension: opt in with the parser directive '# pybk=no-cache'")


def test_directive_after_other_directives_and_unknown_extension(dfbuild):
    b = dfbuild("# syntax=docker/dockerfile:1\n" + _three(("--no-cache ", "", "")))
    assert b.text("one")
    with pytest.raises(DockerfileParseError) as err:
        dfbuild(_three(directive="# pybk=no-cache,nocache\n"))
    assert str(err.value).startswith("Dockerfile:1: unknown pybk extension 'nocache' (known: "
                                     "no-cache)")
    # the directive block ends at # pybk= (as it does for BuildKit): a later escape= is a comment
    b = dfbuild("# pybk=no-cache\n# escape=`\nFROM busybox\nRUN echo a \\\n b > /x\n")
    assert b.text("x") == "a b\n"


@pytest.mark.parametrize("selector", ["0:3", "#4"])
def test_no_cache_filter_step_selectors(dfbuild, selector):
    text = _three(directive="# a comment: line 1\n")  # RUN two is step 3, on line 4
    first = _texts(dfbuild(text))
    second = _texts(dfbuild(text, opts={"no-cache": selector}))
    assert first[0] == second[0]
    assert first[1] != second[1]
    assert first[2] != second[2]


def test_no_cache_filter_named_stage_step_and_bad_selectors(dfbuild):
    text = ("FROM busybox AS base\nRUN " + RAND.format("one") + "\n"
            "FROM base AS final\nRUN " + RAND.format("two") + "\nRUN " + RAND.format("three")
            + "\n")
    first = _texts(dfbuild(text))
    second = _texts(dfbuild(text, opts={"no-cache": "final:3"}))
    assert first[:2] == second[:2] and first[2] != second[2]
    for bad in ("final:x", "#0", "#x", ":2"):
        with pytest.raises(InputError, match=r"invalid no-cache filter"):
            dfbuild(text, opts={"no-cache": bad})


def test_a_stage_using_a_busted_stage_runs_again(dfbuild):
    text = ("FROM busybox AS a\nRUN " + RAND.format("r") + "\n"
            "FROM busybox\nCOPY --from=a /r /r\nRUN cp /r /copied\n")
    first = dfbuild(text)
    second = dfbuild(text, opts={"no-cache": "a"})
    cached = dfbuild(text)
    assert first.text("r") != second.text("r")
    assert second.text("copied") == second.text("r")  # not the first build's cached result
    assert cached.text("copied") == second.text("r")
