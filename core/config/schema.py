"""pybk's daemon configuration: exactly BuildKit's ``buildkitd.toml`` schema.

A buildkitd.toml that BuildKit accepts loads here too. Keys are BuildKit's spellings (camelCase,
kebab-case and all); the Python fields are snake_case. Unknown keys are errors with a "did you
mean"; keys pybk knows but does not act on yet load with a warning naming them; every problem of
a file is reported at once with its key path and line.

Entry points: :func:`load_config`, :func:`load_config_text`, :func:`config_to_json`,
:func:`gc_prune_rules` (what the garbage collector runs) and :func:`debug_config_command`.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs

from pybk.core.converter import (
    KeyPath,
    Problem,
    each,
    each_key,
    external_key,
    field_meta,
    get_converter,
    problems_from_exception,
    render_path,
    setting,
    suggest,
)
from pybk.core.errors import ConfigError, UsageError
from pybk.core.paths import default_root
from pybk.core.units import DiskSpace, Seconds

__all__ = [
    "CDIConfig",
    "CacheConfig",
    "Config",
    "ContainerdConfig",
    "ContainerdRuntime",
    "DNSConfig",
    "DockerfileFrontendConfig",
    "FILTER_FIELDS",
    "FrontendsConfig",
    "GCPolicy",
    "GHACacheConfig",
    "GHASignConfig",
    "GHAVerifyConfig",
    "GHAVerifyPolicy",
    "GRPCConfig",
    "GatewayFrontendConfig",
    "HistoryConfig",
    "KeyPair",
    "LogConfig",
    "OCIConfig",
    "OTELConfig",
    "PruneRule",
    "RECORD_TYPES",
    "RegistryConfig",
    "Selector",
    "SystemConfig",
    "TLSConfig",
    "WorkersConfig",
    "config_to_json",
    "debug_config_command",
    "default_gc_policies",
    "default_root",
    "gc_prune_rules",
    "load_config",
    "load_config_text",
    "parse_filter",
]


# --------------------------------------------------------------------------------------------
# Value checks (raise ValueError; the converter adds the key path)
# --------------------------------------------------------------------------------------------


def _one_of(*choices: str, ignore_case: bool = False) -> Callable[[str], None]:
    def check(value: str) -> None:
        candidate = value.lower() if ignore_case else value
        if candidate not in choices:
            shown = ", ".join(f'"{c}"' for c in choices)
            raise ValueError(f'"{value}" is not one of {shown}{suggest(value, choices)}')

    return check


def _non_negative(value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"must not be negative, got {value}")


ENTITLEMENTS = ("network.host", "security.insecure", "device")


def check_entitlement(value: str) -> None:
    name, eq, rest = value.partition("=")
    if name == "device":
        if eq:
            device, *options = rest.split(",")
            if not device:
                raise ValueError(f'invalid entitlement "{value}": missing device name')
            for option in options:
                key, has_eq, _ = option.partition("=")
                if key != "alias" or not has_eq:
                    raise ValueError(f'invalid entitlement "{value}": unknown device option '
                                     f'"{option}" (only alias=NAME)')
        return
    if eq and name in ENTITLEMENTS:
        raise ValueError(f'invalid entitlement "{value}": {name} takes no value')
    if value not in ENTITLEMENTS:
        raise ValueError(f'unknown entitlement "{value}"{suggest(value, ENTITLEMENTS)}; '
                         f"allowed: {', '.join(ENTITLEMENTS)}")


GRPC_SCHEMES = ("unix", "tcp", "fd", "npipe", "vsock")


def _check_address(value: str) -> None:
    scheme, sep, rest = value.partition("://")
    if not sep or not (rest or scheme == "fd"):
        raise ValueError(f'invalid address "{value}": expected unix:///path or tcp://host:port')
    if scheme not in GRPC_SCHEMES:
        raise ValueError(f'invalid address "{value}": unknown scheme "{scheme}"'
                         f"{suggest(scheme, GRPC_SCHEMES)}")


def check_entitlements(requested: Iterable[str], config: Any) -> frozenset[str]:
    """The names of the requested entitlements, once every one is well formed and granted by
    ``config``'s ``insecure-entitlements`` (as BuildKit's daemon checks a build request); a
    :class:`~pybk.core.errors.UsageError` otherwise. Nothing is solved before this passes."""
    values = list(requested)
    for value in values:
        try:
            check_entitlement(value)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    granted = {e.partition("=")[0] for e in getattr(config, "insecure_entitlements", ()) or ()}
    names = dict.fromkeys(e.partition("=")[0] for e in values)
    for name in names:
        if name not in granted:
            raise UsageError(f"granting entitlement {name} is not allowed by build daemon "
                             "configuration (add it to insecure-entitlements in buildkitd.toml)")
    return frozenset(names)


def _check_ip(value: str) -> None:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f'"{value}" is not an IP address') from None


def _check_host(host: str) -> None:
    if not host or "://" in host or "/" in host:
        raise ValueError("a registry host is host[:port], without scheme or path "
                         '(e.g. [registry."docker.io"])')


# --------------------------------------------------------------------------------------------
# GC filters (containerd filter syntax)
# --------------------------------------------------------------------------------------------

#: cache record types a ``type==`` filter can name
RECORD_TYPES = ("regular", "source.local", "exec.cachemount", "source.git.checkout",
                "frontend", "internal")
#: fields a cache record exposes to filters
FILTER_FIELDS = ("id", "parents", "description", "inuse", "mutable", "immutable", "type",
                 "shared", "private")


@attrs.frozen
class Selector:
    """One ``field==value`` term of a filter; ``operator`` is ``==``, ``!=``, ``~=`` or ``""``
    (presence)."""

    fieldpath: tuple[str, ...]
    operator: str
    value: str = ""


_FIELD_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_QUOTES = '"/|'


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    out, i = [], pos + 1
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", quote: quote, '"': '"'}
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt not in escapes:
                if quote == '"':
                    raise ValueError(f"illegal escape \\{nxt} at position {i + 1}")
                out.append(c)
                i += 1
                continue
            out.append(escapes[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    raise ValueError(f"quoted text starting at position {pos + 1} is not terminated")


def parse_filter(text: str) -> list[Selector]:
    """The selectors of one filter string (all must match); ValueError when malformed.

    Grammar (containerd): ``selector ("," selector)*``; ``selector := fieldpath [op value]``;
    ``fieldpath := field ("." field)*``; ``op := "==" | "!=" | "~="``; values and fields may be
    quoted with ``"``, ``/`` or ``|``.
    """
    pos, n = 0, len(text)
    selectors: list[Selector] = []

    def skip_space() -> None:
        nonlocal pos
        while pos < n and text[pos].isspace():
            pos += 1

    def field() -> str:
        nonlocal pos
        skip_space()
        if pos < n and text[pos] in _QUOTES:
            value, pos = _read_quoted(text, pos)
            return value
        m = _FIELD_CHARS.match(text, pos)
        if m is None:
            got = f'"{text[pos]}"' if pos < n else "end of filter"
            raise ValueError(f"expected a field name at position {pos + 1}, got {got}")
        pos = m.end()
        return m.group()

    if text.strip() == "":
        return []
    while True:
        path = [field()]
        while pos < n and text[pos] == ".":
            pos += 1
            path.append(field())
        skip_space()
        if pos >= n or text[pos] == ",":
            selectors.append(Selector(tuple(path), ""))
        else:
            start = pos
            while pos < n and text[pos] in "=!~":
                pos += 1
            op = text[start:pos]
            if op not in ("==", "!=", "~="):
                shown = f'"{op}"' if op else f'"{text[start]}"'
                raise ValueError(f'expected an operator ("==", "!=" or "~=") at position '
                                 f"{start + 1}, got {shown}")
            skip_space()
            if pos < n and text[pos] in _QUOTES:
                value, pos = _read_quoted(text, pos)
            else:
                vstart = pos
                if pos < n and text[pos] in ".,":
                    raise ValueError(f"expected a value at position {pos + 1}")
                while pos < n and text[pos] != "," and not text[pos].isspace():
                    pos += 1
                value = text[vstart:pos]
                if not value:
                    raise ValueError(f"expected a value after {op} at position {pos + 1}")
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f'invalid regular expression "{value}": {exc}') from None
            selectors.append(Selector(tuple(path), op, value))
        skip_space()
        if pos >= n:
            return selectors
        if text[pos] != ",":
            raise ValueError(f'unexpected "{text[pos]}" at position {pos + 1}')
        pos += 1


def _check_filter(text: str) -> None:
    try:
        parse_filter(text)
    except ValueError as exc:
        raise ValueError(f'invalid filter "{text}": {exc}') from None


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

_NOT_YET = "not supported by pybk yet; ignored"


@attrs.frozen(kw_only=True)
class LogConfig:
    """``[log]``; after loading, ``level`` is always set (``None`` only on a hand-made
    instance, meaning ``info``)."""

    format: str = setting(default="text", check=_one_of("text", "json"))
    level: str | None = setting(default=None, check=_one_of(
        "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace",
        ignore_case=True))


@attrs.frozen(kw_only=True)
class TLSConfig:
    """``[grpc.tls]``"""

    cert: str = ""
    key: str = ""
    ca: str = ""


@attrs.frozen(kw_only=True)
class GRPCConfig:
    """``[grpc]``: the daemon's API listeners."""

    address: list[str] = setting(factory=list, check=each(_check_address))
    debug_address: str = setting("debugAddress", default="")
    uid: int | None = setting(default=None, check=_non_negative)
    gid: int | None = setting(default=None, check=_non_negative)
    security_descriptor: str = setting("securityDescriptor", default="",
                                       unsupported="Windows named pipes only; ignored")
    tls: TLSConfig = setting(factory=TLSConfig)


