"""Parsing of ``pybk build``'s buildx-compatible flags into the typed options of
:mod:`pybk.core.engine.request`.

Every parser raises :class:`~pybk.core.errors.UsageError` naming the flag, so the CLI can exit 2
with one clear line before any build work starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from pybk.core.didyoumean import did_you_mean
from pybk.core.engine.request import (
    CacheSpec,
    ContextSpec,
    OutputSpec,
    ProvenanceSpec,
    SecretSpec,
    SSHSpec,
)
from pybk.core.errors import UsageError

PROGRESS_MODES = ("auto", "tty", "plain", "rawjson", "quiet", "none")
NETWORK_MODES = ("default", "none", "host")
CALL_MODES = ("build", "check", "outline", "targets")


# -- CSV ---------------------------------------------------------------------------------------


def split_csv(value: str, *, flag: str) -> list[str]:
    """Split on commas outside double quotes and drop the quotes (``name="a,b"`` stays whole)."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            if quoted and i + 1 < len(value) and value[i + 1] == '"':
                current.append('"')
                i += 2
                continue
            quoted = not quoted
        elif ch == "," and not quoted:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise UsageError(f"unterminated quote in {value!r}", flag=flag)
    fields.append("".join(current))
    return fields


def parse_kv_csv(value: str, *, flag: str) -> dict[str, str]:
    """``a=1,b="x,y"`` → ``{"a": "1", "b": "x,y"}``; every field needs ``=`` and a key."""
    if not value.strip():
        raise UsageError("empty value", flag=flag)
    result: dict[str, str] = {}
    for field in split_csv(value, flag=flag):
        field = field.strip()
        key, sep, val = field.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise UsageError(f"invalid value {field!r}: expected key=value", flag=flag)
        if key in result:
            raise UsageError(f"duplicate key {key!r}", flag=flag)
        result[key] = val
    return result


# -- individual flags --------------------------------------------------------------------------


def parse_output(value: str, known_types: Iterable[str] | None = None) -> OutputSpec:
    """``-o type=local,dest=out``; buildx shorthands ``-o DIR`` and ``-o -``."""
    flag = "--output"
    if value == "-":
        return OutputSpec("tar", {"dest": "-"})
    if "=" not in value and "," not in value:
        if not value:
            raise UsageError("empty value", flag=flag)
        return OutputSpec("local", {"dest": value})
    kv = parse_kv_csv(value, flag=flag)
    typ = kv.pop("type", None)
    if not typ:
        raise UsageError(f"{value!r}: type= is required (e.g. type=local,dest=DIR)", flag=flag)
    if "output" in kv:
        raise UsageError("output= is not supported; use dest=", flag=flag)
    if typ == "registry":
        typ = "image"
        kv.setdefault("push", "true")
    if typ == "image" and kv.get("push", "false").lower() == "true" and not kv.get("name"):
        raise UsageError("type=image,push=true needs name= (or -t)", flag=flag)
    check_known(typ, known_types, flag=flag, what="output type")
    if typ in ("local",) and not kv.get("dest"):
        raise UsageError(f"type={typ} needs dest=DIR", flag=flag)
    return OutputSpec(typ, kv)


def load_output(known_types: Iterable[str] | None = None) -> OutputSpec:
    """``--load``: a docker tarball handed to ``docker load`` of a running engine."""
    import shutil
    import tempfile

    docker = shutil.which("docker", path="/usr/bin:/usr/local/bin")
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    socket = host[len("unix://"):] if host.startswith("unix://") else None
    if docker is None or (socket is not None and not os.path.exists(socket)):
        raise UsageError("--load needs a running docker engine (docker CLI and "
                         f"{host}); use -o type=docker,dest=FILE instead", flag="--load")
    check_known("docker", known_types, flag="--load", what="output type")
    fd, dest = tempfile.mkstemp(prefix="pybk-load-", suffix=".tar")
    os.close(fd)
    return OutputSpec("docker", {"dest": dest}, load=True)


