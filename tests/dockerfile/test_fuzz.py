"""Generated and mutated Dockerfiles: the only errors ever raised are located parse errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybk.frontends.dockerfile.checks import run_checks
from pybk.frontends.dockerfile.dump import dump_ast
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.instructions import parse_dockerfile
from pybk.frontends.dockerfile.shell import ShellExpansionError

FRAGMENTS = [
    "FROM alpine", "FROM --platform=$BUILDPLATFORM img:${TAG:-1} AS build", "from x as Y",
    "FROM scratch AS 9bad", "ARG A=1 B", "ARG", "ENV a=1 b=\"2 3\"", "ENV legacy value",
    "ENV PATH", "LABEL k=v", "RUN echo hi", "RUN [\"a\", \"b\"]", "RUN [\"a\", [1]]",
    "RUN --mount=type=cache,target=/c --network=none make", "RUN --mount=type=secret,id=x,required true",
    "RUN --mount=type=bind,size=1 x", "RUN <<EOF", "RUN <<-'EOT' cat", "COPY <<A <<B /d/",
    "COPY --from=build --chmod=755 a b /c/", "COPY --chmod=u+x a /b", "ADD --checksum=sha256:00 http://x/y /z",
    "ADD a", "EOF", "A", "B", "\tEOT", "WORKDIR ${W:?unset}", "WORKDIR rel", "USER u:g",
    "EXPOSE 80/TCP 1.2.3.4:80:80", "VOLUME [\"/v\"]", "VOLUME", "CMD x", "ENTRYPOINT []",
    "HEALTHCHECK --interval=1us CMD x", "HEALTHCHECK --retries=2 CMD [\"c\"]", "HEALTHCHECK NONE",
    "ONBUILD RUN x", "ONBUILD ONBUILD x", "SHELL [\"sh\", \"-c\"]", "SHELL sh", "STOPSIGNAL 9",
    "STOPSIGNAL NOPE", "MAINTAINER me", "FORM typo", "# comment", "# escape=`", "# syntax=x",
    "# check=skip=all;error=true", "", "   ", "RUN a \\", "RUN a `", "  continued", "COPY ${x/a/b} /d",
    "RUN -- --not-flag", "COPY --link=maybe a b", "RUN --bad=1 x", "LABEL \"unterminated",
]  # fmt: skip

lines = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=30)), min_size=0, max_size=14
)
pytestmark = pytest.mark.slow

dockerfiles = lines.map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, position, value in edits:
        position = position % (len(buf) + 1)
        if kind == 0:
            buf.insert(position, value)
        elif kind == 1 and buf:
            del buf[min(position, len(buf) - 1)]
        elif buf:
            buf[min(position, len(buf) - 1)] = value
    return bytes(buf)


edits = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 10_000),
        st.sampled_from(b"\\`\"'$#{}[]<-= \t\n\r\x00\xff\xe2ab"),
    ),
    max_size=6,
)


def exercise(data: bytes) -> None:
    try:
        dump_ast(data)
        dockerfile = parse_dockerfile(data)
        assert dockerfile.stages or dockerfile.meta_args
        assert all(i.location.start_line >= 1 for s in dockerfile.stages for i in s.instructions)
        run_checks(data)
    except DockerfileParseError as err:
        assert isinstance(err.line, int) and err.line >= 1, err
    except ShellExpansionError as err:  # pragma: no cover - must be located instead
        raise AssertionError(f"unlocated expansion error: {err}") from err


COMMON = {
    "derandomize": True,
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=3000, **COMMON)
@given(dockerfiles)
def test_generated_dockerfiles(data):
    exercise(data)


@settings(max_examples=3000, **COMMON)
@given(dockerfiles, edits)
def test_mutated_dockerfiles(data, changes):
    exercise(mutate(data, changes))


@settings(max_examples=2000, **COMMON)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    exercise(data)


@settings(max_examples=2000, **COMMON)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=20), edits)
def test_mutated_fragment_files(fragments, changes):
    exercise(mutate("\n".join(["FROM a", *fragments]).encode(), changes))