@attrs.frozen(kw_only=True)
class OTELConfig:
    """``[otel]``"""

    socket_path: str = setting("socketPath", default="")


@attrs.frozen(kw_only=True)
class CDIConfig:
    """``[cdi]``: Container Device Interface."""

    disabled: bool | None = None
    spec_dirs: list[str] = setting("specDirs", factory=list)
    auto_allowed: list[str] = setting("autoAllowed", factory=list)


@attrs.frozen(kw_only=True)
class DNSConfig:
    """``[dns]``: resolv.conf of build containers (empty: the host's)."""

    nameservers: list[str] = setting(factory=list, check=each(_check_ip))
    options: list[str] = setting(factory=list)
    search_domains: list[str] = setting("searchDomains", factory=list)


@attrs.frozen(kw_only=True)
class HistoryConfig:
    """``[history]``: build history retention."""

    max_age: Seconds = setting("maxAge", default=Seconds(48 * 3600))
    max_entries: int = setting("maxEntries", default=50, check=_non_negative)


@attrs.frozen(kw_only=True)
class GCPolicy:
    """One ``[[worker.X.gcpolicy]]`` entry (one prune pass)."""

    all: bool = False
    filters: list[str] = setting(factory=list, check=each(_check_filter))
    keep_duration: Seconds = setting("keepDuration", default=Seconds(0))
    keep_bytes: DiskSpace = setting("keepBytes", factory=DiskSpace,
                                    deprecated="use reservedSpace")
    reserved_space: DiskSpace = setting("reservedSpace", factory=DiskSpace)
    max_used_space: DiskSpace = setting("maxUsedSpace", factory=DiskSpace)
    min_free_space: DiskSpace = setting("minFreeSpace", factory=DiskSpace)


