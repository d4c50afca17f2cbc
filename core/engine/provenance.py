"""SLSA provenance of a build (``--provenance``, ``--attest type=provenance``), as BuildKit
writes it: an in-toto statement whose predicate follows SLSA provenance v0.2 (default) or v1.

:class:`Provenance` holds what the build knew before solving (the frontend, its options, the
locals, secrets and ssh ids, the start time); :meth:`Provenance.statement` completes it for
one solved result (a platform's) and the subjects the exporter names: the materials are the
images, URLs and repositories the definition reads (images with the manifest digest resolved
during the solve), ``mode=max`` adds the LLB steps and the frontend's source map, ``mode=min``
leaves out build arguments, secrets and ssh. Secret values never appear in either.
"""

from __future__ import annotations

import datetime
import json
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.images.purl import image_purl
from pybk.core.model import Model, field

STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
PREDICATE_V02 = "https://slsa.dev/provenance/v0.2"
PREDICATE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE_V02 = "https://mobyproject.org/buildkit@v1"
BUILD_TYPE_V1 = "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md"
BUILDKIT_NS = "https://mobyproject.org/buildkit@v1"

#: frontend options that are build arguments (left out with mode=min)
_ARG_PREFIXES = ("build-arg:",)


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest_map(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value} if value else {}


class _Step(Model):
    digest: str
    op: dict[str, Any]


def _steps(definition: Any) -> list[_Step]:
    """The definition's ops in order, parsed; the final no-op head excluded."""
    from pybk.core.serialize import sha256_digest

    steps = [_Step(sha256_digest(raw), json.loads(raw)) for raw in definition.ops]
    if steps and not any(k in steps[-1].op for k in ("source", "exec", "file", "merge", "diff",
                                                      "build")):
        steps.pop()
    return steps


def _platform(op: Mapping[str, Any]) -> str | None:
    plat = op.get("platform")
    if not isinstance(plat, Mapping) or not plat.get("os"):
        return None
    text = f"{plat['os']}/{plat.get('architecture', '')}"
    return text + (f"/{plat['variant']}" if plat.get("variant") else "")


def materials(definition: Any, resolved: Mapping[str, str]) -> tuple[list[dict[str, Any]], bool]:
    """``(materials, complete)``: the external artifacts the definition reads, and whether
    that is all it reads (no local directory)."""
    out: list[dict[str, Any]] = []
    complete = True
    seen: set[str] = set()
    for step in _steps(definition):
        source = step.op.get("source")
        if not isinstance(source, Mapping):
            continue
        identifier = str(source.get("identifier", ""))
        scheme, _, rest = identifier.partition("://")
        attrs_ = source.get("attrs") or {}
        material: dict[str, Any]
        if scheme == "docker-image":
            digest = resolved.get(step.digest) or (rest.split("@", 1)[1] if "@" in rest else "")
            material = {"uri": image_purl(rest, _platform(step.op)),
                        "digest": _digest_map(digest)}
        elif scheme == "oci-layout":
            digest = resolved.get(step.digest) or rest.partition("@")[2]
            material = {"uri": identifier.split("@", 1)[0], "digest": _digest_map(digest)}
        elif scheme in ("http", "https"):
            material = {"uri": identifier,
                        "digest": _digest_map(str(attrs_.get("http.checksum", "")))}
        elif scheme == "git":
            material = {"uri": identifier, "digest": {}}
        else:  # local:// and anything else pybk cannot name immutably
            complete = False
            continue
        if material["uri"] not in seen:
            seen.add(material["uri"])
            out.append(material)
    return out, complete


def hermetic(definition: Any) -> bool:
    """No step could reach the network (every exec has ``network: none``)."""
    for step in _steps(definition):
        exec_ = step.op.get("exec")
        if isinstance(exec_, Mapping) and exec_.get("network") not in ("none", 2, "NONE"):
            return False
    return True


def llb_steps(definition: Any) -> list[dict[str, Any]]:
    """``buildConfig.llbDefinition``: each op as ``stepN`` with its inputs as ``stepM:i``."""
    steps = _steps(definition)
    ids = {step.digest: f"step{i}" for i, step in enumerate(steps)}
    out = []
    for step in steps:
        op = dict(step.op)
        inputs = [f"{ids.get(i.get('digest'), i.get('digest'))}:{i.get('index', 0)}"
                  for i in op.pop("inputs", []) or []]
        entry: dict[str, Any] = {"id": ids[step.digest], "op": {"Op": op}}
        if inputs:
            entry["inputs"] = inputs
        out.append(entry)
    return out


def source_map(definition: Any) -> dict[str, Any] | None:
    """The frontend's source map with locations keyed by step id (mode=max)."""
    from pybk.core.llb.ops import encode

    source = getattr(definition, "source", None)
    if source is None:
        return None
    encoded = encode(source)
    ids = {step.digest: f"step{i}" for i, step in enumerate(_steps(definition))}
    locations = encoded.get("locations") or {}
    encoded["locations"] = {ids[d]: v for d, v in locations.items() if d in ids}
    return encoded


