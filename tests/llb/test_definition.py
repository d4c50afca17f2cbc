"""Definition: serialization, digests, validation of malformed input."""

from __future__ import annotations

import pytest

from pybk.core import llb
from pybk.core.errors import InputError
from pybk.core.llb.definition import _check_acyclic
from pybk.core.llb.dump import dump_dot, dump_llb
from pybk.core.serialize import canonical_dumps, loads, sha256_digest

AMD64 = llb.Platform(architecture="amd64", os="linux")


def sample() -> llb.State:
    base = llb.image("busybox").env("A", "b").dir("/w")
    ctx = llb.local("context")
    built = base.run(
        "cp -r /src /w/out",
        mounts=[llb.mount("/src", ctx, readonly=True), llb.cache_mount("/c", "c")],
        custom_name="build",
    )
    files = llb.scratch().file(llb.copy(built.root(), "out", "/app/").mkfile("/app/v", 0o644, b"1"))
    return llb.merge([base, llb.diff(base, built.root()), files])


def test_round_trip_is_byte_identical():
    definition = sample().marshal(AMD64)
    data = definition.to_bytes()
    again = llb.Definition.from_bytes(data)
    assert again == definition and again.to_bytes() == data
    ops = again.load()
    assert list(ops) == definition.digests()
    for raw, (digest, op) in zip(definition.ops, ops.items(), strict=True):
        assert op.marshal() == raw and op.digest == digest == sha256_digest(raw)
    assert sample().marshal(AMD64).to_bytes() == data


def test_document_format():
    definition = sample().marshal(AMD64)
    doc = loads(definition.to_bytes())
    assert set(doc) == {"def", "metadata"}
    assert all(isinstance(op, str) for op in doc["def"])
    assert doc["def"][-1] == canonical_dumps({"inputs": [{"digest": definition.head()}]}).decode()
    assert definition.head() == definition.digests()[-2]
    assert doc["metadata"][definition.digests()[2]] == {"description": {"llb.customname": "build"}}


def test_topological_order():
    definition = sample().marshal(AMD64)
    seen: set[str] = set()
    for digest, op in definition.load().items():
        assert all(i.digest in seen for i in op.inputs)
        seen.add(digest)


def test_changing_any_op_changes_digests_downstream():
    a = llb.image("busybox").run("echo a").root().file(llb.mkdir("/x", 0o755))
    b = llb.image("busybox").run("echo b").root().file(llb.mkdir("/x", 0o755))
    da, db = a.marshal(AMD64).digests(), b.marshal(AMD64).digests()
    assert da[0] == db[0]
    assert all(x != y for x, y in zip(da[1:], db[1:], strict=True))


def test_ops_outside_bytes_digest_is_of_exact_bytes():
    # A producer may write non-canonical JSON; the digest is still of the bytes received.
    source = b'{ "source": {"identifier": "local://x"} }'
    digest = sha256_digest(source)
    terminal = canonical_dumps({"inputs": [{"digest": digest}]})
    ops = llb.Definition((source, terminal)).load()
    assert list(ops)[0] == digest


def make(*ops: dict | bytes) -> llb.Definition:
    return llb.Definition(tuple(o if isinstance(o, bytes) else canonical_dumps(o) for o in ops))


SRC = {"source": {"identifier": "local://x"}}
SRC_D = sha256_digest(canonical_dumps(SRC))


def term(digest: str = SRC_D, index: int = 0) -> dict:
    return {"inputs": [{"digest": digest, "index": index}]}