OCI_SNAPSHOTTERS = ("auto", "overlayfs", "native", "fuse-overlayfs", "stargz")
SUPPORTED_SNAPSHOTTERS = ("auto", "overlayfs", "native")
NETWORK_MODES = ("auto", "host", "cni", "bridge", "none")


def _check_subnet(value: str) -> None:
    import ipaddress

    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f'"{value}" is not a subnet (e.g. "10.10.0.0/16")') from None
    if net.version != 4 or net.prefixlen > 30:
        raise ValueError(f'"{value}" must be an IPv4 subnet with room for addresses '
                         "(prefix length at most 30)")


def _check_ifname(value: str) -> None:
    if not value or len(value) > 15 or any(c in value for c in "/: \t\n") or value in (".",
                                                                                        ".."):
        raise ValueError(f'"{value}" is not a network interface name (1-15 characters, no '
                         "'/', ':' or spaces)")


def _check_platform(value: str) -> None:
    from pybk.core.errors import InputError
    from pybk.core.platform import parse_platform

    try:
        parse_platform(value)
    except InputError:
        raise ValueError(f'"{value}" is not a platform (os/arch[/variant], e.g. '
                         '"linux/amd64")') from None


@attrs.frozen(kw_only=True)
class _WorkerBase:
    """Keys shared by ``[worker.oci]`` and ``[worker.containerd]``."""

    enabled: bool | None = None
    labels: dict[str, str] = setting(factory=dict)
    platforms: list[str] = setting(factory=list, check=each(_check_platform))
    rootless: bool = setting(default=False, unsupported=_NOT_YET)
    apparmor_profile: str = setting("apparmor-profile", default="", unsupported=_NOT_YET)
    selinux: bool = setting(default=False, unsupported=_NOT_YET)
    max_parallelism: int = setting("max-parallelism", default=0, check=_non_negative)
    default_cgroup_parent: str = setting("defaultCgroupParent", default="",
                                         unsupported=_NOT_YET)
    # GC
    gc: bool | None = None
    gc_keep_storage: DiskSpace = setting("gckeepstorage", factory=DiskSpace,
                                         deprecated="use reservedSpace")
    reserved_space: DiskSpace = setting("reservedSpace", factory=DiskSpace)
    max_used_space: DiskSpace = setting("maxUsedSpace", factory=DiskSpace)
    min_free_space: DiskSpace = setting("minFreeSpace", factory=DiskSpace)
    gc_policy: list[GCPolicy] = setting("gcpolicy", factory=list)
    # network
    network_mode: str = setting("networkMode", default="auto", check=_one_of(*NETWORK_MODES))
    cni_config_path: str = setting("cniConfigPath", default="/etc/buildkit/cni.json")
    cni_binary_path: str = setting("cniBinaryPath", default="")
    cni_pool_size: int = setting("cniPoolSize", default=16, check=_non_negative)
    bridge_name: str = setting("bridgeName", default="buildkit0", check=_check_ifname)
    bridge_subnet: str = setting("bridgeSubnet", default="10.10.0.0/16", check=_check_subnet)

    @property
    def gc_enabled(self) -> bool:
        """GC runs unless ``gc = false``."""
        return self.gc is not False


