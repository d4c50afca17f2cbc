"""Typed instructions: every instruction's flags (good and bad) and BuildKit's validations."""

from __future__ import annotations

import pytest

from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.instructions import Expander, parse_dockerfile
from pybk.frontends.dockerfile.mounts import Mount, parse_mount
from pybk.frontends.dockerfile.values import go_parse_duration, parse_chmod, parse_signal


def first(text: str):
    """The first instruction after ``FROM scratch``."""
    dockerfile = parse_dockerfile(("FROM scratch\n" + text).encode())
    return dockerfile.stages[0].instructions[0]


def error(text: str) -> DockerfileParseError:
    with pytest.raises(DockerfileParseError) as info:
        parse_dockerfile(("FROM scratch\n" + text).encode())
    assert info.value.line is not None and info.value.filename == "Dockerfile"
    return info.value


def test_stages_meta_args_and_locations():
    df = parse_dockerfile(
        b"ARG V=1\nFROM --platform=$BUILDPLATFORM img:$V AS Build\nRUN a\nFROM build\n"
    )
    assert [a.args[0].key for a in df.meta_args] == ["V"]
    build, final = df.stages
    assert (build.name, build.base_name, build.platform) == ("build", "img:$V", "$BUILDPLATFORM")
    assert build.from_instruction.stage_name_as_written == "Build"
    assert str(build.instructions[0].location) == "Dockerfile:3"
    assert df.stage("BUILD") is build and df.stage(1) is final


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a AS 1x\n", 'invalid name for build stage: "1x"'),
        ("FROM a b\n", "FROM requires either one or three arguments"),
        ("FROM --plat=x a\n", "unknown flag: plat"),
        ("FROM --platform a\n", "missing a value on flag: platform"),
        ("FROM --platform=a --platform=b c\n", "duplicate flag specified: platform"),
    ],
)
def test_from_errors(text, message):
    with pytest.raises(DockerfileParseError) as info:
        parse_dockerfile(text.encode())
    assert message in str(info.value)


def test_instruction_before_from_is_an_error():
    with pytest.raises(DockerfileParseError) as info:
        parse_dockerfile(b"RUN x\nFROM a\n")
    assert "no build stage in current context" in str(info.value) and info.value.line == 1


def test_unknown_instruction_suggests():
    assert "unknown instruction: FORM (did you mean FROM?)" in str(error("FORM x\n"))


def test_run_flags():
    run = first(
        'RUN --mount=type=cache,target=/c,sharing=locked,mode=0700,uid=1 --network=none --security=insecure ["a","b"]\n'
    )
    assert run.command == ("a", "b") and not run.prepend_shell
    assert run.network == "none" and run.security == "insecure"
    assert run.mounts == (
        Mount(type="cache", target="/c", sharing="locked", mode=0o700, uid=1, read_only=False),
    )
    shell = first("RUN echo hi\n")
    assert shell.command == ("echo hi",) and shell.prepend_shell and shell.mounts == ()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--mout=type=bind", "unknown flag: mout (did you mean mount?)"),
        ("--network=bridge", 'unsupported network mode "bridge"'),
        ("--security=weird", 'unsupported security mode "weird"'),
        ("--network=none --network=host", "duplicate flag specified: network"),
        ("--mount=type=nfs,target=/x", 'unsupported mount type "nfs"'),
        ("--mount=type=bind,target=/x,mode=0700", 'mode not allowed for "bind" type mounts'),
        (
            "--mount=type=bind,target=/x,sharing=shared",
            "unexpected key 'sharing' for mount type 'bind'",
        ),
        ("--mount=type=cache,target=/x,sharing=sometimes", 'unsupported sharing value "sometimes"'),
        ("--mount=type=cache,target=/x,size=1m", "unexpected key 'size' for mount type 'cache'"),
        ("--mount=type=tmpfs,target=/x,size=lots", "invalid value for size: lots"),
        ("--mount=type=bind,target=/x,required", "unexpected key 'required' for mount type 'bind'"),
        (
            "--mount=type=bind,targt=/x",
            "unexpected key 'targt' in 'targt=/x' (did you mean target?)",
        ),
        ("--mount=type=bind,ro=maybe,target=/x", "invalid value for ro: maybe"),
        ("--mount=type=cache,target=/x,uid=-1", "invalid value -1 for uid"),
        ("--mount=type=cache,target=/x,mode=9", "invalid value 9 for mode"),
        ("--mount=type=secret,from=x,id=a", "secret mount should not have a from"),
        ("--mount=type=secret", "one of source, target required"),
        ("--mount=type=secret,source=a,id=b", "both source and id can't be set"),
        ("--mount=type=bind,from=$X,target=/x", "'from' doesn't support variable expansion"),
        ("--mount='type=\"bind'", "failed to parse csv mounts"),
        ("--mount=bogus", "invalid field 'bogus' must be a key=value pair"),
    ],
)
def test_run_flag_errors(flags, message):
    err = error(f"RUN {flags} true\n")
    assert message in str(err) and err.line == 2


