"""pybk's daemon configuration: exactly BuildKit's ``buildkitd.toml`` schema, plus pybk's own
``[pybk]`` table.

A buildkitd.toml that BuildKit accepts loads here too. Keys are BuildKit's spellings (camelCase,
kebab-case and all); the Python fields are snake_case. Each field carries its checks, and keys
pybk knows but does not act on yet are marked as such. pybk's own settings, which BuildKit does
not have, live in ``[pybk]`` (:class:`PybkConfig`) and nowhere else.

Loading and validating a file is :mod:`pybk.core.config.loader`; what the garbage collector runs
is :mod:`pybk.core.config.gc`; the GC filter syntax is :mod:`pybk.core.config.filters`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pybk.core.config.filters import check_filter
from pybk.core.converter import each, each_key, setting, suggest
from pybk.core.errors import UsageError
from pybk.core.model import Model
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
    "ENTITLEMENTS",
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
    "NETWORK_MODES",
    "OCIConfig",
    "OTELConfig",
    "PybkConfig",
    "RegistryConfig",
    "SUPPORTED_SNAPSHOTTERS",
    "SystemConfig",
    "TLSConfig",
    "WorkerBase",
    "WorkersConfig",
    "check_cgroup_parent",
    "check_entitlement",
    "check_entitlements",
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
# Schema
# --------------------------------------------------------------------------------------------

_NOT_YET = "not supported by pybk yet; ignored"


class LogConfig(Model, kw_only=True):
    """``[log]``; after loading, ``level`` is always set (``None`` only on a hand-made
    instance, meaning ``info``)."""

    format: str = setting(default="text", check=_one_of("text", "json"))
    level: str | None = setting(default=None, check=_one_of(
        "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace",
        ignore_case=True))


class TLSConfig(Model, kw_only=True):
    """``[grpc.tls]``"""

    cert: str = ""
    key: str = ""
    ca: str = ""


class GRPCConfig(Model, kw_only=True):
    """``[grpc]``: the daemon's API listeners."""

    address: list[str] = setting(factory=list, check=each(_check_address))
    debug_address: str = setting("debugAddress", default="")
    uid: int | None = setting(default=None, check=_non_negative)
    gid: int | None = setting(default=None, check=_non_negative)
    security_descriptor: str = setting("securityDescriptor", default="",
                                       unsupported="Windows named pipes only; ignored")
    tls: TLSConfig = setting(factory=TLSConfig)


class OTELConfig(Model, kw_only=True):
    """``[otel]``"""

    socket_path: str = setting("socketPath", default="")


class CDIConfig(Model, kw_only=True):
    """``[cdi]``: Container Device Interface."""

    disabled: bool | None = None
    spec_dirs: list[str] = setting("specDirs", factory=list)
    auto_allowed: list[str] = setting("autoAllowed", factory=list)


class DNSConfig(Model, kw_only=True):
    """``[dns]``: resolv.conf of build containers (empty: the host's)."""

    nameservers: list[str] = setting(factory=list, check=each(_check_ip))
    options: list[str] = setting(factory=list)
    search_domains: list[str] = setting("searchDomains", factory=list)


class HistoryConfig(Model, kw_only=True):
    """``[history]``: build history retention."""

    max_age: Seconds = setting("maxAge", default=Seconds(48 * 3600))
    max_entries: int = setting("maxEntries", default=50, check=_non_negative)


class GCPolicy(Model, kw_only=True):
    """One ``[[worker.X.gcpolicy]]`` entry (one prune pass)."""

    all: bool = False
    filters: list[str] = setting(factory=list, check=each(check_filter))
    keep_duration: Seconds = setting("keepDuration", default=Seconds(0))
    keep_bytes: DiskSpace = setting("keepBytes", factory=DiskSpace,
                                    deprecated="use reservedSpace")
    reserved_space: DiskSpace = setting("reservedSpace", factory=DiskSpace)
    max_used_space: DiskSpace = setting("maxUsedSpace", factory=DiskSpace)
    min_free_space: DiskSpace = setting("minFreeSpace", factory=DiskSpace)


