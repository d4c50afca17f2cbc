"""The gateway frontend runs its image only through ``FrontendBridge.new_container``: a bridge
without an engine (its "container" a local process) drives it completely."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading

import pytest

from pybk.core import llb
from pybk.core.interfaces import FrontendBridge, FrontendContainer, FrontendRequest
from pybk.frontends.gateway.frontend import NETWORK_NONE_LABEL, GatewayFrontend
from pybk.frontends.gateway.protocol import GatewayError

RESULT = llb.scratch().file(llb.mkfile("/made-by", 0o644, "fake container"))

FRONTEND = textwrap.dedent(f"""
    import json, os, sys
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
    def recv():
        return json.loads(sys.stdin.readline())
    recv()
    send({{"id": 1, "method": "hello", "params": {{"version": 1}}}}); recv()
    if os.environ.get("FAKE_MODE") == "crash":
        print("fake frontend: giving up", file=sys.stderr, flush=True)
        sys.exit(3)
    send({{"id": 2, "method": "warn", "params": {{"message": "fake frontend was here"}}}}); recv()
    opts = sorted(v for k, v in os.environ.items() if k.startswith("BUILDKIT_FRONTEND_OPT_"))
    send({{"id": 3, "method": "return", "params": {{
        "definition": {json.loads(RESULT.marshal().to_bytes())!r},
        "image_config": {{"opts": opts}}}}}})
    recv()
""")


class ProcessContainer(FrontendContainer):
    """Runs the frontend above as a local process, whatever the image's entrypoint says."""

    def __init__(self, image_config):
        self.image_config = image_config
        self.process = None
        self.stdin = []
        self._proc = None
        self._threads = []

    def start(self, process, *, stdout, stderr, exited):
        self.process = process
        env = dict(e.split("=", 1) for e in process.env)
        self._proc = subprocess.Popen([sys.executable, "-c", FRONTEND], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)

        def pump(stream, callback, last):
            while chunk := stream.read1(65536):
                callback(chunk)
            if last:
                exited(self._proc.wait(), None)

        self._threads = [threading.Thread(target=pump, args=(self._proc.stderr, stderr, False)),
                         threading.Thread(target=pump, args=(self._proc.stdout, stdout, True))]
        for thread in self._threads:
            thread.start()

    def write(self, data):
        self.stdin.append(data)
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._proc.stdin.write(data)
            self._proc.stdin.flush()

    def close_stdin(self):
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()

    def kill(self):
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for thread in self._threads:
            thread.join(5)
        self.close_stdin()


class FakeBridge(FrontendBridge):
    """Files of one in-memory input, image configs from a table, containers as processes."""

    def __init__(self, image_config, *, entitlements=()):
        self.image_config = image_config
        self.entitlements = frozenset(entitlements)
        self.images = []
        self.containers = []
        self.released = []
        self.warnings = []

    def read_file(self, input_name, path, *, offset=0, length=None):
        raise FileNotFoundError(path)

    def read_dir(self, input_name, path):
        return []

    def solve(self, definition):
        raise AssertionError("nothing to solve")

    def resolve_image_config(self, ref, platform=None):
        raise AssertionError("no image to resolve")

    def warn(self, message, *, location=None):
        self.warnings.append(message)

    @contextlib.contextmanager
    def new_container(self, image, *, name):
        self.images.append((image, name))
        container = ProcessContainer(self.image_config)
        self.containers.append(container)
        try:
            yield container
        except BaseException as exc:
            self.released.append(str(exc).splitlines()[0])
            raise
        finally:
            container.kill()
        self.released.append("ok")


IMAGE_CONFIG = {"config": {"Entrypoint": ["/bin/frontend", "--serve"], "Env": ["PATH=/bin"],
                           "WorkingDir": "/work"}}


def _solve(bridge, **opts):
    request = FrontendRequest(opts={"source": "example.com/frontends/fake:1",
                                    "filename": "Dockerfile", **opts})
    return GatewayFrontend().solve(request, bridge)


def _image_source(state):
    ops = [json.loads(op) for op in json.loads(state.marshal().to_bytes())["def"]]
    return next(op["source"]["identifier"] for op in ops if "source" in op)


def test_the_frontend_runs_in_the_bridges_container():
    bridge = FakeBridge(IMAGE_CONFIG)
    result = _solve(bridge, **{"build-arg:X": "1", "gateway-timeout": "20"})
    assert result.definition.to_bytes() == RESULT.marshal().to_bytes()
    assert result.image_config == {"opts": ["build-arg:X=1", "filename=Dockerfile",
                                            "source=example.com/frontends/fake:1"]}
    assert bridge.warnings == ["fake frontend was here"]
    (image, name), = bridge.images
    assert name == "example.com/frontends/fake:1"
    assert _image_source(image) == "docker-image://example.com/frontends/fake:1"
    process = bridge.containers[0].process
    assert process.args == ("/bin/frontend", "--serve") and process.cwd == "/work"
    assert process.network == "none"
    assert process.env[0] == "PATH=/bin" and process.env[-1] == "PYBK_GATEWAY_PROTOCOL=1"
    assert bridge.containers[0].stdin[0].startswith(b'{"jsonrpc":"2.0","method":"hello"')
    assert bridge.released == ["ok"]


def test_a_named_context_replaces_the_image():
    bridge = FakeBridge(IMAGE_CONFIG)
    _solve(bridge, **{"context:example.com/frontends/fake:1": "docker-image://other/fe:2"})
    assert _image_source(bridge.images[0][0]) == "docker-image://docker.io/other/fe:2"


def test_a_failing_frontend_fails_the_container():
    config = {"config": {**IMAGE_CONFIG["config"], "Env": ["FAKE_MODE=crash"]}}
    bridge = FakeBridge(config)
    with pytest.raises(GatewayError) as err:
        _solve(bridge)
    message = str(err.value)
    assert message.startswith("frontend example.com/frontends/fake:1 exited with code 3 "
                              "without returning a result")
    assert "fake frontend: giving up" in message  # its stderr reached the frontend
    assert bridge.released == [message.splitlines()[0]]


def test_the_network_label_needs_the_bridges_entitlement():
    labels = {"Labels": {NETWORK_NONE_LABEL: "false"}}
    config = {"config": {**IMAGE_CONFIG["config"], **labels}}
    bridge = FakeBridge(config)
    with pytest.raises(GatewayError, match="asks for the network"):
        _solve(bridge)
    assert bridge.containers[0].process is None  # refused before anything ran
    bridge = FakeBridge(config, entitlements={"network.host"})
    _solve(bridge)
    assert bridge.containers[0].process.network == "host"


class NoContainers(FakeBridge):
    new_container = FrontendBridge.new_container


def test_a_bridge_without_containers_cannot_run_a_frontend_image():
    from pybk.core.engine.build import LocalBridge

    for bridge in (NoContainers(IMAGE_CONFIG),
                   LocalBridge(local_dirs={}, oci_layouts={}, config=None)):
        assert isinstance(bridge, FrontendBridge)
        with pytest.raises(GatewayError, match="frontend image example.com/frontends/fake:1: "
                                               "this build has no engine to run it"):
            _solve(bridge)
