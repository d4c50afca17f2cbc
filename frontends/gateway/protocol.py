"""The gateway protocol: newline-delimited JSON-RPC 2.0 between pybk and a frontend process.

pybk speaks first (a ``hello`` notification); from then on the frontend asks and pybk answers,
one JSON object per line, until the frontend calls ``return``. :class:`GatewayServer` is pybk's
side, independent of how the process runs: feed it each line the frontend wrote, write back
what it answers. docs/gateway.md is the full specification.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from pybk.core.errors import BuildError, PybkError
from pybk.core.model import Model, field

PROTOCOL = "pybk.gateway"
#: protocol versions this pybk speaks
VERSIONS = (1,)
#: what this pybk offers (``hello`` lists them; a frontend may require some)
CAPABILITIES = (
    "inputs", "read_file", "read_file.range", "read_dir", "stat_file", "solve",
    "resolve_image_config", "warn", "return", "return.ref", "return.error",
)
#: the calls a frontend can make
METHODS = ("hello", "inputs", "read_file", "read_dir", "stat_file", "solve",
           "resolve_image_config", "warn", "return")
#: longest line pybk accepts from a frontend
MAX_LINE = 64 * 1024 * 1024

# JSON-RPC error codes in replies to the frontend
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
NOT_FOUND = 1
CALL_FAILED = 2


class GatewayError(BuildError):
    """The frontend process broke the protocol, failed, hung or returned an error."""


class CallError(Exception):
    """A call the frontend made failed; becomes an ``error`` reply (the build goes on)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line."""
    import orjson

    return orjson.dumps({"jsonrpc": "2.0", **message}) + b"\n"


def hello_message() -> bytes:
    """pybk's first line."""
    return encode({"method": "hello", "params": {"protocol": PROTOCOL, "versions": list(VERSIONS),
                                                 "capabilities": list(CAPABILITIES)}})