class Provenance(Model):
    """One build's provenance request and the facts known before solving."""

    spec: Any  # pybk.core.cli.buildopts.ProvenanceSpec
    frontend: str = ""
    frontend_opts: Mapping[str, str] = field(factory=dict)
    locals: Sequence[str] = ()
    secrets: Sequence[tuple[str, bool]] = ()
    ssh: Sequence[str] = ()
    entry_point: str = ""
    started: float = field(factory=time.time)
    builder_platform: str = ""
    #: SOURCE_DATE_EPOCH: both timestamps become it and the invocation id is derived from the
    #: request, so a reproducible build stays reproducible with its provenance
    epoch: int | None = None
    invocation_id: str = ""

    def __post_init__(self) -> None:
        if not self.invocation_id:
            object.__setattr__(self, "invocation_id", self._invocation_id())

    def _invocation_id(self) -> str:
        if self.epoch is None:
            return _secrets.token_hex(13)[:25]
        import hashlib

        material = json.dumps([self.frontend, sorted(self.frontend_opts.items()),
                               list(self.locals), self.epoch]).encode()
        return hashlib.sha256(material).hexdigest()[:25]

    @property
    def predicate_type(self) -> str:
        return PREDICATE_V1 if self.spec.version == "v1" else PREDICATE_V02

    @property
    def inline_only(self) -> bool:
        return bool(self.spec.inline_only)

    def _request(self) -> dict[str, Any]:
        full = self.spec.mode == "max"
        args = {k: v for k, v in sorted(self.frontend_opts.items())
                if full or not k.startswith(_ARG_PREFIXES)}
        request: dict[str, Any] = {"frontend": self.frontend, "args": args,
                                   "locals": [{"name": n} for n in self.locals]}
        if full:
            request["secrets"] = [{"id": i, **({"optional": True} if o else {})}
                                  for i, o in self.secrets]
            request["ssh"] = [{"id": i} for i in self.ssh]
        return request

    def predicate(self, result: Any) -> dict[str, Any]:
        """The predicate for one solved result (``result.definition``, ``result.resolved``)."""
        definition = getattr(result, "definition", None)
        found, complete = (materials(definition, getattr(result, "resolved", {}) or {})
                           if definition is not None else ([], False))
        sealed = hermetic(definition) if definition is not None else False
        full = self.spec.mode == "max"
        started = self.started if self.epoch is None else self.epoch
        finished = time.time() if self.epoch is None else self.epoch
        buildkit_meta: dict[str, Any] = {}
        if full and definition is not None:
            mapped = source_map(definition)
            if mapped is not None:
                buildkit_meta["source"] = mapped
        config_source = {"entryPoint": self.entry_point} if self.entry_point else {}
        params_complete = full and bool(self.frontend)
        if self.spec.version == "v1":
            build_definition: dict[str, Any] = {
                "buildType": BUILD_TYPE_V1,
                "externalParameters": {
                    "configSource": {"path": self.entry_point} if self.entry_point else {},
                    "request": self._request()},
                "internalParameters": {"builderPlatform": self.builder_platform},
                "resolvedDependencies": found,
            }
            if full and definition is not None:
                build_definition["internalParameters"]["buildConfig"] = {
                    "llbDefinition": llb_steps(definition)}
            metadata: dict[str, Any] = {
                "invocationID": self.invocation_id, "startedOn": _rfc3339(started),
                "finishedOn": _rfc3339(finished),
                "buildkit_completeness": {"request": params_complete,
                                          "resolvedDependencies": complete},
                "buildkit_hermetic": sealed,
                "buildkit_reproducible": bool(self.spec.reproducible)}
            if buildkit_meta:
                metadata["buildkit_metadata"] = buildkit_meta
            return {"buildDefinition": build_definition,
                    "runDetails": {"builder": {"id": self.spec.builder_id},
                                   "metadata": metadata}}
        predicate: dict[str, Any] = {
            "builder": {"id": self.spec.builder_id},
            "buildType": BUILD_TYPE_V02,
            "materials": found,
            "invocation": {"configSource": config_source, "parameters": self._request(),
                           "environment": {"platform": self.builder_platform}},
            "metadata": {
                "buildInvocationID": self.invocation_id,
                "buildStartedOn": _rfc3339(started),
                "buildFinishedOn": _rfc3339(finished),
                "completeness": {"parameters": params_complete, "environment": True,
                                 "materials": complete},
                "reproducible": bool(self.spec.reproducible),
                f"{BUILDKIT_NS}#hermetic": sealed,
            },
        }
        if full and definition is not None:
            predicate["buildConfig"] = {"llbDefinition": llb_steps(definition)}
        if buildkit_meta:
            predicate["metadata"][f"{BUILDKIT_NS}#metadata"] = buildkit_meta
        return predicate

    def statement(self, result: Any, subjects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The in-toto statement about ``subjects`` (``{"name", "digest": {alg: hex}}``)."""
        return {"_type": STATEMENT_V1 if self.spec.version == "v1" else STATEMENT_V01,
                "predicateType": self.predicate_type,
                "subject": [dict(s) for s in subjects],
                "predicate": self.predicate(result)}