@attrs.frozen(kw_only=True)
class OCIConfig(_WorkerBase):
    """``[worker.oci]``: the runc (or crun, ``binary``) worker."""

    snapshotter: str = setting(default="auto", check=_one_of(*OCI_SNAPSHOTTERS))
    binary: str = ""
    no_process_sandbox: bool = setting("noProcessSandbox", default=False, unsupported=_NOT_YET)
    proxy_snapshotter_path: str = setting("proxySnapshotterPath", default="",
                                          unsupported=_NOT_YET)
    isolate_cgroups: bool = setting("isolateCgroups", default=False, unsupported=_NOT_YET)
    stargz_snapshotter: dict[str, Any] = setting("stargzSnapshotter", factory=dict,
                                                 unsupported=_NOT_YET)
    user_remap_unsupported: str = setting("userRemapUnsupported", default="",
                                          unsupported=_NOT_YET)


@attrs.frozen(kw_only=True)
class ContainerdRuntime:
    """``[worker.containerd.runtime]``"""

    name: str = ""
    path: str = ""
    options: dict[str, Any] = setting(factory=dict)


@attrs.frozen(kw_only=True)
class ContainerdConfig(_WorkerBase):
    """``[worker.containerd]``: known, not supported (pybk has no containerd worker)."""

    address: str = ""
    namespace: str = ""
    snapshotter: str = ""
    runtime: ContainerdRuntime = setting(factory=ContainerdRuntime)


@attrs.frozen(kw_only=True)
class WorkersConfig:
    """``[worker]``"""

    oci: OCIConfig = setting(factory=OCIConfig)
    containerd: ContainerdConfig = setting(
        factory=ContainerdConfig, unsupported="pybk has no containerd worker; ignored")


@attrs.frozen(kw_only=True)
class KeyPair:
    """``[[registry."host".keypair]]``: a client certificate."""

    key: str
    cert: str


@attrs.frozen(kw_only=True)
class RegistryConfig:
    """``[registry."host"]``: how to reach one registry."""

    mirrors: list[str] = setting(factory=list)
    http: bool | None = None
    insecure: bool | None = None
    ca: list[str] = setting(factory=list)
    keypair: list[KeyPair] = setting(factory=list)
    tlsconfigdir: list[str] = setting(factory=list)
    capabilities: list[str] = setting(factory=list, unsupported=_NOT_YET)


@attrs.frozen(kw_only=True)
class DockerfileFrontendConfig:
    """``[frontend."dockerfile.v0"]``"""

    enabled: bool | None = None


@attrs.frozen(kw_only=True)
class GatewayFrontendConfig:
    """``[frontend."gateway.v0"]``; ``allowedRepositories`` compares names without tags."""

    enabled: bool | None = None
    allowed_repositories: list[str] = setting("allowedRepositories", factory=list)


@attrs.frozen(kw_only=True)
class FrontendsConfig:
    """``[frontend]``"""

    dockerfile: DockerfileFrontendConfig = setting("dockerfile.v0",
                                                   factory=DockerfileFrontendConfig)
    gateway: GatewayFrontendConfig = setting("gateway.v0", factory=GatewayFrontendConfig)


@attrs.frozen(kw_only=True)
class SystemConfig:
    """``[system]``"""

    platforms_cache_max_age: Seconds | None = setting("platformsCacheMaxAge", default=None,
                                                      unsupported=_NOT_YET)
    max_registry_concurrency: int | None = setting("maxRegistryConcurrency", default=None,
                                                   check=_non_negative)


@attrs.frozen(kw_only=True)
class GHASignConfig:
    """``[cache.gha.sign]``"""

    command: list[str] = setting(factory=list)


@attrs.frozen(kw_only=True)
class GHAVerifyPolicy:
    """``[cache.gha.verify.policy]``: thresholds plus sigstore certificate fields to match."""

    timestamp_threshold: int = setting("timestampThreshold", default=0)
    tlog_threshold: int = setting("tlogThreshold", default=0)
    certificate_issuer: str = setting("certificateIssuer", default="")
    subject_alternative_name: str = setting("subjectAlternativeName", default="")
    issuer: str = ""
    github_workflow_trigger: str = setting("githubWorkflowTrigger", default="")
    github_workflow_sha: str = setting("githubWorkflowSHA", default="")
    github_workflow_name: str = setting("githubWorkflowName", default="")
    github_workflow_repository: str = setting("githubWorkflowRepository", default="")
    github_workflow_ref: str = setting("githubWorkflowRef", default="")
    build_signer_uri: str = setting("buildSignerURI", default="")
    build_signer_digest: str = setting("buildSignerDigest", default="")
    runner_environment: str = setting("runnerEnvironment", default="")
    source_repository_uri: str = setting("sourceRepositoryURI", default="")
    source_repository_digest: str = setting("sourceRepositoryDigest", default="")
    source_repository_ref: str = setting("sourceRepositoryRef", default="")
    source_repository_identifier: str = setting("sourceRepositoryIdentifier", default="")
    source_repository_owner_uri: str = setting("sourceRepositoryOwnerURI", default="")
    source_repository_owner_identifier: str = setting("sourceRepositoryOwnerIdentifier",
                                                      default="")
    build_config_uri: str = setting("buildConfigURI", default="")
    build_config_digest: str = setting("buildConfigDigest", default="")
    build_trigger: str = setting("buildTrigger", default="")
    run_invocation_uri: str = setting("runInvocationURI", default="")
    source_repository_visibility_at_signing: str = setting(
        "sourceRepositoryVisibilityAtSigning", default="")


