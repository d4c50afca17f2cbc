"""Property: any graph built with State marshals, unmarshals and re-marshals identically."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybk.core import llb
from pybk.core.serialize import sha256_digest

AMD64 = llb.Platform(architecture="amd64", os="linux")
NAMES = st.text(alphabet="abcxyz019._-", min_size=1, max_size=8)
PATHS = st.lists(st.sampled_from(["a", "b", "dir", "x.txt", "*.c"]), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
TEXT = st.text(max_size=20)


@st.composite
def sources(draw) -> llb.State:
    kind = draw(st.sampled_from(["image", "local", "git", "http", "oci", "scratch"]))
    name = draw(st.text(alphabet="abcxyz019", min_size=1, max_size=8))
    if kind == "image":
        return llb.image(
            f"{name}:{draw(st.sampled_from(['1', 'latest']))}",
            platform=draw(st.sampled_from([None, "linux/arm64"])),
            resolve_mode=draw(st.sampled_from([None, "pull", "local"])),
        )
    if kind == "local":
        return llb.local(
            name,
            include_patterns=draw(st.lists(NAMES, max_size=2)),
            exclude_patterns=draw(st.lists(NAMES, max_size=2)),
        )
    if kind == "git":
        return llb.git(
            f"https://example.com/{name}.git",
            draw(st.sampled_from([None, "main", "v1"])),
            keep_git_dir=draw(st.booleans()),
        )
    if kind == "http":
        return llb.http(
            f"https://example.com/{name}",
            filename=draw(st.sampled_from([None, "f"])),
            perm=draw(st.sampled_from([None, 0o644])),
        )
    if kind == "oci":
        return llb.oci_layout(f"{name}@sha256:" + "a" * 64)
    return llb.scratch()


def mounts(draw, pool: list[llb.State]) -> list[llb.MountSpec]:
    dests = draw(
        st.lists(
            st.sampled_from(["/m1", "/m2", "/cache", "/tmp", "/run/s", "/ssh"]),
            unique=True,
            max_size=4,
        )
    )
    out = []
    for dest in dests:
        kind = draw(st.sampled_from(["bind", "cache", "tmpfs", "secret", "ssh"]))
        if kind == "bind":
            out.append(
                llb.mount(
                    dest,
                    draw(st.sampled_from(pool)),
                    readonly=draw(st.booleans()),
                    selector=draw(st.sampled_from(["", "sub"])),
                )
            )
        elif kind == "cache":
            out.append(
                llb.cache_mount(
                    dest, draw(NAMES), sharing=draw(st.sampled_from(list(llb.CacheSharingOpt)))
                )
            )
        elif kind == "tmpfs":
            out.append(llb.tmpfs(dest, size=draw(st.integers(0, 1 << 30))))
        elif kind == "secret":
            out.append(llb.secret(dest, draw(NAMES), optional=draw(st.booleans())))
        else:
            out.append(llb.ssh(dest, draw(NAMES)))
    return out


def file_chain(draw, pool: list[llb.State]) -> llb.FileChain:
    chain = llb.FileChain()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["copy", "mkdir", "mkfile", "rm", "symlink"]))
        owner = draw(st.sampled_from([None, 0, "app", "app:staff", (1, 2)]))
        if kind == "copy":
            chain = chain.copy(
                draw(st.sampled_from(pool)),
                draw(PATHS),
                draw(PATHS),
                owner=owner,
                mode=draw(st.sampled_from([-1, 0o755])),
                allow_wildcard=draw(st.booleans()),
                include_patterns=draw(st.lists(NAMES, max_size=2)),
                timestamp=draw(st.sampled_from([None, 0, 10**18])),
            )
        elif kind == "mkdir":
            chain = chain.mkdir(draw(PATHS), 0o755, draw(st.booleans()), owner=owner)
        elif kind == "mkfile":
            chain = chain.mkfile(draw(PATHS), 0o644, draw(st.binary(max_size=16)), owner=owner)
        elif kind == "rm":
            chain = chain.rm(draw(PATHS), allow_not_found=draw(st.booleans()))
        else:
            chain = chain.symlink(draw(PATHS), draw(PATHS))
    return chain


@st.composite
def graphs(draw) -> llb.State:
    pool = [draw(sources()) for _ in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(1, 8))):
        base = draw(st.sampled_from(pool))
        step = draw(st.sampled_from(["run", "file", "merge", "diff", "meta", "mount_out"]))
        if step == "run":
            args = draw(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3)))
            new = base.run(
                args,
                mounts=mounts(draw, pool),
                network=draw(st.sampled_from([None, *llb.NetMode])),
                ignore_cache=draw(st.booleans()),
                custom_name=draw(st.one_of(st.none(), TEXT)),
            ).root()
        elif step == "mount_out":
            run = base.run(["true"], mounts=[llb.mount("/out", draw(st.sampled_from(pool)))])
            new = run.get_mount("/out")
        elif step == "file":
            new = base.file(file_chain(draw, pool))
        elif step == "merge":
            new = llb.merge(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3)))
        elif step == "diff":
            new = llb.diff(base, draw(st.sampled_from(pool)))
        else:
            new = base.env(draw(NAMES), draw(TEXT)).dir(draw(PATHS)).user(draw(NAMES))
        pool.append(new)
    return pool[-1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_marshal_unmarshal_remarshal_is_identical(state):
    definition = state.marshal(AMD64)
    if state.is_scratch:
        assert definition.ops == ()
        return
    data = definition.to_bytes()
    again = llb.Definition.from_bytes(data)
    assert again.to_bytes() == data and again == definition
    ops = again.load()
    digests = definition.digests()
    assert list(ops) == digests, "ops are unique and in definition order"
    seen: set[str] = set()
    for raw, (digest, op) in zip(definition.ops, ops.items(), strict=True):
        assert op.marshal() == raw
        assert sha256_digest(raw) == digest
        assert all(i.digest in seen for i in op.inputs), "inputs come before their users"
        seen.add(digest)
    terminal = list(ops.values())[-1]
    assert terminal.op is None and terminal.inputs[0].digest == definition.head()
    assert state.marshal(AMD64).to_bytes() == data, "marshalling is deterministic"


def _mutations(value, path=()):
    """Every way of breaking one value of a JSON document: wrong types, unknown keys."""
    wrong = [None, True, 7, "s", [], {}, 2.5, "@@not-base64@@", -1, 99999]
    if isinstance(value, dict):
        yield path + ("<unknown>",), {**value, "no_such_field": 1}
        for key, inner in value.items():
            for where, broken in _mutations(inner, path + (key,)):
                yield where, {**value, key: broken}
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            for where, broken in _mutations(inner, path + (i,)):
                yield where, [*value[:i], broken, *value[i + 1:]]
    for candidate in wrong:
        if type(candidate) is not type(value) or candidate != value:
            yield path, candidate


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_fast_decoding_agrees_with_the_checked_decoder(state):
    """Decoding without error bookkeeping builds the same op as the checked decoder, and
    refuses whatever it refuses (which then names the place)."""
    from pybk.core.errors import InputError
    from pybk.core.llb.fastcodec import decoder
    from pybk.core.llb.ops import FrozenDict, Op, _decode_value, _specs, decode
    from pybk.core.serialize import loads

    fast = decoder(Op, _specs, FrozenDict)
    for data in state.marshal().ops:
        raw = loads(data)
        assert fast(raw) == _decode_value(Op, raw, "op")
        for _, broken in _mutations(raw):
            try:
                expected = _decode_value(Op, broken, "op")
            except InputError as exc:
                with pytest.raises(Exception):  # noqa: B017 - any refusal: decode() says why
                    fast(broken)
                with pytest.raises(InputError) as caught:
                    decode(Op, broken, "op")
                assert caught.value.message == exc.message
            else:
                assert fast(broken) == expected