OCI_SNAPSHOTTERS = ("auto", "overlayfs", "native", "fuse-overlayfs", "stargz")
SUPPORTED_SNAPSHOTTERS = ("auto", "overlayfs", "fuse-overlayfs", "native")
NETWORK_MODES = ("auto", "host", "cni", "bridge", "none", "slirp4netns")


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


def check_cgroup_parent(value: str) -> None:
    """A cgroupfs path; systemd's ``slice:prefix:name`` needs runc's systemd driver."""
    if ":" in value:
        raise ValueError(f'"{value}": systemd cgroup paths (slice:prefix:name) are not '
                         'supported; give a cgroupfs path such as "/ci/builds"')
    if ".." in value.split("/"):
        raise ValueError(f'"{value}": ".." is not allowed in a cgroup path')


class WorkerBase(Model, kw_only=True):
    """Keys shared by ``[worker.oci]`` and ``[worker.containerd]``."""

    enabled: bool | None = None
    labels: dict[str, str] = setting(factory=dict)
    platforms: list[str] = setting(factory=list, check=each(_check_platform))
    #: run steps rootless (runtime ``--rootless true``, no cgroups: docs/rootless.md); a
    #: process in a user namespace always does
    rootless: bool = setting(default=False)
    apparmor_profile: str = setting("apparmor-profile", default="", unsupported=_NOT_YET)
    selinux: bool = setting(default=False, unsupported=_NOT_YET)
    max_parallelism: int = setting("max-parallelism", default=0, check=_non_negative)
    default_cgroup_parent: str = setting("defaultCgroupParent", default="",
                                         check=check_cgroup_parent)
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


class OCIConfig(WorkerBase, kw_only=True):
    """``[worker.oci]``: the runc (or crun, ``binary``) worker."""

    snapshotter: str = setting(default="auto", check=_one_of(*OCI_SNAPSHOTTERS))
    binary: str = ""
    #: RUN steps share the engine's PID namespace and see the host's /proc
    no_process_sandbox: bool = setting("noProcessSandbox", default=False)
    proxy_snapshotter_path: str = setting("proxySnapshotterPath", default="",
                                          unsupported=_NOT_YET)
    isolate_cgroups: bool = setting("isolateCgroups", default=False, unsupported=_NOT_YET)
    stargz_snapshotter: dict[str, Any] = setting("stargzSnapshotter", factory=dict,
                                                 unsupported=_NOT_YET)
    user_remap_unsupported: str = setting("userRemapUnsupported", default="",
                                          unsupported=_NOT_YET)


class ContainerdRuntime(Model, kw_only=True):
    """``[worker.containerd.runtime]``"""

    name: str = ""
    path: str = ""
    options: dict[str, Any] = setting(factory=dict)


class ContainerdConfig(WorkerBase, kw_only=True):
    """``[worker.containerd]``: known, not supported (pybk has no containerd worker)."""

    address: str = ""
    namespace: str = ""
    snapshotter: str = ""
    runtime: ContainerdRuntime = setting(factory=ContainerdRuntime)


class WorkersConfig(Model, kw_only=True):
    """``[worker]``"""

    oci: OCIConfig = setting(factory=OCIConfig)
    containerd: ContainerdConfig = setting(
        factory=ContainerdConfig, unsupported="pybk has no containerd worker; ignored")


class KeyPair(Model, kw_only=True):
    """``[[registry."host".keypair]]``: a client certificate."""

    key: str
    cert: str


class RegistryConfig(Model, kw_only=True):
    """``[registry."host"]``: how to reach one registry."""

    mirrors: list[str] = setting(factory=list)
    http: bool | None = None
    insecure: bool | None = None
    ca: list[str] = setting(factory=list)
    keypair: list[KeyPair] = setting(factory=list)
    tlsconfigdir: list[str] = setting(factory=list)
    capabilities: list[str] = setting(factory=list, unsupported=_NOT_YET)