@attrs.frozen(kw_only=True)
class GHAVerifyConfig:
    """``[cache.gha.verify]``"""

    required: bool = False
    policy: GHAVerifyPolicy = setting(factory=GHAVerifyPolicy)


@attrs.frozen(kw_only=True)
class GHACacheConfig:
    """``[cache.gha]``: signed GitHub Actions cache."""

    sign: GHASignConfig | None = None
    verify: GHAVerifyConfig = setting(factory=GHAVerifyConfig)


@attrs.frozen(kw_only=True)
class CacheConfig:
    """``[cache]``"""

    gha: GHACacheConfig = setting(factory=GHACacheConfig, unsupported=_NOT_YET)


@attrs.frozen(kw_only=True)
class Config:
    """The whole file (``buildkitd.toml`` schema)."""

    debug: bool = setting(default=False, deprecated='use [log] level = "debug"')
    trace: bool = setting(default=False, deprecated='use [log] level = "trace"')
    root: str = setting(factory=default_root)
    insecure_entitlements: list[str] = setting("insecure-entitlements", factory=list,
                                               check=each(check_entitlement))
    proxy_network: bool = setting("proxyNetwork", default=False, unsupported=_NOT_YET)
    provenance_env_dir: str = setting("provenanceEnvDir", default="", unsupported=_NOT_YET)
    log: LogConfig = setting(factory=LogConfig)
    grpc: GRPCConfig = setting(factory=GRPCConfig)
    otel: OTELConfig = setting(factory=OTELConfig, unsupported=_NOT_YET)
    cdi: CDIConfig = setting(factory=CDIConfig, unsupported=_NOT_YET)
    dns: DNSConfig = setting(factory=DNSConfig)
    history: HistoryConfig = setting(factory=HistoryConfig)
    worker: WorkersConfig = setting(factory=WorkersConfig)
    registry: dict[str, RegistryConfig] = setting(factory=dict, check=each_key(_check_host))
    frontend: FrontendsConfig = setting(factory=FrontendsConfig)
    system: SystemConfig = setting(factory=SystemConfig)
    cache: CacheConfig = setting(factory=CacheConfig)


# --------------------------------------------------------------------------------------------
# GC policies
# --------------------------------------------------------------------------------------------

#: BuildKit's automatic caps when nothing is configured (Unix)
_RESERVE_PERCENT, _RESERVE_MAX = 10, 10 * 1_000_000_000
_FREE_PERCENT = 20
_MAX_PERCENT, _MAX_MAX = 80, 100 * 1_000_000_000


@attrs.frozen(kw_only=True)
class PruneRule:
    """One resolved prune pass: sizes in bytes, durations in seconds."""

    all: bool = False
    filters: tuple[str, ...] = ()
    keep_duration: float = 0.0
    reserved_space: int = 0
    max_used_space: int = 0
    min_free_space: int = 0


def _worker_caps(worker: _WorkerBase, disk_total: int | None
                 ) -> tuple[DiskSpace, DiskSpace, DiskSpace]:
    """(reserved, maxUsed, minFree) of a worker, with BuildKit's fallbacks applied."""
    reserved, max_used, min_free = (worker.reserved_space, worker.max_used_space,
                                    worker.min_free_space)
    if reserved.is_unset and max_used.is_unset and min_free.is_unset:
        reserved = worker.gc_keep_storage
    if reserved.is_unset and max_used.is_unset and min_free.is_unset:
        reserved = DiskSpace(percentage=_RESERVE_PERCENT)
        if reserved.as_bytes(disk_total) > _RESERVE_MAX:
            reserved = DiskSpace(bytes=_RESERVE_MAX)
        max_used = DiskSpace(percentage=_MAX_PERCENT)
        if max_used.as_bytes(disk_total) > _MAX_MAX:
            max_used = DiskSpace(bytes=_MAX_MAX)
        min_free = DiskSpace(percentage=_FREE_PERCENT)
    return reserved, max_used, min_free


def default_gc_policies(worker: _WorkerBase, disk_total: int | None) -> list[GCPolicy]:
    """BuildKit's four default policies for a worker without ``gcpolicy`` entries.

    Caps come from the worker's reservedSpace/maxUsedSpace/minFreeSpace, else gckeepstorage
    (as reservedSpace), else the automatic ones: reserved = min(10 %, 10 GB), minFree = 20 %,
    maxUsed = min(80 %, 100 GB).
    """
    reserved, max_used, min_free = _worker_caps(worker, disk_total)
    caps = {"reserved_space": reserved, "max_used_space": max_used, "min_free_space": min_free}
    return [
        GCPolicy(filters=["type==source.local", "type==exec.cachemount",
                          "type==source.git.checkout"],
                 keep_duration=Seconds(48 * 3600),
                 max_used_space=DiskSpace(bytes=512 * 1_000_000)),
        GCPolicy(keep_duration=Seconds(60 * 24 * 3600), **caps),
        GCPolicy(**caps),
        GCPolicy(all=True, **caps),
    ]