def test_mount_defaults_and_deferred_expansion():
    assert parse_mount("type=secret,id=aws,required", lambda v: v) == Mount(
        type="secret", cache_id="aws", required=True, read_only=True
    )
    assert parse_mount("type=tmpfs,target=/t,size=64m", lambda v: v).size_limit == 64 * 1024**2
    assert parse_mount("type=ssh,required=false", lambda v: v).required is False
    run = first("RUN --mount=type=$T,target=/x true\n")
    assert run.mounts is None
    assert run.expanded_mounts(Expander({"T": "tmpfs"}).word)[0].type == "tmpfs"


def test_copy_and_add_flags():
    copy = first(
        "COPY --from=build --chown=1:2 --chmod=u+x,go=rX --link --parents --exclude=*.md --exclude=x a b /dst/\n"
    )
    assert (copy.sources, copy.dest, copy.from_, copy.chown, copy.chmod) == (
        ("a", "b"),
        "/dst/",
        "build",
        "1:2",
        "u+x,go=rX",
    )
    assert copy.link and copy.parents and copy.excludes == ("*.md", "x")
    add = first(
        "ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false --link=false --chmod=755 https://x/a.tgz /d\n"
    )
    assert (add.checksum, add.keep_git_dir, add.unpack, add.link, add.chmod) == (
        "sha256:abc",
        True,
        False,
        False,
        "755",
    )
    assert first("ADD a b\n").unpack is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("COPY --checksum=sha256:x a b\n", "unknown flag: checksum"),
        ("COPY --from=$STAGE a b\n", "doesn't support variable expansion"),
        ("COPY a\n", "COPY requires at least two arguments"),
        ("ADD a\n", "ADD requires at least two arguments"),
        ("ADD --parents a b\n", "unknown flag: parents"),
        ("COPY --link=yes a b\n", "expecting boolean value for flag link, not: yes"),
        ("COPY --link= a b\n", "expecting boolean value for flag link, not: "),
        ("COPY --chmod=99x a b\n", "invalid chmod parameter"),
        ("COPY a <<EOF\nEOF\n", "COPY cannot accept a heredoc as a destination"),
    ],
)
def test_copy_add_errors(text, message):
    assert message in str(error(text))


def test_copy_heredoc_sources():
    copy = first("COPY <<A <<'B' /dst/\nhello $X\nA\n\traw $X\nB\n")
    assert copy.sources == ()
    assert [(c.path, c.data, c.expand) for c in copy.source_contents] == [
        ("A", "hello $X\n", True),
        ("B", "\traw $X\n", False),
    ]


