"""Multi-platform builds: one solve per target platform, exported together.

A frontend asked for several platforms answers with BuildKit's metadata keys
(``refs.platforms``, ``containerimage.config/<platform>``) plus ``definition/<platform>``;
:func:`platform_graphs` reads them back and :class:`MultiPlatformResult` carries the solved
results to the exporters. It behaves as the first platform's result, so an exporter that knows
nothing of platforms exports that one; ``image``/``oci``/``docker`` write an index and
``local``/``tar`` one subdirectory per platform.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from pybk.core.errors import BuildError
from pybk.core.interfaces import BuildResultView


@attrs.frozen(eq=False)
class MultiPlatformResult(BuildResultView):
    """``results``: ``{platform: SolveResult}`` in the requested order."""

    results: Mapping[str, Any]
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def first(self) -> Any:
        return next(iter(self.results.values()))

    @property
    def image_config(self) -> Mapping[str, Any] | None:  # type: ignore[override]
        return self.first.image_config

    @property
    def store(self) -> Any:
        return self.first.store

    @property
    def ref(self) -> Any:
        return self.first.ref

    @property
    def snapshot(self) -> str | None:
        return self.first.snapshot

    @property
    def cache_key(self) -> str:
        return self.first.cache_key

    @contextlib.contextmanager
    def mount(self) -> Iterator[str]:
        with self.first.mount() as path:
            yield path


def platform_results(result: Any) -> Mapping[str, Any] | None:
    """``{platform: result}`` of a multi-platform result, None for a single one."""
    return getattr(result, "results", None) if isinstance(result, MultiPlatformResult) else None


def split_name(platform: str) -> str:
    """The subdirectory of a platform in a split export: ``linux/arm64/v8`` → ``linux_arm64_v8``."""
    return platform.replace("/", "_")


def platform_graphs(metadata: Mapping[str, bytes]) -> dict[str, tuple[Any, Any]] | None:
    """``{platform: (definition, image config)}`` from a frontend result's metadata, or None
    when the frontend built a single platform."""
    from pybk.core.llb.definition import Definition

    listed = metadata.get("refs.platforms")
    if not listed:
        return None
    graphs: dict[str, tuple[Any, Any]] = {}
    for platform in json.loads(bytes(listed)):
        definition = Definition.from_bytes(bytes(metadata[f"definition/{platform}"]))
        config = json.loads(bytes(metadata.get(f"containerimage.config/{platform}", b"null")))
        graphs[platform] = (definition, config or None)
    return graphs


#: the qemu name of each architecture's emulator (its binfmt_misc entry is ``qemu-<name>``)
QEMU_NAMES = {"amd64": "x86_64", "386": "i386", "arm64": "aarch64", "arm": "arm",
              "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"


def can_execute(platform: Any) -> bool:
    """Whether this host runs binaries of ``platform`` (an llb Platform or ``os/arch``) in a
    container: natively, or through an enabled ``qemu-<arch>`` binfmt_misc entry with ``F``."""
    from pybk.core.platform import host_platform

    text = str(platform)
    parts = text.split("/")
    arch = parts[1] if len(parts) > 1 else ""
    host = host_platform()
    if parts[0] != host.os:
        return False
    if arch == host.architecture or (host.architecture == "amd64" and arch == "386"):
        return True
    qemu = QEMU_NAMES.get(arch)
    if qemu is None:
        return False
    return "F" in binfmt_flags(qemu)


def binfmt_flags(qemu: str) -> str:
    """The flags of the enabled binfmt_misc entry ``qemu-<qemu>`` ('' when none). Only an entry
    with ``F`` (the emulator opened at registration) can run inside a container's rootfs."""
    try:
        with open(os.path.join(BINFMT_DIR, f"qemu-{qemu}")) as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    if not lines or lines[0].strip() != "enabled":
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("flags:")), "")


def check_executable(platform: Any) -> None:
    """BuildError before running anything when ``platform`` needs an emulator that is missing."""
    if platform is None or can_execute(platform):
        return
    raise BuildError(f"no emulator for {platform}: install qemu-user-static and register "
                     "binfmt_misc (with the F flag)")