def parse_cache(value: str, *, flag: str, known_types: Iterable[str] | None = None) -> CacheSpec:
    """``--cache-from``/``--cache-to``; a bare value is a registry ref (legacy form)."""
    if not value.strip():
        raise UsageError("empty value", flag=flag)
    if "=" not in value:
        return CacheSpec("registry", {"ref": value})
    kv = parse_kv_csv(value, flag=flag)
    typ = kv.pop("type", None)
    if not typ:
        raise UsageError(f"{value!r}: type= is required", flag=flag)
    check_known(typ, known_types, flag=flag, what="cache type")
    mode = kv.get("mode")
    if flag == "--cache-to" and mode is not None and mode not in ("min", "max"):
        raise UsageError(f"invalid mode {mode!r}: expected min or max", flag=flag)
    if flag == "--cache-to" and "ignore-error" in kv and kv["ignore-error"].lower() not in (
        "true", "false"
    ):
        raise UsageError(f"invalid ignore-error {kv['ignore-error']!r}: expected true or false",
                         flag=flag)
    return CacheSpec(typ, kv)


def parse_secret(value: str) -> SecretSpec:
    """``id=X[,src|source=PATH][,env=VAR][,type=file|env]``; buildx's defaults."""
    flag = "--secret"
    kv = parse_kv_csv(value, flag=flag)
    unknown = set(kv) - {"id", "src", "source", "env", "type", "required"}
    if unknown:
        raise UsageError(f"unknown key {sorted(unknown)[0]!r} in {value!r}", flag=flag)
    sid = kv.get("id", "")
    if not sid:
        raise UsageError(f"{value!r}: id= is required", flag=flag)
    typ = kv.get("type")
    if typ not in (None, "file", "env"):
        raise UsageError(f"invalid type {typ!r}: expected file or env", flag=flag)
    src = kv.get("src") or kv.get("source")
    env = kv.get("env")
    if src and env:
        raise UsageError("src and env are mutually exclusive", flag=flag)
    if typ is None:
        if env:
            typ = "env"
        elif src:
            typ = "file"
        else:
            typ = "env" if sid in os.environ else "file"
    if typ == "env":
        source = env or src or sid
    else:
        if env:
            raise UsageError("type=file cannot take env=", flag=flag)
        source = src or sid
    if typ == "file" and not os.path.isfile(source):
        raise UsageError(f"secret {sid!r}: file {source!r} not found", flag=flag)
    return SecretSpec(sid, typ, source)


_SSH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


_GO_BOOL = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
            **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}


def parse_ssh(value: str) -> SSHSpec:
    """``default``, ``ID=SOCKET[,raw=BOOL]``, ``ID=KEY[,KEY]`` (buildctl's syntax)."""
    flag = "--ssh"
    sid, sep, rest = value.partition("=")
    if not _SSH_ID.match(sid):
        raise UsageError(f"invalid ssh id {sid!r}", flag=flag)
    items = [p for p in split_csv(rest, flag=flag) if p] if sep else []
    raw = False
    for item in [i for i in items if i.startswith("raw=")]:
        if item[4:] not in _GO_BOOL:
            raise UsageError(f"invalid value for 'raw': {item[4:]!r} (true or false)", flag=flag)
        raw = _GO_BOOL[item[4:]]
        items.remove(item)
    paths = tuple(items)
    if sep and not paths and not raw:
        raise UsageError(f"{value!r}: expected a socket or key path after '='", flag=flag)
    if raw and len(paths) != 1:
        raise UsageError(f"raw mode must supply exactly one socket path for {sid!r}", flag=flag)
    if not paths and not os.environ.get("SSH_AUTH_SOCK"):
        raise UsageError(f"{sid}: no path given and SSH_AUTH_SOCK is not set", flag=flag)
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{sid}: {path} does not exist", flag=flag)
    if paths:
        from pybk.core.engine.sshagent import classify, load_keys

        if classify(paths, sid) is None:
            if raw:
                raise UsageError(f"{sid}: raw mode only supported with socket paths", flag=flag)
            load_keys(paths)  # each file named is a key the agent can use (checked here)
    return SSHSpec(sid, paths, raw)


_CONTEXT_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_./:-]*$")


