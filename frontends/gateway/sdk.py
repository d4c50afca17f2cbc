"""Write a gateway frontend in Python: the frontend's side of pybk's gateway protocol.

Pure standard library plus :mod:`pybk.core.llb`, so it also runs inside a frontend image that
has Python and pybk installed::

    from pybk.core import llb
    from pybk.frontends.gateway import sdk

    def build(gw: sdk.Gateway) -> sdk.Result:
        source = gw.read_file(gw.opts.get("filename", "Dockerfile"), input="dockerfile")
        words = source.decode().split()
        base = llb.image(words[1]) if words[:1] == ["BASE"] else llb.scratch()
        return sdk.Result(base.file(llb.mkfile("/words", 0o644, "\\n".join(words))),
                          image_config={"config": {"Cmd": ["cat", "/words"]}})

    if __name__ == "__main__":
        sdk.run(build)

:func:`run` connects over stdin/stdout, calls ``build`` and returns its result (or, when it
raises, the error) to pybk. docs/gateway.md specifies the protocol.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

VERSION = 1


class GatewayCallError(Exception):
    """pybk answered a call with an error (``code`` as in docs/gateway.md)."""

    def __init__(self, method: str, code: int, message: str):
        super().__init__(message)
        self.method = method
        self.code = code


def frontend_opts(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The frontend options from ``BUILDKIT_FRONTEND_OPT_<i>=key=value`` variables."""
    environ = os.environ if environ is None else environ
    opts = {}
    for name, value in environ.items():
        if name.startswith("BUILDKIT_FRONTEND_OPT_"):
            key, _, val = value.partition("=")
            opts[key] = val
    return opts


def _definition_json(graph: Any) -> dict[str, Any]:
    """A State, a Definition, its bytes or its JSON object, as the JSON object."""
    if isinstance(graph, dict):
        return graph
    if isinstance(graph, bytes | str):
        return json.loads(graph)
    marshal = getattr(graph, "marshal", None)
    definition = marshal() if marshal is not None else graph
    return json.loads(definition.to_bytes())


@dataclass(frozen=True)
class Ref:
    """A solved result; read its files through the gateway."""

    gateway: Gateway
    id: str
    image_config: dict[str, Any] | None = None

    def read_file(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return self.gateway.read_file(path, ref=self.id, offset=offset, length=length)

    def read_dir(self, path: str = "/", *, include_pattern: str | None = None) -> list[dict]:
        return self.gateway.read_dir(path, ref=self.id, include_pattern=include_pattern)

    def stat_file(self, path: str) -> dict[str, Any]:
        return self.gateway.stat_file(path, ref=self.id)


@dataclass(frozen=True)
class Result:
    """What a frontend returns: a graph (State, Definition or :class:`Ref`) and image config."""

    graph: Any
    image_config: Mapping[str, Any] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class Gateway:
    """A connection to pybk over the process's stdin/stdout (or the streams given)."""

    def __init__(self, reader: BinaryIO | None = None, writer: BinaryIO | None = None, *,
                 requires: Iterable[str] = ()):
        self._reader = reader if reader is not None else sys.stdin.buffer
        self._writer = writer if writer is not None else sys.stdout.buffer
        self._next_id = 0
        self.opts = frontend_opts()
        hello = self._read()
        if hello.get("method") != "hello":
            raise GatewayCallError("hello", 0, f"expected pybk's hello, got {hello!r}")
        self.server = hello.get("params") or {}
        if VERSION not in self.server.get("versions", ()):
            raise GatewayCallError("hello", 0, f"pybk does not speak gateway protocol version "
                                   f"{VERSION} (it speaks {self.server.get('versions')})")
        answer = self.call("hello", version=VERSION, requires=list(requires))
        self.capabilities = tuple(answer.get("capabilities", ()))
        self.returned = False

    # -- transport -----------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise EOFError("pybk closed the gateway connection")
        return json.loads(line)

    def _write(self, message: Mapping[str, Any]) -> None:
        data = json.dumps({"jsonrpc": "2.0", **message}, separators=(",", ":"))
        self._writer.write(data.encode() + b"\n")
        self._writer.flush()

    def call(self, method: str, **params: Any) -> Any:
        """One call; its ``result``, or :class:`GatewayCallError`."""
        self._next_id += 1
        call_id = self._next_id
        self._write({"id": call_id, "method": method,
                     "params": {k: v for k, v in params.items() if v is not None}})
        reply = self._read()
        if reply.get("id") != call_id:
            raise GatewayCallError(method, 0, f"reply for call {reply.get('id')!r}, "
                                   f"expected {call_id}")
        error = reply.get("error")
        if error is not None:
            raise GatewayCallError(method, error.get("code", 0), error.get("message", ""))
        return reply.get("result")

    # -- calls ---------------------------------------------------------------------------

    def inputs(self) -> dict[str, Any]:
        """``{name: Definition}`` of the build's inputs (``context``, ``dockerfile`` …)."""
        from pybk.core.llb import Definition

        found = self.call("inputs")["inputs"]
        return {name: Definition.from_bytes(json.dumps(value["definition"]))
                for name, value in found.items()}

    def read_file(self, path: str, *, input: str | None = None, ref: str | None = None,
                  offset: int = 0, length: int | None = None) -> bytes:
        result = self.call("read_file", path=path, input=input, ref=ref,
                           offset=offset or None, length=length)
        return base64.b64decode(result["data"])

    def read_dir(self, path: str = "/", *, input: str | None = None, ref: str | None = None,
                 include_pattern: str | None = None) -> list[dict[str, Any]]:
        return self.call("read_dir", path=path, input=input, ref=ref,
                         include_pattern=include_pattern)["entries"]

    def stat_file(self, path: str, *, input: str | None = None,
                  ref: str | None = None) -> dict[str, Any]:
        return self.call("stat_file", path=path, input=input, ref=ref)["stat"]

    def solve(self, graph: Any = None, *, frontend: str | None = None,
              frontend_opt: Mapping[str, str] | None = None) -> Ref:
        """Build ``graph`` (or run the registered ``frontend`` with ``frontend_opt``)."""
        result = self.call("solve",
                           definition=_definition_json(graph) if graph is not None else None,
                           frontend=frontend,
                           frontend_opt=dict(frontend_opt) if frontend_opt else None)
        return Ref(self, result["ref"], result.get("image_config"))

    def resolve_image_config(self, ref: str,
                             platform: str | None = None) -> tuple[str, dict[str, Any]]:
        result = self.call("resolve_image_config", ref=ref, platform=platform)
        return result["digest"], result["config"]

    def warn(self, message: str) -> None:
        self.call("warn", message=message)

    def return_result(self, result: Result) -> None:
        graph = result.graph
        params: dict[str, Any] = ({"ref": graph.id} if isinstance(graph, Ref)
                                  else {"definition": _definition_json(graph)})
        if result.image_config is not None:
            params["image_config"] = dict(result.image_config)
        if result.metadata:
            params["metadata"] = dict(result.metadata)
        self.call("return", **params)
        self.returned = True

    def return_error(self, message: str) -> None:
        self.call("return", error={"message": message})
        self.returned = True


def run(build: Callable[[Gateway], Any], *, requires: Iterable[str] = ()) -> None:
    """Connect, call ``build(gateway)`` and return what it gives (a :class:`Result`, a State or
    a Definition); an exception becomes the build's error (its traceback goes to stderr)."""
    gateway = Gateway(requires=requires)
    try:
        outcome = build(gateway)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        gateway.return_error(f"{type(exc).__name__}: {exc}")
        return
    gateway.return_result(outcome if isinstance(outcome, Result) else Result(outcome))
