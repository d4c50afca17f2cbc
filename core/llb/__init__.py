"""LLB, BuildKit's low-level build graph: ops, definitions and the State builder.

``from pybk.core import llb`` gives the builder API (``llb.image``, ``llb.local``, ``llb.run``…
via :class:`State`), the op messages (``llb.ExecOp``…) and :class:`Definition`.

The names are loaded on first use (each from its module), so a process that only reads a
Definition does not import the State builder.
"""

from __future__ import annotations

import importlib
from typing import Any

#: each public name, by the module that defines it
_MODULES = {
    "pybk.core.llb.actions": (
        "cache_mount",
        "copy",
        "mkdir",
        "mkfile",
        "mount",
        "rm",
        "secret",
        "ssh",
        "symlink",
        "tmpfs",
    ),
    "pybk.core.llb.definition": (
        "Definition",
        "Location",
        "Locations",
        "Position",
        "Range",
        "Source",
        "SourceInfo",
    ),
    "pybk.core.llb.graph": (
        "CUSTOM_NAME_KEY",
        "SourceLocation",
    ),
    "pybk.core.llb.ops": (
        "BuildInput",
        "BuildOp",
        "CacheOpt",
        "CacheSharingOpt",
        "CDIDevice",
        "ChownOpt",
        "DiffOp",
        "ExecOp",
        "ExportCache",
        "FileAction",
        "FileActionCopy",
        "FileActionMkDir",
        "FileActionMkFile",
        "FileActionRm",
        "FileActionSymlink",
        "FileOp",
        "FrozenDict",
        "host_platform",
        "HostIP",
        "Input",
        "LLB_BUILDER",
        "LLB_DEFINITION_FILENAME",
        "LinuxResources",
        "LowerDiffInput",
        "MergeInput",
        "MergeOp",
        "Meta",
        "Mount",
        "MountContentCache",
        "MountType",
        "NamedUserOpt",
        "NetMode",
        "Op",
        "OpMetadata",
        "PassthroughOp",
        "Platform",
        "ProgressGroup",
        "ProxyEnv",
        "SCRATCH",
        "SecretEnv",
        "SecretOpt",
        "SecurityMode",
        "SKIP_OUTPUT",
        "SourceOp",
        "SSHOpt",
        "TmpfsOpt",
        "Ulimit",
        "UpperDiffInput",
        "UserOpt",
        "WorkerConstraints",
    ),
    "pybk.core.llb.sources": (
        "git",
        "http",
        "image",
        "local",
        "normalize_image_ref",
        "oci_layout",
        "scratch",
    ),
    "pybk.core.llb.state": (
        "DEFAULT_PATH",
        "diff",
        "ExecState",
        "FileChain",
        "merge",
        "MountSpec",
        "State",
    ),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