def parse_build_context(value: str) -> ContextSpec:
    """``name=DIR | docker-image://REF | oci-layout://DIR[:TAG|@DIGEST] | git URL | https URL |
    target:STAGE``."""
    flag = "--build-context"
    name, sep, target = value.partition("=")
    if not sep or not name or not target:
        raise UsageError(f"invalid value {value!r}: expected name=value", flag=flag)
    if not _CONTEXT_NAME.match(name):
        raise UsageError(f"invalid context name {name!r}", flag=flag)
    if target.startswith("docker-image://"):
        if len(target) == len("docker-image://"):
            raise UsageError(f"{name}: docker-image:// needs an image reference", flag=flag)
        return ContextSpec(name, "docker-image", target[len("docker-image://"):])
    if target.startswith("oci-layout://"):
        path = target[len("oci-layout://"):]
        if not path:
            raise UsageError(f"{name}: oci-layout:// needs a directory", flag=flag)
        return ContextSpec(name, "oci-layout", path)
    if target.startswith("target:"):
        return ContextSpec(name, "target", target[len("target:"):])
    if target.startswith(("git://", "git@")) or re.match(r"^https?://.*\.git(#.*)?$", target):
        return ContextSpec(name, "git", target)
    if target.startswith(("http://", "https://")):
        return ContextSpec(name, "http", target)
    if "://" in target:
        raise UsageError(f"{name}: unsupported scheme in {target!r}", flag=flag)
    if not os.path.isdir(target):
        raise UsageError(f"{name}: directory {target!r} not found", flag=flag)
    return ContextSpec(name, "local", target)


def parse_build_arg(value: str) -> tuple[str, str | None]:
    """``K=V``, or ``K`` alone to take the value from the environment (skipped when unset)."""
    key, sep, val = value.partition("=")
    if not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
        raise UsageError(f"invalid build argument {value!r}", flag="--build-arg")
    return key, (val if sep else os.environ.get(key))


def parse_allow(value: str) -> str:
    """``network.host``, ``security.insecure`` or ``device[=NAME[,alias=X]]``, as in
    ``insecure-entitlements``; whether the configuration grants it is checked when the build
    starts (:func:`pybk.core.config.schema.check_entitlements`)."""
    from pybk.core.config.schema import check_entitlement

    try:
        check_entitlement(value)
    except ValueError as exc:
        raise UsageError(str(exc), flag="--allow") from None
    return value


_PLATFORM = re.compile(r"^[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_.]+)?$")


def parse_platforms(values: Sequence[str]) -> tuple[str, ...]:
    result = []
    for value in values:
        for item in value.split(","):
            item = item.strip().lower()
            if item == "local":
                from pybk.core.platform import host_platform  # attrs: only for 'local'

                item = str(host_platform())
            if not _PLATFORM.match(item):
                raise UsageError(f"invalid platform {item!r}: expected os/arch[/variant]",
                                 flag="--platform")
            result.append(item)
    return tuple(result)


def parse_choice(value: str, choices: Sequence[str], *, flag: str) -> str:
    if value not in choices:
        raise UsageError(f"invalid value {value!r}: expected one of {', '.join(choices)}", flag=flag)
    return value


CALL_FORMATS = ("text", "json")


def parse_call(value: str) -> tuple[str, str]:
    """``--call NAME[,format=text|json]`` as buildx reads it → ``(name, format)``. ``json``
    prints what the frontend answers as ``result.json`` (``outline`` and ``targets``)."""
    name, fmt = "", "text"
    for item in split_csv(value, flag="--call"):
        key, sep, val = item.partition("=")
        if not sep:
            if name:
                raise UsageError(f"invalid value {value!r}: one function name only", flag="--call")
            name = item.strip()
        elif key.strip() == "format":
            fmt = parse_choice(val.strip(), CALL_FORMATS, flag="--call format")
        else:
            raise UsageError(f"invalid field {item!r} in {value!r}: only format= is known",
                             flag="--call")
    name = parse_choice(name or "build", CALL_MODES, flag="--call")
    if fmt == "json" and name not in ("outline", "targets"):
        raise UsageError(f"format=json is for outline and targets, not {name}", flag="--call")
    return name, fmt


def parse_add_host(value: str) -> tuple[str, str]:
    host, sep, ip = value.partition(":")
    if "=" in value and not sep:
        host, sep, ip = value.partition("=")
    if not sep or not host or not ip:
        raise UsageError(f"invalid value {value!r}: expected host:ip", flag="--add-host")
    return host, ip


_ULIMIT = re.compile(r"[a-z]+=-?[0-9]+(:-?[0-9]+)?")


