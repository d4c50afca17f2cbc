"""A build request on the wire: the client's validated
:class:`pybk.core.engine.request.BuildRequest` as JSON-able data, and back on the daemon (where
it is untrusted input: anything but the request's own shape is a usage error)."""

from __future__ import annotations

from typing import Any

from pybk.core.errors import UsageError

#: BuildRequest fields holding tuples of specs, and the spec classes' names
_SPECS = {"build_contexts": "ContextSpec", "secrets": "SecretSpec", "ssh": "SSHSpec",
          "outputs": "OutputSpec", "cache_from": "CacheSpec", "cache_to": "CacheSpec"}
_TUPLES = ("tags", "platforms", "no_cache_filter", "entitlements", "ulimits", "resources")


def request_to_wire(request: Any) -> dict[str, Any]:
    """A :class:`pybk.core.engine.request.BuildRequest` as JSON-able data."""
    from pybk.core.model import asdict

    return asdict(request)


def request_from_wire(data: Any) -> Any:
    """The :class:`BuildRequest` a client sent (:func:`request_to_wire`'s form); anything
    else is a usage error."""
    from pybk.core.engine import request as req
    from pybk.core.model import evolve, fields

    try:
        if not isinstance(data, dict):
            raise TypeError("not an object")
        known = {f.name for f in fields(req.BuildRequest)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown fields {', '.join(unknown)}")
        values = dict(data)
        for name, cls_name in _SPECS.items():
            cls = getattr(req, cls_name)
            values[name] = tuple(cls(**item) for item in values.get(name) or ())
        values["ssh"] = tuple(evolve(s, paths=tuple(s.paths)) for s in values["ssh"])
        for name in _TUPLES:
            values[name] = tuple(str(v) for v in values.get(name) or ())
        values["add_hosts"] = tuple((str(h), str(ip)) for h, ip in values.get("add_hosts") or ())
        if values.get("provenance") is not None:
            values["provenance"] = req.ProvenanceSpec(**values["provenance"])
        return req.BuildRequest(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the client's build request is not valid: {exc}") from None