def frontend_env(opts: Mapping[str, str]) -> list[str]:
    """The frontend options as BuildKit passes them: ``BUILDKIT_FRONTEND_OPT_<i>=key=value``."""
    env = [f"BUILDKIT_FRONTEND_OPT_{i}={key}={value}"
           for i, (key, value) in enumerate(sorted(opts.items()))]
    return [*env, f"PYBK_GATEWAY_PROTOCOL={VERSIONS[-1]}"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def stat_entry(path: str, name: str) -> dict[str, Any]:
    """A ``read_dir`` / ``stat_file`` entry for ``path`` (not following a final symlink)."""
    st = os.lstat(path)
    entry: dict[str, Any] = {"name": name, "mode": st.st_mode, "size": st.st_size,
                             "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        entry["linkname"] = os.readlink(path)
    return entry


class Returned(Model):
    """What the frontend returned: a definition (or an error message) and its image config."""

    definition: Any = None
    image_config: Mapping[str, Any] | None = None
    metadata: Mapping[str, bytes] = field(factory=dict)
    error: str | None = None


class GatewayServer:
    """pybk's side of one conversation, over a :class:`~pybk.core.interfaces.FrontendBridge`.

    :param bridge: the engine as the frontend sees it (files, solves, image configs, warnings).
    :param inputs: ``{name: Definition}`` answered by ``inputs`` and readable by name.
    :param name: the frontend (its image) for error messages.
    :param solve_frontend: runs a registered frontend for a ``solve`` with ``frontend`` set:
        ``(name, opts) -> Definition``; None refuses such solves.
    """

    def __init__(self, bridge: Any, inputs: Mapping[str, Any], *, name: str = "",
                 solve_frontend: Callable[[str, Mapping[str, str]], Any] | None = None):
        self.who = f"frontend {name}" if name else "frontend"
        self.bridge = bridge
        self.inputs = dict(inputs)
        self.solve_frontend = solve_frontend
        self.version: int | None = None
        self.returned: Returned | None = None
        self.line_number = 0
        self._refs: dict[str, tuple[Any, Any]] = {}  # id -> (definition, solve result)
        self._input_refs: dict[str, Any] = {}

    # -- the conversation ----------------------------------------------------------------

    def handle(self, line: bytes) -> bytes | None:
        """Answer one line from the frontend (None: nothing to answer, e.g. a blank line).

        :raises GatewayError: the line is not a protocol message, the handshake failed, or
            the frontend returned twice.
        """
        import orjson

        self.line_number += 1
        if not line.strip():
            return None
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise GatewayError(f"{self.who} wrote a line that is not JSON (line {self.line_number} "
                               f"of its output): {_excerpt(line)}") from None
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            raise GatewayError(f"{self.who} wrote a message that is not a JSON-RPC call (line "
                               f"{self.line_number} of its output): {_excerpt(line)}")
        method, params, call_id = message["method"], message.get("params") or {}, message.get("id")
        if not isinstance(params, dict):
            return self._error(call_id, INVALID_PARAMS, f"{method}: params must be an object")
        if method == "hello":
            return self._hello(call_id, params)
        if self.version is None:
            raise GatewayError(f"{self.who} called {method!r} before the hello handshake")
        if method == "return":
            return self._return(call_id, params)
        handler = getattr(self, f"_call_{method}", None)
        if handler is None:
            return self._error(call_id, METHOD_NOT_FOUND, f"unknown method {method!r}; "
                               f"available: {', '.join(METHODS)}")
        try:
            result = handler(params)
        except CallError as exc:
            return self._error(call_id, exc.code, str(exc))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            return self._error(call_id, NOT_FOUND, f"{method}: {exc.strerror or exc}: "
                               f"{params.get('path', '')}")
        except (PybkError, OSError, ValueError) as exc:
            return self._error(call_id, CALL_FAILED, f"{method}: {exc}")
        return encode({"id": call_id, "result": result})

    @staticmethod
    def _error(call_id: Any, code: int, message: str) -> bytes:
        return encode({"id": call_id, "error": {"code": code, "message": message}})

    def _hello(self, call_id: Any, params: Mapping[str, Any]) -> bytes:
        version = params.get("version")
        if version not in VERSIONS:
            raise GatewayError(f"{self.who} speaks gateway protocol version {version!r}; pybk "
                               f"speaks {', '.join(map(str, VERSIONS))}")
        missing = [c for c in params.get("requires") or () if c not in CAPABILITIES]
        if missing:
            raise GatewayError(f"{self.who} requires capabilities pybk does not offer: "
                               f"{', '.join(map(str, missing))}")
        self.version = version
        return encode({"id": call_id, "result": {"protocol": PROTOCOL, "version": version,
                                                  "capabilities": list(CAPABILITIES)}})

    def _return(self, call_id: Any, params: Mapping[str, Any]) -> bytes:
        if self.returned is not None:
            raise GatewayError(f"{self.who} returned more than once")
        error = params.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            self.returned = Returned(error=str(message))
            return encode({"id": call_id, "result": {}})
        try:
            self.returned = self._returned(params)
        except (CallError, PybkError, ValueError) as exc:
            raise GatewayError(f"{self.who} returned an invalid result: {exc}") from None
        return encode({"id": call_id, "result": {}})

    def _returned(self, params: Mapping[str, Any]) -> Returned:
        if "ref" in params:
            definition = self._ref(params["ref"])[0]
        elif "definition" in params:
            definition = _definition(params["definition"])
        else:
            raise CallError(INVALID_PARAMS, 'return needs "definition", "ref" or "error"')
        config = params.get("image_config")
        if config is not None and not isinstance(config, dict):
            raise CallError(INVALID_PARAMS, "image_config must be an object")
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str)
                                                     for v in metadata.values()):
            raise CallError(INVALID_PARAMS, "metadata must map names to strings")
        return Returned(definition=definition, image_config=config,
                        metadata={str(k): v.encode() for k, v in metadata.items()})

    # -- calls ---------------------------------------------------------------------------

    def _call_inputs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        import orjson

        return {"inputs": {name: {"definition": orjson.loads(d.to_bytes())}
                           for name, d in sorted(self.inputs.items())}}

    def _call_solve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if params.get("frontend"):
            if self.solve_frontend is None:
                raise CallError(CALL_FAILED, "solve with a frontend is not available here")
            opts = params.get("frontend_opt") or {}
            if not isinstance(opts, dict):
                raise CallError(INVALID_PARAMS, "frontend_opt must be an object")
            definition = self.solve_frontend(str(params["frontend"]),
                                             {str(k): str(v) for k, v in opts.items()})
        elif "definition" in params:
            definition = _definition(params["definition"])
        else:
            raise CallError(INVALID_PARAMS, 'solve needs "definition" or "frontend"')
        result = self.bridge.solve(definition)
        ref = f"r{len(self._refs) + 1}"
        self._refs[ref] = (definition, result)
        answer: dict[str, Any] = {"ref": ref}
        config = getattr(result, "image_config", None)
        if config is not None:
            answer["image_config"] = dict(config)
        return answer

    def _call_read_file(self, params: Mapping[str, Any]) -> dict[str, Any]:
        path = _path(params)
        offset = _int(params, "offset", 0)
        length = params.get("length")
        if length is not None:
            length = _int(params, "length", 0)
        if "input" in params and "ref" not in params:
            name = self._input_name(params["input"])
            data = self.bridge.read_file(name, path, offset=offset, length=length)
            return {"data": _b64(data)}
        with self._mounted(params) as root, open(_inside(root, path), "rb") as f:
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
        return {"data": _b64(data)}

    def _call_read_dir(self, params: Mapping[str, Any]) -> dict[str, Any]:
        import fnmatch

        path = _path(params, default="/")
        pattern = params.get("include_pattern") or None
        with self._mounted(params) as root:
            directory = _inside(root, path)
            names = sorted(os.listdir(directory))
            if pattern:
                names = [n for n in names if fnmatch.fnmatch(n, str(pattern))]
            entries = [stat_entry(os.path.join(directory, n), n) for n in names]
        return {"entries": entries}

    def _call_stat_file(self, params: Mapping[str, Any]) -> dict[str, Any]:
        path = _path(params)
        with self._mounted(params) as root:
            real = _inside(root, path, follow_final=False)
            return {"stat": stat_entry(real, os.path.basename(path.rstrip("/")) or "/")}

    def _call_resolve_image_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        ref = params.get("ref")
        if not isinstance(ref, str) or not ref:
            raise CallError(INVALID_PARAMS, 'resolve_image_config needs "ref"')
        digest, config = self.bridge.resolve_image_config(ref, params.get("platform") or None)
        return {"digest": digest, "config": config}

    def _call_warn(self, params: Mapping[str, Any]) -> dict[str, Any]:
        message = params.get("message")
        if not isinstance(message, str) or not message:
            raise CallError(INVALID_PARAMS, 'warn needs "message"')
        self.bridge.warn(message)
        return {}

    # -- references ----------------------------------------------------------------------

    def _ref(self, ref: Any) -> tuple[Any, Any]:
        found = self._refs.get(ref) if isinstance(ref, str) else None
        if found is None:
            raise CallError(NOT_FOUND, f"no result {ref!r} (solve returns the ref ids)")
        return found

    def _input_name(self, name: Any) -> str:
        if name not in self.inputs:
            raise CallError(NOT_FOUND, f"no input {name!r}; inputs: "
                            f"{', '.join(sorted(self.inputs)) or 'none'}")
        return str(name)

    def _mounted(self, params: Mapping[str, Any]) -> Any:
        """The filesystem of ``ref`` (or of ``input``, solved on first use) as a directory."""
        if "ref" in params:
            return self._ref(params["ref"])[1].mount()
        if "input" not in params:
            raise CallError(INVALID_PARAMS, 'give "ref" (a solve result) or "input"')
        name = self._input_name(params["input"])
        if name not in self._input_refs:
            self._input_refs[name] = self.bridge.solve(self.inputs[name])
        return self._input_refs[name].mount()


def _definition(value: Any) -> Any:
    from pybk.core.llb import Definition

    if not isinstance(value, dict):
        raise CallError(INVALID_PARAMS, 'a definition is a JSON object {"def": [...]}')
    import orjson

    definition = Definition.from_bytes(orjson.dumps(value))
    definition.load()
    return definition


def _path(params: Mapping[str, Any], default: str | None = None) -> str:
    path = params.get("path", default)
    if not isinstance(path, str) or not path:
        raise CallError(INVALID_PARAMS, 'a "path" is needed')
    return path


def _int(params: Mapping[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CallError(INVALID_PARAMS, f"{key} must be a non-negative integer")
    return value


def _inside(root: str, path: str, *, follow_final: bool = True) -> str:
    from pybk.core.fs.rootpath import resolve_in_root

    return resolve_in_root(root, path, follow_final=follow_final)


def _excerpt(line: bytes, limit: int = 120) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    return repr(text if len(text) <= limit else text[:limit] + "…")
