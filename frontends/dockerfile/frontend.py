"""The ``dockerfile.v0`` frontend: BuildKit's frontend options in, LLB and image config out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pybk.core.interfaces import Frontend, FrontendBridge, FrontendRequest, FrontendResult

#: ``requestid`` values answered with text instead of a build (``--call``, ``--check``)
SUBREQUESTS = ("frontend.outline", "frontend.targets", "frontend.lint")


def text_result(text: str, status: int = 0,
                extra: Mapping[str, bytes] | None = None) -> FrontendResult:
    """A subrequest's answer: ``result.txt`` to print and ``result.statuscode`` to exit with
    (and ``extra`` metadata, such as ``result.json``)."""
    from pybk.core.llb import Definition

    return FrontendResult(definition=Definition(), metadata={
        "result.txt": text.encode(), "result.statuscode": str(status).encode(),
        **(extra or {})})


def _subrequest(requestid: str, data: bytes, filename: str, target: str | None,
                args: dict[str, str]) -> FrontendResult:
    """``frontend.outline`` / ``frontend.targets``: ``result.txt`` (what pybk prints) and
    ``result.json`` (BuildKit's answer, printed for ``--call …,format=json``)."""
    from pybk.frontends.dockerfile import subrequests
    from pybk.frontends.dockerfile.instructions import parse_dockerfile

    if requestid == "frontend.outline":
        answer = subrequests.outline_of(data, filename=filename, target=target, build_args=args)
        dockerfile = parse_dockerfile(data, filename)
        stage = dockerfile.stage(target) if target else dockerfile.stages[-1]
        text = subrequests.outline_text(answer, stage.name or f"stage-{stage.index}")
    else:
        answer = subrequests.targets_of(data, filename=filename)
        text = subrequests.targets_text(answer)
    return text_result(text, extra={"result.json": subrequests.go_json(answer).encode(),
                                    "version": b"1.0.0"})


def build_args(opts: Mapping[str, str]) -> dict[str, str]:
    return {k[len("build-arg:"):]: v for k, v in opts.items() if k.startswith("build-arg:")}


def labels(opts: Mapping[str, str]) -> dict[str, str]:
    return {k[len("label:"):]: v for k, v in opts.items() if k.startswith("label:")}


def _read_ignore(bridge: FrontendBridge, input_name: str, path: str) -> list[str] | None:
    from pybk.frontends.dockerfile.dockerignore import read_patterns

    try:
        return read_patterns(bridge.read_file(input_name, path), path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def ignore_patterns(bridge: FrontendBridge, filename: str, context: str = "context") -> list[str]:
    """``<filename>.dockerignore`` from the dockerfile input, else the context's
    ``.dockerignore`` (empty when neither exists)."""
    if context == "context":
        specific = _read_ignore(bridge, "dockerfile", filename + ".dockerignore")
        if specific is not None:
            return specific
    return _read_ignore(bridge, context, ".dockerignore") or []


def named_contexts(opts: Mapping[str, str], bridge: FrontendBridge,
                   platform: str | None = None) -> dict[str, Any]:
    """``context:NAME=VALUE`` options as named contexts (a State plus an image config)."""
    from pybk.core import llb
    from pybk.core.errors import UsageError
    from pybk.frontends.dockerfile.convert_copy import git_query_flag, parse_git_ref
    from pybk.frontends.dockerfile.stages import NamedContext

    contexts: dict[str, Any] = {}
    for key, value in opts.items():
        if not key.startswith("context:"):
            continue
        name = key[len("context:"):].split("::", 1)[0].removesuffix(":latest")
        if value.startswith("local:"):
            local = value[len("local:"):]
            excludes = ignore_patterns(bridge, "", local)
            contexts[name] = NamedContext(llb.local(local, exclude_patterns=excludes or None))
        elif value.startswith("oci-layout://"):
            store_id, _, digest = value[len("oci-layout://"):].partition("@")
            if not digest:
                raise UsageError(f"context {name}: oci-layout needs a digest", flag="--build-context")
            _, config = bridge.resolve_image_config(value, platform)
            contexts[name] = NamedContext(llb.oci_layout(f"{name}@{digest}", store_id=store_id),
                                          config)
        elif value.startswith("docker-image://"):
            ref = value[len("docker-image://"):]
            if ref == "scratch":
                contexts[name] = NamedContext(llb.scratch())
            else:
                _, config = bridge.resolve_image_config(ref, platform)
                contexts[name] = NamedContext(
                    llb.image(ref, resolve_mode=image_resolve_mode(opts)), config)
        elif value.startswith("target:"):
            contexts[name] = NamedContext(stage=value[len("target:"):])
        elif (git := parse_git_ref(value)) is not None:
            remote, ref, subdir, query = git
            keep = build_args(opts).get("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "") in ("1", "true")
            try:
                keep = keep or bool(git_query_flag(query, "keep-git-dir"))
                skip = git_query_flag(query, "submodules") is False
            except ValueError as exc:
                raise UsageError(f"context {name}: {exc}", flag="--build-context") from None
            contexts[name] = NamedContext(llb.git(remote, ref, keep_git_dir=keep, subdir=subdir,
                                                  skip_submodules=skip))
        elif value.startswith(("http://", "https://")):
            contexts[name] = NamedContext(llb.http(value))
        else:
            raise UsageError(f"context {name}: unsupported value {value!r}",
                             flag="--build-context")
    return contexts


def platforms(opts: Mapping[str, str]) -> list[str]:
    """The ``platform`` opt as a list (empty: the host platform)."""
    return [p.strip() for p in (opts.get("platform") or "").split(",") if p.strip()]


def multi_platform_result(targets: list[str],
                          convert_one: Any) -> FrontendResult:
    """A result for several target platforms: ``convert_one(platform)`` gives each platform's
    ``(definition, image_config)``; the first is the result's own definition and config, and
    the metadata holds every platform's (BuildKit's keys: ``refs.platforms``,
    ``containerimage.config/<platform>``, plus ``definition/<platform>``)."""
    import json

    metadata: dict[str, bytes] = {"refs.platforms": json.dumps(targets).encode()}
    first: tuple[Any, Any] | None = None
    for platform in targets:
        definition, config = convert_one(platform)
        first = first or (definition, config)
        metadata[f"definition/{platform}"] = definition.to_bytes()
        metadata[f"containerimage.config/{platform}"] = json.dumps(config or {}).encode()
    assert first is not None
    return FrontendResult(definition=first[0], image_config=first[1], metadata=metadata)


#: ``image-resolve-mode`` values (BuildKit's): ``default`` (the local image store first, then
#: the registry), ``pull`` (the registry, always: ``--pull``), ``local`` (the local image store
#: first, then the registry)
RESOLVE_MODES = ("default", "pull", "local")


def image_resolve_mode(opts: Mapping[str, str]) -> str | None:
    """The ``image-resolve-mode`` opt (``pybk build --pull`` sets ``pull``); None: default."""
    mode = opts.get("image-resolve-mode", "").strip()
    if mode in ("", "default"):
        return None
    if mode not in RESOLVE_MODES:
        from pybk.core.errors import UsageError

        raise UsageError(f'invalid image-resolve-mode "{mode}" (one of '
                         f"{', '.join(RESOLVE_MODES)})", flag="--opt")
    return mode


def build_platform(bridge: FrontendBridge) -> tuple[str | None, str | None]:
    """``(build platform, default target platform)``: the worker's first platform, as
    BuildKit's frontend takes it; both None when that is the host's own (the converter's
    defaults, which also let a base image of another runnable platform set its stage's)."""
    from pybk.core.platform import host_platform, parse_platform

    listed = getattr(bridge, "build_platforms", None)
    first = (listed() or [None])[0] if listed is not None else None
    if first is None or parse_platform(first) == host_platform():
        return None, None
    return str(parse_platform(first)), str(parse_platform(first))


def no_cache_stages(opts: Mapping[str, str]) -> list[str] | None:
    """``no-cache``: absent = use the cache; empty = every stage; ``a,b`` = those stages."""
    if "no-cache" not in opts:
        return None
    return [s.strip().lower() for s in opts["no-cache"].split(",") if s.strip()]


def extra_hosts(opts: Mapping[str, str]) -> dict[str, str]:
    hosts = {}
    for item in filter(None, opts.get("add-hosts", "").split(",")):
        host, _, ip = item.partition("=")
        hosts[host] = ip
    return hosts


#: ``ulimit`` names (docker/go-units ``ParseUlimit``)
ULIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def parse_ulimit(value: str) -> tuple[str, int, int]:
    """``name=soft[:hard]`` (docker/go-units ``ParseUlimit``; -1 is unlimited)."""
    from pybk.core.errors import InputError

    name, eq, limits = value.partition("=")
    if not eq:
        raise InputError(f'invalid ulimit "{value}": expected name=soft[:hard]')
    if name not in ULIMIT_NAMES:
        raise InputError(f'invalid ulimit "{value}": unknown name "{name}" (one of '
                         f"{', '.join(ULIMIT_NAMES)})")
    soft_text, _, hard_text = limits.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise InputError(f'invalid ulimit "{value}": limits must be integers') from None
    if soft > hard and hard != -1 or soft == -1 and hard != -1:
        raise InputError(f'invalid ulimit "{value}": the soft limit is above the hard limit')
    return name, soft, hard


def ulimits(opts: Mapping[str, str]) -> list[tuple[str, int, int]]:
    """The ``ulimit`` opt (``--ulimit``): comma-separated ``name=soft[:hard]``."""
    return [parse_ulimit(v.strip()) for v in opts.get("ulimit", "").split(",") if v.strip()]


#: the per-step resource opts (buildx ``--resource``) and their LinuxResources fields
RESOURCE_OPTS = {"memory": "memory", "memswap": "memory_swap", "cpushares": "cpu_shares",
                 "cpuperiod": "cpu_period", "cpuquota": "cpu_quota",
                 "cpusetcpus": "cpuset_cpus", "cpusetmems": "cpuset_mems"}


def linux_resources(opts: Mapping[str, str]) -> Any:
    """The ``memory``, ``memswap``, ``cpushares``, ``cpuperiod``, ``cpuquota``, ``cpusetcpus``
    and ``cpusetmems`` opts as an :class:`llb.LinuxResources` (None when none is set).
    Memory sizes are bytes or ``"512m"``-style sizes (``-1``: unlimited swap)."""
    from pybk.core import llb
    from pybk.core.errors import InputError
    from pybk.core.units import parse_size

    values: dict[str, Any] = {}
    for opt, field in RESOURCE_OPTS.items():
        text = opts.get(opt, "").strip()
        if not text:
            continue
        if field.startswith("cpuset"):
            values[field] = text
            continue
        try:
            values[field] = -1 if text == "-1" and field == "memory_swap" else (
                parse_size(text) if field.startswith("memory") else int(text))
        except ValueError:
            raise InputError(f'invalid {opt} "{text}": expected '
                             + ("a size like 512m" if field.startswith("memory")
                                else "an integer")) from None
        if values[field] < 0 and values[field] != -1:
            raise InputError(f'invalid {opt} "{text}": must not be negative')
    return llb.LinuxResources(**values) if values else None


def check_enabled(config: Any) -> None:
    """``[frontend."dockerfile.v0"] enabled = false``: the frontend is not available (as
    buildkitd does not register it): every build it would make is refused, ``# syntax=``
    included, before anything is read or pulled."""
    frontend = getattr(config, "frontend", None)
    if getattr(getattr(frontend, "dockerfile", None), "enabled", None) is False:
        from pybk.core.errors import UsageError

        raise UsageError('invalid frontend: dockerfile.v0 (disabled by the daemon '
                         'configuration: [frontend."dockerfile.v0"] enabled = false)')


class DockerfileFrontend(Frontend):
    """Dockerfile frontend: the full modern Dockerfile syntax."""

    name = "dockerfile.v0"
    #: the result depends only on the options, the files read and pinned image configs
    definition_cache = True

    @classmethod
    def forward(cls, directives: Mapping[str, str], opts: Mapping[str, str], registry: Any,
                config: Any) -> tuple[str, dict[str, str]] | None:
        """``# syntax=`` / ``BUILDKIT_SYNTAX``: a frontend plugin of that name, this frontend
        for ``docker/dockerfile:*``, else the image through ``gateway.v0``."""
        check_enabled(config)
        if not (opts.get("build-arg:BUILDKIT_SYNTAX") or directives.get("syntax")):
            return None  # nothing to follow: the gateway's code is not even loaded
        from pybk.frontends.gateway.frontend import resolve_syntax

        name, forwarded = resolve_syntax(cls.name, directives, opts, registry, config)
        return None if name == cls.name else (name, forwarded)

    def solve(self, request: FrontendRequest, bridge: FrontendBridge) -> FrontendResult:
        from pybk.frontends.dockerfile import convert

        check_enabled(bridge.config)
        opts = request.opts
        filename = opts.get("filename", "Dockerfile")
        data = bridge.read_file("dockerfile", filename)
        target = opts.get("target") or None
        args = build_args(opts)
        requestid = opts.get("requestid", "")
        if requestid == "frontend.lint":
            from pybk.frontends.dockerfile.checks import run_checks
            from pybk.frontends.dockerfile.cli_support import format_check_report

            report = run_checks(data, filename, args, target, ignore_patterns(bridge, filename))
            return text_result(*format_check_report(data, report))
        if requestid in SUBREQUESTS:
            return _subrequest(requestid, data, filename, target, args)
        targets = platforms(opts)
        excludes = ignore_patterns(bridge, filename)
        report = self._lint(data, filename, args, target, excludes, bridge)
        network = opts.get("force-network-mode") or None
        worker_platform, default_target = build_platform(bridge)

        def lint(finding: Any) -> None:
            """A finding only the conversion sees, under the file's check options."""
            from pybk.frontends.dockerfile.errors import DockerfileParseError
            from pybk.frontends.dockerfile.lintrules import RULES

            if not report.config.enabled(RULES[finding.rule]):
                return
            bridge.warn(f"{finding.rule}: {finding.message} ({finding.filename}:{finding.line})")
            if report.config.error:
                raise DockerfileParseError(
                    f"lint violation found for rules: {finding.rule}",
                    filename=finding.filename, line=finding.line)

        def convert_one(platform: str | None) -> tuple[Any, Any]:
            converted = convert.dockerfile_to_llb(
                data, filename=filename, target=target, build_args=args,
                named_contexts=named_contexts(opts, bridge, platform),
                image_resolver=lambda ref, p: bridge.resolve_image_config(ref, p)[1],
                target_platform=platform or default_target, build_platform=worker_platform,
                exclude_patterns=excludes,
                no_cache_stages=no_cache_stages(opts), extra_hosts=extra_hosts(opts),
                network_mode=network if network in ("none", "host") else None,
                ulimits=ulimits(opts), cgroup_parent=opts.get("cgroup-parent", ""),
                linux_resources=linux_resources(opts),
                image_resolve_mode=image_resolve_mode(opts),
                labels=labels(opts), warn=bridge.warn, lint=lint)
            return converted.state.marshal(platform or default_target), converted.image_config

        if len(targets) > 1:
            return multi_platform_result(targets, convert_one)
        definition, config = convert_one(targets[0] if targets else None)
        return FrontendResult(definition=definition, image_config=config)

    @staticmethod
    def _lint(data: bytes, filename: str, args: Mapping[str, str], target: str | None,
              excludes: list[str], bridge: FrontendBridge) -> Any:
        """The build checks, as warnings (an error when ``# check=error=true``); the report,
        whose options also govern the findings of the conversion."""
        from pybk.frontends.dockerfile.checks import run_checks
        from pybk.frontends.dockerfile.errors import DockerfileParseError

        report = run_checks(data, filename, args, target, excludes)
        for finding in report.warnings:
            bridge.warn(f"{finding.rule}: {finding.message} ({finding.filename}:{finding.line})")
        if report.error:
            first = report.warnings[0]
            raise DockerfileParseError(report.error_message, filename=first.filename,
                                       line=first.line)
        return report