def gc_prune_rules(worker: _WorkerBase, disk_total: int | None) -> list[PruneRule]:
    """What the garbage collector runs for ``worker``, in order ([] when ``gc = false``).

    ``disk_total`` is the size in bytes of the disk holding the store (percentages use it).
    """
    if not worker.gc_enabled:
        return []
    policies = worker.gc_policy or default_gc_policies(worker, disk_total)
    rules = []
    for policy in policies:
        reserved = policy.reserved_space
        if reserved.is_unset and not policy.keep_bytes.is_unset:
            reserved = policy.keep_bytes
        rules.append(PruneRule(
            all=policy.all,
            filters=tuple(policy.filters),
            keep_duration=float(policy.keep_duration),
            reserved_space=reserved.as_bytes(disk_total),
            max_used_space=policy.max_used_space.as_bytes(disk_total),
            min_free_space=policy.min_free_space.as_bytes(disk_total),
        ))
    return rules


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> tuple[str, Any]:
    """('class'|'list'|'dict'|'other', attrs class) for a field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    if isinstance(tp, type) and attrs.has(tp) and tp is not DiskSpace:
        return "class", tp
    args = typing.get_args(tp)
    if origin is list and args and isinstance(args[0], type) and attrs.has(args[0]):
        return "list", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and attrs.has(args[1]):
        return "dict", args[1]
    return "other", None


def _fix_key_case(raw: Mapping[str, Any], cl: type, path: KeyPath,
                  warnings: list[Problem]) -> dict[str, Any]:
    """Keys differing only in case from a known key are renamed (BuildKit's TOML decoder
    accepts them), with a warning; nested tables are fixed too."""
    attrs.resolve_types(cl)
    fields = {external_key(a): a for a in attrs.fields(cl)}
    lowered = {k.lower(): k for k in fields}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        known = key
        if (key not in fields and key.lower() in lowered
                and lowered[key.lower()] not in raw and lowered[key.lower()] not in out):
            known = lowered[key.lower()]
            warnings.append(Problem((*path, key), f'matched "{known}" ignoring case; '
                                                  f'write "{known}"'))
        a = fields.get(known)
        if a is not None:
            kind, sub = _unwrap(a.type)
            if kind == "class" and isinstance(value, Mapping):
                value = _fix_key_case(value, sub, (*path, known), warnings)
            elif kind == "list" and isinstance(value, list):
                value = [_fix_key_case(v, sub, (*path, known, i), warnings)
                         if isinstance(v, Mapping) else v for i, v in enumerate(value)]
            elif kind == "dict" and isinstance(value, Mapping):
                value = {k: _fix_key_case(v, sub, (*path, known, k), warnings)
                         if isinstance(v, Mapping) else v for k, v in value.items()}
        out[known] = value
    return out


def _default_of(a: attrs.Attribute) -> Any:
    if isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
        return a.default.factory()
    return a.default


def _non_default_leaves(value: Any, default: Any, path: KeyPath) -> Iterable[KeyPath]:
    if value == default:
        return
    if attrs.has(type(value)) and type(value) is type(default) and type(value) is not DiskSpace:
        for a in attrs.fields(type(value)):
            yield from _non_default_leaves(getattr(value, a.name), getattr(default, a.name),
                                           (*path, external_key(a)))
        return
    yield path


def _flag_keys(obj: Any, path: KeyPath, warnings: list[Problem]) -> None:
    """Warnings for deprecated keys and for unsupported keys set to a non-default value."""
    if getattr(obj, "enabled", None) is False:
        return
    for a in attrs.fields(type(obj)):
        value = getattr(obj, a.name)
        here = (*path, external_key(a))
        unsupported, deprecated = field_meta(a, "unsupported"), field_meta(a, "deprecated")
        if deprecated and value != _default_of(a):
            note = ""
            if isinstance(value, DiskSpace) and 0 < value.bytes < 1_000_000:
                note = " (a plain number is bytes; older BuildKit read gckeepstorage as MB)"
            warnings.append(Problem(here, f"deprecated, {deprecated}{note}"))
        if unsupported:
            if getattr(value, "enabled", None) is False:
                continue
            leaves = list(_non_default_leaves(value, _default_of(a), here))
            if attrs.has(type(value)) and leaves:
                names = ", ".join(render_path(leaf[len(here):]) for leaf in leaves)
                warnings.append(Problem(here, f"{unsupported} (set: {names})"))
            else:
                warnings.extend(Problem(leaf, unsupported) for leaf in leaves)
            continue
        kind, _ = _unwrap(a.type)
        if kind == "class" and value is not None:
            _flag_keys(value, here, warnings)
        elif kind == "list":
            for i, item in enumerate(value):
                _flag_keys(item, (*here, i), warnings)
        elif kind == "dict":
            for k, item in value.items():
                _flag_keys(item, (*here, k), warnings)


def _review_worker(worker: _WorkerBase, path: KeyPath, warnings: list[Problem]) -> _WorkerBase:
    changes: dict[str, Any] = {}
    if isinstance(worker, OCIConfig) and worker.snapshotter not in SUPPORTED_SNAPSHOTTERS:
        warnings.append(Problem((*path, "snapshotter"),
                                f'"{worker.snapshotter}" is not supported by pybk yet; '
                                'using "auto"'))
        changes["snapshotter"] = "auto"
    for i, policy in enumerate(worker.gc_policy):
        for j, text in enumerate(policy.filters):
            for sel in parse_filter(text):
                where = (*path, "gcpolicy", i, "filters", j)
                name = sel.fieldpath[0]
                if name not in FILTER_FIELDS:
                    warnings.append(Problem(where, f'filter field "{name}" never matches a '
                                                   f"cache record"
                                                   f"{suggest(name, FILTER_FIELDS)}"))
                elif (name == "type" and sel.operator in ("==", "!=")
                      and sel.value not in RECORD_TYPES):
                    warnings.append(Problem(where, f'"{sel.value}" is not a cache record type'
                                                   f"{suggest(sel.value, RECORD_TYPES)}"))
    return attrs.evolve(worker, **changes) if changes else worker


def _review(config: Config, warnings: list[Problem]) -> Config:
    """Semantic warnings and the normalisations pybk applies."""
    _flag_keys(config, (), warnings)
    changes: dict[str, Any] = {}
    if config.log.level is None:
        level = "trace" if config.trace else "debug" if config.debug else "info"
        changes["log"] = attrs.evolve(config.log, level=level)
    else:
        changes["log"] = attrs.evolve(config.log, level=config.log.level.lower())
    for i, ent in enumerate(config.insecure_entitlements):
        if ent.partition("=")[0] == "device":
            warnings.append(Problem(("insecure-entitlements", i),
                                    "the device entitlement needs CDI, which pybk does not "
                                    "support yet; ignored"))
    for i, address in enumerate(config.grpc.address):
        scheme = address.partition("://")[0]
        if scheme not in ("unix", "tcp"):
            warnings.append(Problem(("grpc", "address", i),
                                    f'"{scheme}" listeners are not supported by pybk yet; '
                                    "ignored"))
    oci = _review_worker(config.worker.oci, ("worker", "oci"), warnings)
    if oci is not config.worker.oci:
        changes["worker"] = attrs.evolve(config.worker, oci=oci)
    return attrs.evolve(config, **changes)


_TOML_ERROR_AT = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.S)
_TOML_ERROR_END = re.compile(r"^(.*) \(at end of document\)$", re.S)


def _toml_syntax_error(exc: Exception, text: str, filename: str) -> str:
    message = str(exc)
    m = _TOML_ERROR_AT.match(message)
    if m:
        line, column = int(m.group(2)), int(m.group(3))
        lines = text.splitlines()
        shown = ""
        if 0 < line <= len(lines):
            source = lines[line - 1].expandtabs(1)
            shown = f"\n    {source}\n    {' ' * max(column - 1, 0)}^"
        return f"{filename}:{line}:{column}: invalid TOML: {m.group(1)}{shown}"
    m = _TOML_ERROR_END.match(message)
    if m:
        return f"{filename}:{len(text.splitlines()) or 1}: invalid TOML: {m.group(1)} " \
               "(at end of file)"
    return f"{filename}: invalid TOML: {message}"


def _explain(problem: Problem) -> Problem:
    """Extra hints for mistakes BuildKit's own docs lead to."""
    if problem.path == ("ghacache",):
        return Problem(problem.path, "unknown key; the signed GitHub Actions cache is "
                                     "configured under [cache.gha] (sign.command, verify)")
    return problem