def test_healthcheck():
    hc = first(
        "HEALTHCHECK --interval=1m30s --timeout=5s --start-period=0 --start-interval=1.5ms --retries=3 CMD curl -f x\n"
    )
    assert hc.test == ("CMD-SHELL", "curl -f x")
    assert (hc.interval, hc.timeout, hc.start_period, hc.start_interval, hc.retries) == (
        90_000_000_000,
        5_000_000_000,
        0,
        1_500_000,
        3,
    )
    assert first('HEALTHCHECK CMD ["a", "b"]\n').test == ("CMD", "a", "b")
    assert first("HEALTHCHECK NONE\n").test == ("NONE",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("HEALTHCHECK --interval=1us CMD x\n", 'Interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --timeout=5 CMD x\n", 'time: missing unit in duration "5"'),
        ("HEALTHCHECK --timeout=5x CMD x\n", 'time: unknown unit "x" in duration "5x"'),
        ("HEALTHCHECK --retries=-1 CMD x\n", "--retries cannot be negative (-1)"),
        ("HEALTHCHECK --retries=x CMD x\n", 'strconv.ParseInt: parsing "x"'),
        ("HEALTHCHECK NONE x\n", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK FOO x\n", 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK CMD\n", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --intervl=1s CMD x\n", "unknown flag: intervl (did you mean interval?)"),
    ],
)
def test_healthcheck_errors(text, message):
    assert message in str(error(text))


def test_simple_instructions():
    assert first("ENV a=1 b='2 3'\n").pairs[1].value == "'2 3'"
    assert first("ENV a 1 2\n").pairs[0].no_delim
    assert first("LABEL x=y\n").pairs[0].key == "x"
    assert first("EXPOSE 80 53/udp\n").ports == ("80", "53/udp")
    assert first('VOLUME ["/a", "/b"]\n').volumes == ("/a", "/b")
    assert first("USER app:grp\n").user == "app:grp"
    assert first("WORKDIR /w\n").path == "/w"
    assert first("STOPSIGNAL SIGKILL\n").signal == "SIGKILL"
    assert first('SHELL ["/bin/bash", "-c"]\n').shell == ("/bin/bash", "-c")
    assert first("MAINTAINER me\n").maintainer == "me"
    arg = first("ARG a b=2 c=\n").args
    assert [(s.key, s.default) for s in arg] == [("a", None), ("b", "2"), ("c", "")]
    cmd = first("CMD []\n")
    assert cmd.command == () and not cmd.prepend_shell
    entry = first("ENTRYPOINT exec app\n")
    assert entry.command == ("exec app",) and entry.prepend_shell


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SHELL /bin/sh\n", "SHELL requires the arguments to be in JSON form"),
        ("USER\n", "USER requires exactly one argument"),
        ("WORKDIR\n", "WORKDIR requires exactly one argument"),
        ("STOPSIGNAL SIGNOPE\n", "invalid signal: SIGNOPE"),
        ("EXPOSE\n", "EXPOSE requires at least one argument"),
        ('VOLUME [""]\n', "VOLUME specified can not be an empty string"),
        ("ARG =x\n", "ARG names can not be blank"),
        ("ENV --x=1 a=b\n", "unknown flag: x"),
        ("ENV =b\n", "ENV names can not be blank"),
        ("LABEL\n", "LABEL requires at least one argument"),
        ("ONBUILD ONBUILD RUN x\n", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x\n", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER x\n", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD\n", "ONBUILD requires at least one argument"),
        ("CMD --x=1 a\n", "unknown flag: x"),
    ],
)
def test_simple_instruction_errors(text, message):
    assert message in str(error(text))


def test_onbuild_expression_keeps_heredocs():
    onbuild = first("onbuild RUN --mount=type=cache,target=/c <<EOF\necho hi\nEOF\n")
    assert onbuild.trigger_keyword == "RUN"
    assert onbuild.expression == "RUN --mount=type=cache,target=/c <<EOF\necho hi\nEOF"


def test_value_helpers():
    assert go_parse_duration("1h2m3.5s") == 3_723_500_000_000
    assert go_parse_duration("-1.5µs") == -1500
    assert (
        parse_signal("9") == 9 and parse_signal("sigterm") == 15 and parse_signal("RTMIN+3") == 37
    )
    assert parse_chmod("0755") == 0o755 and parse_chmod("u=rwX,g=u") == "u=rwX,g=u"
    for bad in ("", "1.2.3", "5s5"):
        with pytest.raises(ValueError):
            go_parse_duration(bad)


def test_expander_tracks_names_and_locates_errors():
    df = parse_dockerfile(b"FROM a\nWORKDIR ${X:?need X}\n")
    workdir = df.stages[0].instructions[0]
    expander = Expander({"Y": "1"}, location=workdir.location)
    assert expander.words("$Y ${Z:-2}") == ["1", "2"]
    assert expander.used == {"Y"} and expander.undefined == {"Z"}
    with pytest.raises(DockerfileParseError) as info:
        expander.word(workdir.path)
    assert info.value.line == 2 and "X: need X" in str(info.value)


def test_stopsignal_expanding_to_an_invalid_signal_is_a_located_error():
    from pybk.frontends.dockerfile.convert import dockerfile_to_llb

    with pytest.raises(DockerfileParseError) as info:
        dockerfile_to_llb(b"FROM scratch\nARG S=bogus\nSTOPSIGNAL $S\n")
    assert info.value.line == 3 and "invalid signal: bogus" in str(info.value)
