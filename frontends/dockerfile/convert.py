"""Dockerfile → LLB conversion: the entry points (:func:`dockerfile_to_llb`,
:func:`convert_dockerfile`, ``--call outline``/``targets``) and the table of instruction steps.

The stage converter is in :mod:`~pybk.frontends.dockerfile.stages`, the steps in
``convert_config`` (image config and WORKDIR), ``convert_run`` (RUN) and ``convert_copy``
(COPY/ADD), the image config helpers in :mod:`~pybk.frontends.dockerfile.imageconfig`.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pybk.core import llb
from pybk.core.model import Model
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile import convert_config, convert_copy, convert_run
from pybk.frontends.dockerfile.convert_run import PROXY_ARGS
from pybk.frontends.dockerfile.errors import DockerfileParseError
from pybk.frontends.dockerfile.imageconfig import StageState
from pybk.frontends.dockerfile.instructions import parse_dockerfile
from pybk.frontends.dockerfile.stages import NamedContext, StageConverter, Step

CONTEXT_NAME = "context"
#: build args that are never reported as unused
_BUILTIN_ARGS = frozenset({
    "SOURCE_DATE_EPOCH", "BUILDKIT_SYNTAX", "BUILDKIT_INLINE_CACHE", "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_CACHE_MOUNT_NS", "BUILDKIT_SANDBOX_HOSTNAME", "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_DOCKERFILE_CHECK", "BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE",
    "BUILDKIT_BUILD_NAME",
})
#: instruction keyword (lower case) → the step converting it
STEPS: dict[str, Step] = {**convert_config.STEPS, **convert_run.STEPS, **convert_copy.STEPS}


class ConvertResult(Model):
    state: llb.State
    image_config: dict
    stage_name: str
    #: paths of the build context the build reads (None: all of it)
    context_paths: tuple[str, ...] | None = None


def _context_paths(paths: set[str]) -> tuple[str, ...] | None:
    """The follow paths for the context source (None: the whole context is needed)."""
    cleaned = set()
    for path in paths:
        rel = posixpath.normpath(path).lstrip("/")
        if rel in ("", "."):
            return None
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # invalid UTF-8 bytes: the instruction itself is refused
            return None
        cleaned.add(rel)
    return tuple(sorted(cleaned))


def dockerfile_to_llb(data: bytes, *, filename: str = "Dockerfile", **options: Any
                      ) -> ConvertResult:
    """Parse and convert a Dockerfile into the LLB State of ``target`` (default: the last stage).

    ``options`` are :func:`convert_dockerfile`'s: ``named_contexts`` map a name used by
    FROM/``--from`` to a State or a :class:`NamedContext`; ``image_resolver(ref, platform)``
    supplies the image config of a base image. Only the stages the target needs are part of the
    graph, and only the context paths they read are transferred (``exclude_patterns``: the
    ``.dockerignore`` patterns). ``no_cache_stages``: None (use the cache), empty (no stage) or
    stage names whose steps ignore the cache. ``warn`` receives warnings such as unused build
    args, ``lint`` the build-check findings only the conversion sees (InvalidBaseImagePlatform).
    Without ``target_platform`` a base image of another platform this host can run (natively
    or emulated) gives its stage that platform, as BuildKit's auto-detection does.
    ``ulimits`` ((name, soft, hard)), ``cgroup_parent`` and ``linux_resources`` apply to every
    RUN.
    """
    return convert_dockerfile(parse_dockerfile(data, filename), data, **options)


def convert_dockerfile(
    dockerfile: ins.Dockerfile,
    data: bytes,
    *,
    language: str = "Dockerfile",
    target: str | None = None,
    build_args: Mapping[str, str] = {},  # noqa: B006 - read only
    named_contexts: Mapping[str, NamedContext | llb.State] = {},  # noqa: B006 - read only
    image_resolver: Callable[..., dict | None] | None = None,
    target_platform: str | llb.Platform | None = None,
    build_platform: str | llb.Platform | None = None,
    exclude_patterns: Iterable[str] = (),
    no_cache_stages: Iterable[str] | None = None,
    extra_hosts: Mapping[str, str] = {},  # noqa: B006 - read only
    network_mode: str | None = None,
    ulimits: Iterable[tuple[str, int, int]] = (),
    cgroup_parent: str = "",
    linux_resources: llb.LinuxResources | None = None,
    image_resolve_mode: str | None = None,
    labels: Mapping[str, str] = {},  # noqa: B006 - read only
    warn: Callable[[str], None] | None = None,
    lint: Callable[[Any], None] | None = None,
) -> ConvertResult:
    """Convert an already parsed Dockerfile (or any frontend's typed instructions) to LLB.

    ``data`` is the source file the instructions' locations point into, recorded in the
    definition's source map as ``language``; the other arguments are described at
    :func:`dockerfile_to_llb`.
    """
    filename = dockerfile.filename
    if not dockerfile.stages:
        raise DockerfileParseError("the Dockerfile has no FROM instruction", filename=filename)
    if target:
        try:
            stage = dockerfile.stage(target)
        except KeyError:
            raise DockerfileParseError(
                f'target stage "{target}" could not be found', filename=filename
            ) from None
    else:
        stage = dockerfile.stages[-1]
    host = llb.host_platform()
    target_p = llb.Platform.parse(target_platform) if isinstance(target_platform, str) \
        else (target_platform or host)
    build_p = llb.Platform.parse(build_platform) if isinstance(build_platform, str) \
        else (build_platform or host)
    excludes = list(exclude_patterns)
    resolver = image_resolver
    cached: dict = {}
    if image_resolver is not None:
        def resolver(ref: str, platform: str | None) -> dict | None:
            if (ref, platform) not in cached:
                try:
                    cached[ref, platform] = image_resolver(ref, platform)
                except TypeError:
                    cached[ref, platform] = image_resolver(ref)
            return cached[ref, platform]

    def convert(follow: tuple[str, ...] | None) -> tuple[StageConverter, StageState]:
        def context() -> llb.State:
            return llb.local(CONTEXT_NAME, shared_key_hint=CONTEXT_NAME,
                             exclude_patterns=excludes or None,
                             follow_paths=list(follow) if follow else None,
                             custom_name="[internal] load build context")

        converter = StageConverter(
            dockerfile, bytes(data), build_args, named_contexts, resolver, target_p, build_p,
            target or "default", context,
            None if no_cache_stages is None else frozenset(no_cache_stages), extra_hosts,
            network_mode, STEPS, language, implicit_platform=target_platform is None,
            ulimits=tuple(ulimits), cgroup_parent=cgroup_parent,
            linux_resources=linux_resources, image_resolve_mode=image_resolve_mode)
        return converter, converter.stage(stage)

    converter, built = convert(None)
    follow = _context_paths(converter.context_paths)
    if follow:
        converter, built = convert(follow)
    image = copy.deepcopy(built.image)
    if labels:
        image["config"]["Labels"] = {**(image["config"].get("Labels") or {}), **labels}
    if warn is not None:
        unused = sorted(k for k in build_args if k not in converter.consumed
                        and k not in converter.predefined and k not in _BUILTIN_ARGS
                        and k.upper() not in PROXY_ARGS and not k.startswith("BUILDKIT_"))
        if unused:
            warn(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed")
    if lint is not None:
        for finding in converter.findings:
            lint(finding)
    return ConvertResult(built.state, image, stage.name or f"stage-{stage.index}", follow)


def outline(data: bytes, *, filename: str = "Dockerfile", target: str | None = None,
            build_args: Mapping[str, str] = {}) -> str:  # noqa: B006 - read only
    """``--call outline``: the build args the target uses, with defaults and descriptions."""
    from pybk.frontends.dockerfile import subrequests

    answer = subrequests.outline_of(data, filename=filename, target=target,
                                    build_args=build_args)
    dockerfile = parse_dockerfile(data, filename)
    stage = dockerfile.stage(target) if target else dockerfile.stages[-1]
    return subrequests.outline_text(answer, stage.name or f"stage-{stage.index}")


def targets(data: bytes, *, filename: str = "Dockerfile") -> str:
    """``--call targets``: the named stages (the default one marked), with descriptions."""
    from pybk.frontends.dockerfile import subrequests

    return subrequests.targets_text(subrequests.targets_of(data, filename=filename))