def load_config_text(text: str, filename: str = "<config>") -> tuple[Config, list[str]]:
    """Parse a buildkitd.toml document; return the config and warning messages.

    Raises ConfigError listing every problem, each as ``file:line: key.path: message``.
    """
    import tomllib

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_syntax_error(exc, text, filename)], path=filename) from None
    lines = _KeyLines(text)
    warnings: list[Problem] = []
    raw = _fix_key_case(raw, Config, (), warnings)
    from cattrs.errors import BaseValidationError

    try:
        config = get_converter().structure(raw, Config)
    except BaseValidationError as exc:
        problems = [_explain(p) for p in problems_from_exception(exc)]
        problems.sort(key=lambda p: lines.line_of(p.path) or 0)
        raise ConfigError([lines.render(p, filename) for p in problems],
                          path=filename) from None
    config = _review(config, warnings)
    located = sorted(warnings, key=lambda w: lines.line_of(w.path) or 0)
    return config, [lines.render(w, filename) for w in located]


def load_config(path: str | Path | None) -> tuple[Config, list[str]]:
    """Load the file at ``path`` (``None``: all defaults); return (config, warnings).

    Raises ConfigError with every problem at once.
    """
    if path is None:
        return _review(Config(), []), []
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"], path=name) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 text (byte {exc.start})"], path=name) from None
    return load_config_text(text, name)


# --------------------------------------------------------------------------------------------
# Locating keys in the source (best effort, for messages)
# --------------------------------------------------------------------------------------------

_KEY_PART = re.compile(r'\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|\'([^\']*)\')\s*')


