"""Builders of the arguments of ``State.run`` and ``State.file``: extra mounts (bind, cache,
tmpfs, secret, SSH agent) and file-action chains (copy, mkdir, mkfile, rm, symlink).
"""

from __future__ import annotations

import posixpath
from typing import Any

from pybk.core.llb.ops import (
    CacheOpt,
    CacheSharingOpt,
    MountContentCache,
    MountType,
    SecretOpt,
    SSHOpt,
    TmpfsOpt,
)
from pybk.core.llb.state import FileChain, MountSpec, Owner, State, Timestamp

__all__ = ["cache_mount", "copy", "mkdir", "mkfile", "mount", "rm", "secret", "ssh", "symlink",
           "tmpfs"]


# ------------------------------------------------------------------------------ run mounts


def _check_dest(dest: str) -> str:
    if not posixpath.isabs(dest):
        raise ValueError(f"mount destination must be absolute: {dest!r}")
    return dest


def mount(
    dest: str,
    state: State,
    *,
    selector: str = "",
    readonly: bool = False,
    content_cache: MountContentCache = MountContentCache.DEFAULT,
) -> MountSpec:
    """Bind ``state`` (or its ``selector`` sub-path) at ``dest``; writable mounts are outputs."""
    return MountSpec(
        _check_dest(dest), state, MountType.BIND, selector, readonly, content_cache=content_cache
    )


def cache_mount(
    dest: str,
    id: str,
    *,
    sharing: CacheSharingOpt = CacheSharingOpt.SHARED,
    source: State | None = None,
    selector: str = "",
) -> MountSpec:
    """A persistent cache directory shared across builds by ``id``; ``source`` seeds it."""
    return MountSpec(
        _check_dest(dest),
        source,
        MountType.CACHE,
        selector,
        cache_opt=CacheOpt(id, CacheSharingOpt(sharing)),
    )


def tmpfs(dest: str, *, size: int = 0) -> MountSpec:
    """An in-memory filesystem (``size`` bytes, 0 = default)."""
    return MountSpec(_check_dest(dest), None, MountType.TMPFS, tmpfs_opt=TmpfsOpt(size))


def secret(
    dest: str, id: str, uid: int = 0, gid: int = 0, mode: int = 0o400, optional: bool = False
) -> MountSpec:
    """Secret ``id`` as a read-only file at ``dest``."""
    return MountSpec(
        _check_dest(dest),
        None,
        MountType.SECRET,
        secret_opt=SecretOpt(id, uid, gid, mode, optional),
    )


def ssh(
    dest: str = "/run/buildkit/ssh_agent.0",
    id: str = "default",
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o600,
    optional: bool = False,
) -> MountSpec:
    """The SSH agent socket ``id`` at ``dest``."""
    return MountSpec(
        _check_dest(dest), None, MountType.SSH, ssh_opt=SSHOpt(id, uid, gid, mode, optional)
    )


# ------------------------------------------------------------------------------ file actions


def copy(src_state: State, src: str, dest: str, **info: Any) -> FileChain:
    """Copy ``src`` of ``src_state`` to ``dest``. ``info``: the :class:`FileActionCopy` fields
    (``owner``, ``mode``, ``follow_symlink``, ``dir_copy_contents``, ``create_dest_path``,
    ``allow_wildcard``, ``include_patterns``, …; ``timestamp`` also takes a datetime)."""
    return FileChain().copy(src_state, src, dest, **info)


def mkdir(
    path: str,
    mode: int,
    make_parents: bool = False,
    *,
    owner: Owner = None,
    timestamp: Timestamp = None,
) -> FileChain:
    return FileChain().mkdir(path, mode, make_parents, owner=owner, timestamp=timestamp)


def mkfile(
    path: str, mode: int, data: bytes | str, *, owner: Owner = None, timestamp: Timestamp = None
) -> FileChain:
    return FileChain().mkfile(path, mode, data, owner=owner, timestamp=timestamp)


def rm(path: str, *, allow_not_found: bool = False, allow_wildcard: bool = False) -> FileChain:
    return FileChain().rm(path, allow_not_found=allow_not_found, allow_wildcard=allow_wildcard)


def symlink(
    oldpath: str, newpath: str, *, owner: Owner = None, timestamp: Timestamp = None
) -> FileChain:
    return FileChain().symlink(oldpath, newpath, owner=owner, timestamp=timestamp)
