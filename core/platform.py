"""OCI platforms (``os/arch[/variant]``): parsing, normalisation, matching for index selection.

Normalisation follows containerd: ``x86_64`` → ``amd64``, ``aarch64`` → ``arm64`` (variant ``v8``
is the default and is dropped), ``armhf`` → ``arm/v7``, ``armel`` → ``arm/v6``, ``i386`` → ``386``.
A platform *matches* an image platform it can run: same OS and architecture, and an image
variant that is the same or older (``arm/v7`` runs ``arm/v6``; ``amd64/v3`` runs ``amd64``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from pybk.core.errors import BuildError, InputError
from pybk.core.model import Model

_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "arm": ("arm", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "386": ("386", None),
}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
_VARIANT_ORDER = {
    "arm": ["v5", "v6", "v7", "v8"],
    "arm64": ["v8", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9", "v9"],
    "amd64": ["v1", "v2", "v3", "v4"],
}


class Platform(Model):
    """A normalised platform. ``variant`` is None when it is the architecture's default."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @property
    def effective_variant(self) -> str | None:
        return self.variant or _DEFAULT_VARIANT.get(self.architecture)

    def to_dict(self) -> dict[str, str]:
        """The OCI ``platform`` object (as in an index or an image config)."""
        data = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            data["variant"] = self.variant
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Platform:
        return normalize(
            cls(
                os=str(data.get("os") or "linux"),
                architecture=str(data.get("architecture") or ""),
                variant=data.get("variant") or None,
            )
        )

    def matches(self, image: Platform) -> bool:
        """Whether an image built for ``image`` runs on this platform."""
        return self._rank(image) is not None

    def _rank(self, image: Platform) -> int | None:
        if image.os != self.os or image.architecture != self.architecture:
            return None
        order = _VARIANT_ORDER.get(self.architecture)
        mine, theirs = self.effective_variant, image.effective_variant
        if mine == theirs:
            return 0
        if order is None or mine not in order or theirs not in order:
            return None
        distance = order.index(mine) - order.index(theirs)
        return distance if distance > 0 else None


def normalize(p: Platform) -> Platform:
    os_name = p.os.lower()
    arch = p.architecture.lower()
    variant = p.variant.lower() if p.variant else None
    canon, implied = _ARCH_ALIASES.get(arch, (arch, None))
    variant = variant or implied
    if variant and not variant.startswith("v") and canon in _VARIANT_ORDER:
        variant = "v" + variant
    if canon == "arm64" and variant in ("v8", "v8.0"):
        variant = None
    if canon == "amd64" and variant == "v1":
        variant = None
    if canon == "arm" and variant is None:
        variant = "v7"
    return Platform(os=os_name, architecture=canon, variant=variant)


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (or a bare ``arch``, meaning Linux) and normalise it."""
    parts = text.strip().split("/")
    if not text.strip() or len(parts) > 3 or any(not part for part in parts):
        raise InputError(f"invalid platform {text!r}: expected os/arch[/variant]")
    if len(parts) == 1:
        if parts[0].lower() in _ARCH_ALIASES:
            return normalize(Platform("linux", parts[0]))
        return normalize(Platform(parts[0], host_platform().architecture))
    return normalize(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def host_platform() -> Platform:
    """The platform of this machine (Linux only in practice); from ``uname(2)``, as
    :func:`platform.machine` and :func:`platform.system` read it (without importing
    :mod:`platform`, ~2 ms)."""
    uname = os.uname()
    machine = uname.machine.lower() or "amd64"
    variant = None
    if machine.startswith("armv"):
        variant, machine = machine[3:5], "arm"
    return normalize(Platform(uname.sysname.lower() or "linux", machine, variant))


def select_best(wanted: Platform, candidates: Iterable[tuple[Platform | None, Any]]) -> Any | None:
    """Of ``(platform, item)`` pairs pick the item whose platform suits ``wanted`` best.

    Exact variants win over older ones; among equals the first listed wins (index order).
    Returns None when none matches.
    """
    best, best_rank = None, None
    for candidate, item in candidates:
        if candidate is None:
            continue
        rank = wanted._rank(candidate)
        if rank is not None and (best_rank is None or rank < best_rank):
            best, best_rank = item, rank
    return best


#: the qemu name of each architecture's emulator (its binfmt_misc entry is ``qemu-<name>``)
QEMU_NAMES = {"amd64": "x86_64", "386": "i386", "arm64": "aarch64", "arm": "arm",
              "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"


def can_execute(platform: Any) -> bool:
    """Whether this host runs binaries of ``platform`` (an llb Platform or ``os/arch``) in a
    container: natively, or through an enabled ``qemu-<arch>`` binfmt_misc entry with ``F``."""
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