def _split_key(text: str) -> tuple[tuple[str, ...], int] | None:
    """(dotted key parts, end offset) at the start of ``text``, or None."""
    parts, pos = [], 0
    while True:
        m = _KEY_PART.match(text, pos)
        if m is None or m.end() == pos:
            return None
        part = m.group(1) if m.group(1) is not None else (
            m.group(2) if m.group(2) is not None else m.group(3))
        parts.append(part.replace('\\"', '"') if m.group(2) is not None else part)
        pos = m.end()
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


class _ValueScan:
    """Follows one TOML value across lines, noting the line of each element of an array."""

    def __init__(self, marks: dict[KeyPath, int], path: KeyPath):
        self.marks, self.path = marks, path
        self.depth, self.open_string = 0, None
        self.is_array, self.index, self.expecting = False, 0, False

    @property
    def done(self) -> bool:
        return self.depth <= 0 and self.open_string is None

    def _element(self, lineno: int) -> None:
        if self.is_array and self.depth == 1 and self.expecting:
            self.marks.setdefault((*self.path, self.index), lineno)
            self.expecting = False

    def feed(self, line: str, lineno: int) -> None:
        i, n = 0, len(line)
        while i < n:
            if self.open_string:
                end = line.find(self.open_string, i)
                if end < 0:
                    return
                i, self.open_string = end + 3, None
                continue
            c = line[i]
            if c == "#":
                return
            if c in "\"'":
                self._element(lineno)
                if line.startswith(c * 3, i):
                    self.open_string, i = c * 3, i + 3
                    continue
                end = i + 1
                while end < n and line[end] != c:
                    end += 2 if (c == '"' and line[end] == "\\") else 1
                i = end + 1
                continue
            if c in "[{":
                if self.depth == 0 and c == "[":
                    self.is_array, self.expecting = True, True
                else:
                    self._element(lineno)
                self.depth += 1
            elif c in "]}":
                self.depth -= 1
            elif c == "," and self.depth == 1:
                self.index, self.expecting = self.index + 1, True
            elif not c.isspace():
                self._element(lineno)
            i += 1


class _KeyLines:
    """Line numbers of the tables, keys and array elements of a TOML document."""

    def __init__(self, text: str):
        self.lines: dict[KeyPath, int] = {}
        table: KeyPath = ()
        arrays: dict[KeyPath, int] = {}
        scan: _ValueScan | None = None
        for lineno, line in enumerate(text.splitlines(), 1):
            if scan is not None:
                scan.feed(line, lineno)
                scan = None if scan.done else scan
                continue
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("[["):
                parsed = _split_key(stripped[2:])
                if parsed:
                    index = arrays.get(parsed[0], -1) + 1
                    arrays[parsed[0]] = index
                    table = (*parsed[0], index)
                    self._mark(table, lineno)
                continue
            if stripped.startswith("["):
                parsed = _split_key(stripped[1:])
                if parsed:
                    table = self._resolve(parsed[0], arrays)
                    self._mark(table, lineno)
                continue
            parsed = _split_key(stripped)
            if parsed and stripped[parsed[1]:parsed[1] + 1] == "=":
                path = (*table, *parsed[0])
                self._mark(path, lineno)
                scan = _ValueScan(self.lines, path)
                scan.feed(stripped[parsed[1] + 1:], lineno)
                scan = None if scan.done else scan

    @staticmethod
    def _resolve(keys: tuple[str, ...], arrays: Mapping[KeyPath, int]) -> KeyPath:
        """A ``[a.b.c]`` header inside the current ``[[a.b]]`` entry gets its index."""
        for cut in range(len(keys), 0, -1):
            if keys[:cut] in arrays:
                return (*keys[:cut], arrays[keys[:cut]], *keys[cut:])
        return keys

    def _mark(self, path: KeyPath, lineno: int) -> None:
        for cut in range(1, len(path) + 1):
            self.lines.setdefault(path[:cut], lineno)
        self.lines[path] = lineno

    def line_of(self, path: KeyPath) -> int | None:
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def render(self, problem: Problem, filename: str) -> str:
        line = self.line_of(problem.path)
        where = f"{filename}:{line}: " if line is not None else f"{filename}: "
        return where + problem.render()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def config_to_json(config: Config) -> dict[str, Any]:
    """The config as plain data with BuildKit's key spellings (sizes: bytes or ``"N%"``,
    durations: Go duration strings)."""
    return get_converter().unstructure(config)


def debug_config_command(path: str | Path, *, stderr: TextIO | None = None) -> tuple[str, int]:
    """``pybk debug config FILE``: (text, exit code).

    On success the text is the normalised config as JSON (exit 0) and each warning is written to
    ``stderr`` as ``warning: …``. On failure the text is the error report (exit 2).
    """
    import orjson

    try:
        config, warnings = load_config(path)
    except ConfigError as exc:
        return exc.render(), exc.exit_code
    out = stderr if stderr is not None else sys.stderr
    for warning in warnings:
        out.write(f"warning: {warning}\n")
    text = orjson.dumps(config_to_json(config), option=orjson.OPT_INDENT_2).decode()
    return text, 0