class DockerfileFrontendConfig(Model, kw_only=True):
    """``[frontend."dockerfile.v0"]``"""

    enabled: bool | None = None


class GatewayFrontendConfig(Model, kw_only=True):
    """``[frontend."gateway.v0"]``; ``allowedRepositories`` compares names without tags."""

    enabled: bool | None = None
    allowed_repositories: list[str] = setting("allowedRepositories", factory=list)


class FrontendsConfig(Model, kw_only=True):
    """``[frontend]``"""

    dockerfile: DockerfileFrontendConfig = setting("dockerfile.v0",
                                                   factory=DockerfileFrontendConfig)
    gateway: GatewayFrontendConfig = setting("gateway.v0", factory=GatewayFrontendConfig)


class SystemConfig(Model, kw_only=True):
    """``[system]``"""

    platforms_cache_max_age: Seconds | None = setting("platformsCacheMaxAge", default=None,
                                                      unsupported=_NOT_YET)
    max_registry_concurrency: int | None = setting(
        "maxRegistryConcurrency", default=None, check=_non_negative,
        unsupported="not supported by pybk yet; ignored (an image's layers are fetched four "
                    "at a time)")


class GHASignConfig(Model, kw_only=True):
    """``[cache.gha.sign]``"""

    command: list[str] = setting(factory=list)


class GHAVerifyPolicy(Model, kw_only=True):
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


class GHAVerifyConfig(Model, kw_only=True):
    """``[cache.gha.verify]``"""

    required: bool = False
    policy: GHAVerifyPolicy = setting(factory=GHAVerifyPolicy)


class GHACacheConfig(Model, kw_only=True):
    """``[cache.gha]``: signed GitHub Actions cache."""

    sign: GHASignConfig | None = None
    verify: GHAVerifyConfig = setting(factory=GHAVerifyConfig)


class CacheConfig(Model, kw_only=True):
    """``[cache]``"""

    gha: GHACacheConfig = setting(factory=GHACacheConfig, unsupported=_NOT_YET)


DAEMON_MODES = ("off", "auto")


class PybkConfig(Model, kw_only=True):
    """``[pybk]``: pybk's own settings (not in BuildKit's schema).

    ``daemon``: ``"auto"`` makes ``pybk`` start a ``pybkd`` for the store when none runs
    (``"off"``: never). ``daemon-idle-timeout``: how long such a daemon waits without a command
    before it stops (0: never). ``tcp-without-tls``: let pybkd serve a ``tcp://`` address
    without ``[grpc.tls]`` (refused otherwise)."""

    daemon: str = setting(default="off", check=_one_of(*DAEMON_MODES))
    daemon_idle_timeout: Seconds = setting("daemon-idle-timeout", default=Seconds(600))
    #: serve ``tcp://`` addresses without TLS (refused otherwise: anyone who reaches the port
    #: could run builds)
    tcp_without_tls: bool = setting("tcp-without-tls", default=False)
    #: memory (swap included) each RUN container may use: bytes, ``"2GiB"``, or a percentage
    #: of the host's RAM (``"75%"``, the default); 0 for no limit. Past it the kernel kills
    #: the step's largest process and the step fails with "the step ran out of memory".
    step_memory: DiskSpace = setting("step-memory",
                                     factory=lambda: DiskSpace(percentage=75))
    #: processes and threads each RUN container may have (0: no limit): a fork bomb stops
    #: there, and the step fails naming the limit
    step_pids: int = setting("step-pids", default=4096, check=_non_negative)


class Config(Model, kw_only=True):
    """The whole file (``buildkitd.toml`` schema, and pybk's ``[pybk]``)."""

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
    pybk: PybkConfig = setting(factory=PybkConfig)