def parse_ulimit(value: str) -> str:
    """``--ulimit name=soft[:hard]`` (checked again, names included, by the frontend)."""
    if _ULIMIT.fullmatch(value) is None:
        raise UsageError(f"invalid value {value!r}: expected name=soft[:hard] "
                         "(e.g. nofile=1024:2048)", flag="--ulimit")
    return value


#: buildx ``--resource`` keys and the frontend options they become
RESOURCE_KEYS = {"memory": "memory", "memory-swap": "memswap", "cpu-shares": "cpushares",
                 "cpu-period": "cpuperiod", "cpu-quota": "cpuquota",
                 "cpuset-cpus": "cpusetcpus", "cpuset-mems": "cpusetmems"}


def parse_resources(values: Sequence[str]) -> tuple[str, ...]:
    """``--resource memory=512m,cpu-quota=50000`` (repeatable) as frontend options
    (``memory=536870912``, ``cpuquota=50000``)."""
    from pybk.core.units import parse_size

    out: dict[str, str] = {}
    for value in values:
        for item in filter(None, value.split(",")):
            key, eq, text = item.partition("=")
            if not eq or key not in RESOURCE_KEYS:
                raise UsageError(f"invalid value {item!r}: expected KEY=VALUE with KEY one of "
                                 f"{', '.join(RESOURCE_KEYS)}", flag="--resource")
            if key.startswith("memory") and text != "-1":
                try:
                    text = str(parse_size(text))
                except ValueError as e:
                    raise UsageError(f"invalid value {item!r}: {e}", flag="--resource") from None
            elif not key.startswith("cpuset") and _INTEGER.fullmatch(text) is None:
                raise UsageError(f"invalid value {item!r}: expected an integer",
                                 flag="--resource")
            out[RESOURCE_KEYS[key]] = text
    return tuple(f"{k}={v}" for k, v in out.items())


_INTEGER = re.compile(r"-?[0-9]+")


def parse_cgroup_parent(value: str) -> str:
    from pybk.core.config.schema import check_cgroup_parent

    try:
        check_cgroup_parent(value)
    except ValueError as e:
        raise UsageError(str(e), flag="--cgroup-parent") from None
    return value


def parse_key_values(values: Sequence[str], *, flag: str) -> dict[str, str]:
    """Repeated ``K=V`` flags (``--label``, ``--opt``, ``--annotation``)."""
    result = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid value {value!r}: expected key=value", flag=flag)
        result[key] = val
    return result


ANNOTATION_TYPES = ("manifest", "manifest-descriptor", "index", "index-descriptor")
_ANNOTATION_TYPE = re.compile(r"^([a-z-]+)(?:\[([A-Za-z0-9_/-]+)\])?$")


def parse_annotations(values: Sequence[str]) -> dict[str, str]:
    """``--annotation [TYPE[,TYPE…]:]KEY=VALUE`` (buildx) as the exporters' attributes:
    ``annotation.KEY`` without a type (the manifests), else ``annotation-TYPE.KEY`` or
    ``annotation-TYPE[PLATFORM].KEY`` per type (``manifest``, ``manifest-descriptor``,
    ``index``, ``index-descriptor``; a platform only for the first two)."""
    from pybk.core.errors import InputError
    from pybk.core.platform import parse_platform

    flag = "--annotation"
    attrs: dict[str, str] = {}
    for value in values:
        if not value:
            continue
        name, sep, val = value.partition("=")
        if not sep:
            raise UsageError(f'invalid annotation "{value}": expected [TYPE:]KEY=VALUE', flag=flag)
        types, colon, key = name.partition(":")
        if not colon:
            types, key = "", name
        if not key:
            raise UsageError(f'invalid annotation "{value}": the key is empty', flag=flag)
        if not types:
            attrs[f"annotation.{key}"] = val
            continue
        for part in types.split(","):
            m = _ANNOTATION_TYPE.match(part)
            if m is None:
                raise UsageError(f'invalid annotation "{value}": type "{part}" is not TYPE or '
                                 "TYPE[PLATFORM]", flag=flag)
            typ, platform = m.group(1), m.group(2)
            if typ not in ANNOTATION_TYPES:
                raise UsageError(f'invalid annotation "{value}": unknown type "{typ}"'
                                 f"{did_you_mean(typ, ANNOTATION_TYPES, quote=chr(34))} "
                                 f"(one of {', '.join(ANNOTATION_TYPES)})", flag=flag)
            qualifier = ""
            if platform:
                if typ not in ("manifest", "manifest-descriptor"):
                    raise UsageError(f'invalid annotation "{value}": a platform applies to '
                                     "manifest and manifest-descriptor annotations only",
                                     flag=flag)
                try:
                    qualifier = f"[{parse_platform(platform)}]"
                except InputError:
                    raise UsageError(f'invalid annotation "{value}": invalid platform '
                                     f'"{platform}"', flag=flag) from None
            attrs[f"annotation-{typ}{qualifier}.{key}"] = val
    return attrs


