"""The gateway protocol and the Python SDK, with frontends run as local processes against a real
bridge and engine; ``# syntax=`` resolution; the line limit."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from support.busybox import layout_manifest

from pybk.core import llb
from pybk.frontends.gateway.protocol import (
    CAPABILITIES,
    GatewayError,
    GatewayServer,
    frontend_env,
)
from pybk.frontends.gateway.runner import LineSplitter, converse

HERE = Path(__file__).resolve().parent


@pytest.fixture
def engine(tmp_path):
    """(bridge, client) on a fresh store and a small build context."""
    if os.geteuid() != 0:
        pytest.skip("needs root (snapshot mounts)")
    from pybk.core.config.schema import Config
    from pybk.core.engine.build import LocalBridge
    from pybk.core.engine.client import Client

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("# syntax=whatever\nBUILD me\n")
    (ctx / "message.txt").write_text("hello world\n")
    (ctx / "notes.md").write_text("# notes\n")
    (ctx / "inner.Dockerfile").write_text("FROM scratch\nCOPY message.txt /from-dockerfile.txt\n")
    client = Client(root=str(tmp_path / "store"), config=Config())
    bridge = LocalBridge(local_dirs={"context": str(ctx), "dockerfile": str(ctx)},
                         oci_layouts={}, config=client.config, client=client)
    yield bridge, client
    client.close()


def talk(pipe_channel, bridge, argv, opts=None, timeout=10.0):
    """Run ``argv`` as a frontend against ``bridge``; what it returned."""
    from pybk.frontends.gateway.frontend import GatewayFrontend

    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_")}
    env.update(e.split("=", 1) for e in frontend_env({"filename": "Dockerfile", **(opts or {})}))
    inputs = {name: llb.local(name).marshal() for name in bridge.local_dirs}
    server = GatewayServer(bridge, inputs, name="local",
                           solve_frontend=lambda n, o: GatewayFrontend._nested(n, o, bridge))
    return converse(server, pipe_channel(argv, env), timeout=timeout, name="local")


def python_frontend(body: str) -> list[str]:
    """A raw-protocol frontend: ``send(obj)`` writes a line, ``recv()`` reads one."""
    prelude = textwrap.dedent("""
        import json, sys
        def send(obj):
            sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
        def recv():
            return json.loads(sys.stdin.readline())
        hello = recv()
    """)
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


def test_sdk_frontend_end_to_end(engine, pipe_channel, busybox_layout):
    bridge, client = engine
    digest = layout_manifest(busybox_layout)[0]["digest"]
    bridge.oci_layouts["bb"] = str(busybox_layout)
    returned = talk(pipe_channel, bridge, [sys.executable, str(HERE / "sdk_frontend.py")],
                    {"layout": f"oci-layout://bb@{digest}"})
    assert returned.image_config == {"config": {"Labels": {"sdk": "yes"}}}
    assert returned.metadata == {"note": b"from the sdk"}
    result = client.solve(returned.definition, progress=None)
    with result.mount() as root:
        report = json.loads(Path(root, "report.json").read_text())
    assert report["opts"]["filename"] == "Dockerfile"
    assert report["inputs"] == ["context", "dockerfile"]
    assert report["dockerfile"] == "# syntax=whatever\nBUILD me\n"
    assert report["range"] == "worl"
    assert report["listing"] == ["Dockerfile", "inner.Dockerfile", "message.txt", "notes.md"]
    assert report["txt_only"] == ["message.txt"]
    assert report["stat"]["name"] == "message.txt" and report["stat"]["size"] == 12
    assert report["stat"]["mode"] & 0o170000 == 0o100000
    code, message = report["missing"]
    assert code == 1 and "missing.txt" in message
    ref, text, names, dstat = report["nested"]
    assert (ref, text, names) == ("r1", "n", ["n.txt"])
    assert dstat["mode"] & 0o7777 == 0o755 and dstat["mode"] & 0o170000 == 0o040000
    assert report["image"][0] == digest
    assert report["inner"] == "hello world\n"
    assert bridge.warnings == ["sdk frontend was here"]


def test_sdk_exception_becomes_the_build_error(engine, pipe_channel):
    bridge, _ = engine
    with pytest.raises(GatewayError) as err:
        talk(pipe_channel, bridge, [sys.executable, str(HERE / "sdk_frontend.py")],
             {"build-arg:MODE": "raise"})
    message = str(err.value)
    assert message.startswith("frontend local failed: RuntimeError: the build file makes no "
                              "sense")
    assert "Traceback" in message  # the frontend's stderr tail, not ours


def test_calls_failing_are_replies_not_build_errors(engine, pipe_channel):
    bridge, _ = engine
    argv = python_frontend("""
        send({"id": "h", "method": "hello", "params": {"version": 1}})
        answers = [recv()]
        for i, (method, params) in enumerate([
                ("nonsense", {}),
                ("read_file", {"input": "nope", "path": "x"}),
                ("read_file", {"ref": "r9", "path": "x"}),
                ("read_file", {"input": "context", "path": "message.txt", "offset": -1}),
                ("solve", {"definition": {"def": "not a list"}}),
                ("solve", {}),
                ("inputs", {})]):
            send({"id": i, "method": method, "params": params})
            answers.append(recv())
        send({"id": 99, "method": "return", "params": {"error": json.dumps(answers)}})
        recv()
    """)
    with pytest.raises(GatewayError) as err:
        talk(pipe_channel, bridge, argv)
    answers = json.loads(str(err.value).split("failed: ", 1)[1].splitlines()[0])
    hello, unknown, no_input, no_ref, bad_offset, bad_def, no_def, inputs = answers
    assert hello["id"] == "h" and hello["result"]["version"] == 1
    assert hello["result"]["capabilities"] == list(CAPABILITIES)
    assert unknown["error"]["code"] == -32601 and "unknown method 'nonsense'" in \
        unknown["error"]["message"]
    assert no_input["error"] == {"code": 1, "message": "no input 'nope'; inputs: context, "
                                 "dockerfile"}
    assert no_ref["error"]["code"] == 1 and "r9" in no_ref["error"]["message"]
    assert bad_offset["error"]["code"] == -32602
    assert bad_def["error"]["code"] == 2 and '"def" list' in bad_def["error"]["message"]
    assert no_def["error"]["code"] == -32602
    context = inputs["result"]["inputs"]["context"]["definition"]
    assert llb.Definition.from_bytes(json.dumps(context)).to_bytes() == \
        llb.local("context").marshal().to_bytes()


@pytest.mark.parametrize(("body", "message"), [
    ('send({"id": 1, "method": "hello", "params": {"version": 7}}); recv()',
     "frontend local speaks gateway protocol version 7; pybk speaks 1"),
    ('send({"id": 1, "method": "hello", "params": {"version": 1, "requires": ["teleport"]}});'
     'recv()', "frontend local requires capabilities pybk does not offer: teleport"),
    ('send({"id": 1, "method": "inputs"}); recv()',
     "frontend local called 'inputs' before the hello handshake"),
    ('send([1, 2])', "frontend local wrote a message that is not a JSON-RPC call"),
    ('send({"id": 1, "method": "hello", "params": {"version": 1}}); recv();'
     'send({"id": 2, "method": "return", "params": {"definition": {"def": ["{}"]}}}); recv()',
     "frontend local returned an invalid result"),
], ids=["version", "capability", "no-hello", "not-a-call", "bad-definition"])
def test_protocol_violations_fail_the_build(engine, pipe_channel, body, message):
    bridge, _ = engine
    with pytest.raises(GatewayError) as err:
        talk(pipe_channel, bridge, python_frontend(body))
    assert str(err.value).startswith(message)


def test_return_of_a_ref_and_silence_after_returning(engine, pipe_channel):
    bridge, client = engine
    definition = json.loads(llb.scratch().file(llb.mkfile("/f", 0o644, "x")).marshal().to_bytes())
    body = f"""
        send({{"id": 1, "method": "hello", "params": {{"version": 1}}}}); recv()
        send({{"id": 2, "method": "solve", "params": {{"definition": {definition!r}}}}})
        ref = recv()["result"]["ref"]
        send({{"id": 3, "method": "return", "params": {{"ref": ref}}}}); recv()
    """
    returned = talk(pipe_channel, bridge, python_frontend(body))
    with client.solve(returned.definition, progress=None).mount() as root:
        assert Path(root, "f").read_text() == "x"
    lingering = python_frontend(textwrap.dedent(body) + "import time; time.sleep(60)\n")
    with pytest.raises(GatewayError, match="timed out: after returning, it did not exit for 1 s"):
        talk(pipe_channel, bridge, lingering, timeout=1)


def test_over_long_line_is_an_error():
    got = []
    splitter = LineSplitter(got.append, limit=10)
    splitter.feed(b'{"a":1}\n{"b"')
    splitter.feed(b":2}\n")
    splitter.feed(b"x" * 11)
    splitter.feed(b"ignored\n")
    splitter.finish()
    assert got[:2] == [b'{"a":1}\n', b'{"b":2}\n']
    assert isinstance(got[2], GatewayError) and "longer than 10 bytes" in str(got[2])
    assert len(got) == 3


def test_frontend_env_is_buildkit_style():
    env = frontend_env({"filename": "Dockerfile", "build-arg:A": "x=y"})
    assert env == ["BUILDKIT_FRONTEND_OPT_0=build-arg:A=x=y",
                   "BUILDKIT_FRONTEND_OPT_1=filename=Dockerfile", "PYBK_GATEWAY_PROTOCOL=1"]
    from pybk.frontends.gateway.sdk import frontend_opts

    assert frontend_opts(dict(e.split("=", 1) for e in env)) == {
        "build-arg:A": "x=y", "filename": "Dockerfile"}


# -- # syntax= resolution --------------------------------------------------------------------

REGISTERED = {"dockerfile.v0", "gateway.v0", "yaml.v0", "toy"}


@pytest.mark.parametrize(("directives", "opts", "expected"), [
    ({}, {}, ("dockerfile.v0", {})),
    ({"syntax": "toy"}, {}, ("toy", {})),
    ({"syntax": "docker/dockerfile:1.7"}, {}, ("dockerfile.v0", {})),
    ({"syntax": "docker.io/docker/dockerfile@sha256:" + "a" * 64}, {}, ("dockerfile.v0", {})),
    ({"syntax": "127.0.0.1:5000/fe:1 --flag"}, {},
     ("gateway.v0", {"source": "127.0.0.1:5000/fe:1", "cmdline": "127.0.0.1:5000/fe:1 --flag"})),
    ({"syntax": "docker/dockerfile:1"}, {"build-arg:BUILDKIT_SYNTAX": "toy"}, ("toy", {})),
    ({"syntax": "me/fe"}, {"cmdline": "me/fe"}, ("dockerfile.v0", {})),
    ({"syntax": "gateway.v0"}, {},
     ("gateway.v0", {"source": "gateway.v0", "cmdline": "gateway.v0"})),
    ({"syntax": "docker/dockerfile"}, {"context:docker/dockerfile": "docker-image://me/df"},
     ("gateway.v0", {"source": "docker/dockerfile", "cmdline": "docker/dockerfile"})),
])
def test_resolve_syntax(directives, opts, expected):
    from pybk.frontends.gateway import resolve_syntax

    name, new_opts = resolve_syntax("dockerfile.v0", directives, opts, REGISTERED)
    assert name == expected[0]
    assert new_opts == {**opts, **expected[1]}


def test_syntax_is_only_read_by_the_dockerfile_frontend():
    from pybk.frontends.gateway import resolve_syntax

    assert resolve_syntax("yaml.v0", {"syntax": "toy"}, {}, REGISTERED) == ("yaml.v0", {})


def test_named_context_replaces_the_frontend_image():
    from pybk.core.errors import UsageError
    from pybk.frontends.gateway.frontend import frontend_image

    assert frontend_image("me/fe:1", {}) == "me/fe:1"
    assert frontend_image("me/fe:1", {"context:me/fe:1": "docker-image://other/fe@sha256:"
                                      + "b" * 64}) == "other/fe@sha256:" + "b" * 64
    with pytest.raises(UsageError, match="only docker-image://"):
        frontend_image("me/fe:1", {"context:me/fe:1": "local:fe"})


def test_sdk_example_of_the_docs_works(engine, pipe_channel, tmp_path):
    bridge, client = engine
    doc = (HERE.parents[1] / "docs" / "gateway.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(example)
    Path(bridge.local_dirs["dockerfile"], "Dockerfile").write_text(
        "FILE /a.txt alpha\nFILE /b.txt beta\n")
    returned = talk(pipe_channel, bridge, [sys.executable, str(tmp_path / "example.py")])
    assert returned.image_config == {"config": {"Cmd": ["/bin/sh"]}}
    assert bridge.warnings == ["2 files"]
    with client.solve(returned.definition, progress=None).mount() as root:
        assert Path(root, "b.txt").read_text() == "beta\n"