def exec_op(**body) -> dict:
    return {
        "inputs": [{"digest": SRC_D}],
        "exec": {"meta": {"args": ["true"]}, "mounts": [{"dest": "/"}], **body},
    }


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (make(), "needs at least 2 ops"),
        (make(SRC), "needs at least 2 ops (an op and the terminal op), got 1"),
        (make(SRC, SRC), "LLB op 1 (sha256:"),
        (make(SRC, term("sha256:" + "0" * 64)), "input 0 refers to 'sha256:0000"),
        (make(SRC, term(index=1)), "asks for output 1 of " + SRC_D + ", which has outputs [0]"),
        (make({"inputs": []}, SRC, term()), "LLB op 0 (sha256:"),
        (
            make({"source": {"identifier": "local://x", "extra": 1}}, term()),
            "unknown field 'extra' in SourceOp",
        ),
        (
            make(SRC, exec_op(mounts=[{"dest": "/", "input": 3}]), term()),
            "mount 0 ('/') refers to input 3, out of range (op has 1 inputs; allowed 0..0 or -1)",
        ),
        (make(SRC, exec_op(mounts=[{"dest": "/a"}]), term()), "exec op has no root mount"),
        (make(SRC, {"exec": {"mounts": [{"dest": "/"}]}}, term()), "exec op has no args"),
        (
            make(SRC, exec_op(mounts=[{"dest": "/"}, {"dest": "/b", "input": -1}]), term()),
            "mount 1 ('/b') has invalid output 0",
        ),
        (
            make(
                SRC,
                {
                    "inputs": [{"digest": SRC_D}],
                    "file": {
                        "actions": [
                            {"input": 1, "mkdir": {"path": "/a", "mode": 493}, "output": -1},
                            {"input": 0, "mkdir": {"path": "/b", "mode": 493}},
                        ]
                    },
                },
                term(),
            ),
            "file action 0 input refers to input 1, out of range (op has 1 inputs; allowed 0..0 or -1)",
        ),
        (
            make(
                SRC,
                {
                    "file": {
                        "actions": [
                            {"input": -1, "copy": {"src": "/", "dest": "/"}, "secondary_input": 2}
                        ]
                    }
                },
                term(),
            ),
            "file action 0 secondary input refers to input 2",
        ),
        (make(SRC, {"file": {"actions": [{"input": -1}]}}, term()), "file action 0 has no action"),
        (make(SRC, {"file": {}}, term()), "file op has no actions"),
        (
            make(
                SRC,
                {"inputs": [{"digest": SRC_D}], "merge": {"inputs": [{"input": 0}, {"input": -1}]}},
                term(),
            ),
            "merge input 1 refers to input -1, out of range",
        ),
        (make(SRC, {"merge": {}}, term()), "merge op has no inputs"),
        (
            make(
                SRC, {"inputs": [{"digest": SRC_D}], "source": {"identifier": "local://y"}}, term()
            ),
            "a source op takes no inputs",
        ),
        (make({"source": {}}, term()), "source op has an empty identifier"),
        (
            make(SRC, {"inputs": [{"digest": SRC_D}, {"digest": SRC_D}]}),
            "the last op must be the terminal op",
        ),
        (make(b"{nope", term()), "LLB op 0 (sha256:"),
        (make(SRC, exec_op(network=5), term()), "exec.network: unknown NetMode value 5"),
    ],
)
def test_malformed_definitions(definition, message):
    with pytest.raises(InputError) as info:
        definition.load()
    assert message in str(info.value)


def test_error_names_the_op_index_and_digest():
    bad = canonical_dumps({"source": {"identifier": "local://x", "bogus": True}})
    with pytest.raises(InputError) as info:
        make(bad, term(sha256_digest(bad))).load()
    assert str(info.value).startswith(
        f"LLB op 0 ({sha256_digest(bad)}): op.source: unknown field 'bogus'"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "LLB definition is not valid JSON"),
        (b"[]", 'must be a JSON object with a "def" list'),
        (b'{"def": [1]}', "def[0] must be a string"),
        (b'{"def": [], "extra": 1}', "unknown field 'extra'"),
        (b'{"def": [], "metadata": []}', '"metadata" must be an object'),
        (
            b'{"def": [], "metadata": {"sha256:a": {"ignore_cache": "yes"}}}',
            "metadata[sha256:a].ignore_cache: expected true or false",
        ),
        (
            b'{"def": [], "source": {"infos": [{"filename": 3}]}}',
            "source.infos[0].filename: expected a string",
        ),
    ],
)
def test_malformed_documents(data, message):
    with pytest.raises(InputError) as info:
        llb.Definition.from_bytes(data, filename="graph.json")
    assert message in str(info.value) and str(info.value).startswith("graph.json: ")


def test_cycle_detection_names_an_op():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    with pytest.raises(InputError, match="has a cycle through this op"):
        _check_acyclic(graph, {d: f"LLB op {d}" for d in graph})
    _check_acyclic({"a": ["b", "c"], "b": ["c"], "c": []}, {})


def test_head_of_bad_terminal():
    with pytest.raises(InputError, match="terminal op"):
        make(SRC, SRC).head()
    with pytest.raises(InputError, match="empty"):
        llb.Definition().head()


def test_dump_llb_lines():
    definition = sample().marshal(AMD64)
    lines = dump_llb(definition.to_bytes()).splitlines()
    assert len(lines) == len(definition.ops)
    entries = [loads(line) for line in lines]
    assert [list(e) for e in entries] == [["Op", "Digest", "OpMetadata"]] * len(lines)
    assert [e["Digest"] for e in entries] == definition.digests()
    assert (
        entries[0]["Op"]["source"]["identifier"]
        == "docker-image://docker.io/library/busybox:latest"
    )
    assert entries[2]["OpMetadata"] == {"description": {"llb.customname": "build"}}
    assert entries[0]["OpMetadata"] is None
    assert "mergeop" in entries[-1]["OpMetadata"]["caps"]
    with pytest.raises(InputError):
        dump_llb(make(SRC).to_bytes())


def test_dump_dot():
    definition = sample().marshal(AMD64)
    dot = dump_dot(definition)
    assert dot.startswith("digraph llb {") and dot.rstrip().endswith("}")
    for digest in definition.digests():
        assert f'"{digest}" [label=' in dot
    assert "docker-image://docker.io/library/busybox:latest" in dot
    assert dot.count(" -> ") == sum(len(op.inputs) for op in definition.load().values())


def test_load_errors_name_the_file():
    with pytest.raises(InputError) as info:
        make(SRC).load(filename="graph.llb")
    assert str(info.value).startswith("graph.llb: invalid LLB definition")


def test_docs_example_runs(capsys):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "llb.md").read_text()
    example = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    exec(compile(example, "docs/llb.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert '"llb.customname":"build the app"' in lines[2]