def check_known(typ: str, known: Iterable[str] | None, *, flag: str, what: str) -> None:
    if known is None:
        return
    known = list(known)
    if typ not in known:
        hint = did_you_mean(typ, known, loose=True, quote="'")
        raise UsageError(f"unknown {what} {typ!r}{hint}; available: {', '.join(sorted(known)) or 'none'}",
                         flag=flag)


# -- attestations ------------------------------------------------------------------------------


_PROVENANCE_KEYS = {"mode", "version", "builder-id", "reproducible", "inline-only", "filename",
                    "disabled"}


def _bool(value: str, key: str, flag: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise UsageError(f"invalid {key} {value!r}: expected true or false", flag=flag)


def parse_attests(attest: Sequence[str], provenance: str | None,
                  sbom: str | None) -> ProvenanceSpec | None:
    """The provenance to attach, from ``--attest`` values and the ``--provenance`` /
    ``--sbom`` shorthands (``true``, ``false``, ``min``, ``max`` or ``KEY=V,…``); None for
    none. SBOMs need a scanner image BuildKit runs as a frontend, which pybk does not: asking
    for one is a usage error."""
    wanted: dict[str, dict[str, str]] = {}
    for value in attest:
        kv = parse_kv_csv(value, flag="--attest")
        typ = kv.pop("type", "")
        if typ not in ("provenance", "sbom"):
            raise UsageError(f"{value!r}: type= must be provenance or sbom", flag="--attest")
        wanted[typ] = kv
    for typ, value, flag in (("provenance", provenance, "--provenance"),
                             ("sbom", sbom, "--sbom")):
        if value is None:
            continue
        low = value.strip().lower()
        if low in ("true", "1", ""):
            wanted[typ] = {}
        elif low in ("false", "0"):
            wanted[typ] = {"disabled": "true"}
        elif typ == "provenance" and low in ("min", "max"):
            wanted[typ] = {"mode": low}
        else:
            wanted[typ] = parse_kv_csv(value, flag=flag)
    sbom_spec = wanted.get("sbom")
    if sbom_spec is not None and not _bool(sbom_spec.get("disabled", "false"), "disabled",
                                           "--sbom"):
        raise UsageError("SBOM attestations need a scanner image run as a frontend "
                         "(docker/buildkit-syft-scanner); pybk does not generate SBOMs "
                         "(use --sbom=false)", flag="--sbom")
    spec = wanted.get("provenance")
    if spec is None:
        return None
    flag = "--provenance"
    unknown = sorted(set(spec) - _PROVENANCE_KEYS)
    if unknown:
        raise UsageError(f"unknown provenance parameter {unknown[0]!r} (known: "
                         f"{', '.join(sorted(_PROVENANCE_KEYS))})", flag=flag)
    if _bool(spec.get("disabled", "false"), "disabled", flag):
        return None
    mode = spec.get("mode", "min")
    if mode not in ("min", "max"):
        raise UsageError(f"invalid mode {mode!r}: expected min or max", flag=flag)
    version = spec.get("version", "v0.2")
    if version not in ("v0.2", "v1"):
        raise UsageError(f"invalid version {version!r}: expected v0.2 or v1", flag=flag)
    filename = spec.get("filename", "provenance.json")
    if not filename or "/" in filename or filename in (".", ".."):
        raise UsageError(f"invalid filename {filename!r}: a file name without /", flag=flag)
    return ProvenanceSpec(
        mode=mode, version=version, builder_id=spec.get("builder-id", ""),
        reproducible=_bool(spec.get("reproducible", "false"), "reproducible", flag),
        inline_only=_bool(spec.get("inline-only", "false"), "inline-only", flag),
        filename=filename)
