"""Resolve an ExecOp's ``user`` against the container's own /etc/passwd and /etc/group.

Same rules as BuildKit (runc's ``GetExecUser``): ``""`` is root; ``uid:gid`` with both numeric
(or ``root``) is taken as is; otherwise names are looked up in the rootfs, a numeric id missing
from passwd is allowed (gid 0), supplementary groups come from /etc/group when no group is
given. Files are read through :func:`root_path`, so symlinks cannot escape the rootfs.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from pybk.core.errors import BuildError
from pybk.core.model import Model

MAX_ID = 2**31 - 1
_MAX_SYMLINKS = 255


class ResolvedUser(Model):
    """Numeric identity of the container process."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


def root_path(root: str, path: str) -> str:
    """Host path of ``path`` inside ``root``, following symlinks without leaving ``root``.

    Like a ``chroot``: ``..`` stops at the root and absolute link targets restart from it.
    Below the first component that does not exist, the rest is cleaned lexically.
    """
    root = os.path.abspath(root)
    resolved: list[str] = []
    pending = [p for p in path.split("/") if p]
    pending.reverse()
    links = 0
    missing_at: int | None = None  # below a missing component nothing is a symlink
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            if missing_at is not None and len(resolved) <= missing_at:
                missing_at = None
            continue
        if missing_at is not None:
            resolved.append(name)
            continue
        candidate = os.path.join(root, *resolved, name)
        try:
            st = os.lstat(candidate)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            missing_at = len(resolved)
            resolved.append(name)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(name)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many levels of symbolic links: {path}", path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved.clear()
        pending.extend(reversed([p for p in target.split("/") if p]))
    return os.path.join(root, *resolved)


def _read_db(root: str, path: str) -> list[list[str]]:
    """Colon-separated records of a regular file inside ``root`` (missing → empty)."""
    try:
        fd = os.open(root_path(root, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return []
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        text = f.read().decode("utf-8", "surrogateescape")
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            records.append(line.split(":"))
    return records


class PasswdEntry(Model):
    name: str
    uid: int
    gid: int


class GroupEntry(Model):
    name: str
    gid: int
    members: tuple[str, ...]


def _int_field(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() else None


def read_passwd(root: str) -> Iterator[PasswdEntry]:
    for rec in _read_db(root, "/etc/passwd"):
        if len(rec) < 4:
            continue
        uid, gid = _int_field(rec[2]), _int_field(rec[3])
        if uid is not None and gid is not None:
            yield PasswdEntry(rec[0], uid, gid)


def read_group(root: str) -> Iterator[GroupEntry]:
    for rec in _read_db(root, "/etc/group"):
        if len(rec) < 3:
            continue
        gid = _int_field(rec[2])
        if gid is not None:
            members = tuple(m for m in rec[3].split(",") if m) if len(rec) > 3 else ()
            yield GroupEntry(rec[0], gid, members)


def _fast_id(value: str) -> int | None:
    if value == "root":
        return 0
    return _int_field(value)


def _checked(value: int) -> int:
    if value > MAX_ID:
        raise BuildError(f"uids and gids must be in range 0-{MAX_ID}")
    return value


def resolve_user(root: str, user: str) -> ResolvedUser:
    """Resolve ``user`` (``""``, ``name``, ``uid``, ``uid:gid``, ``name:group`` …) in ``root``."""
    if not user:
        return ResolvedUser()
    user_arg, has_group, group_arg = user.partition(":")
    if has_group:
        uid, gid = _fast_id(user_arg), _fast_id(group_arg)
        if uid is not None and gid is not None:
            return ResolvedUser(_checked(uid), _checked(gid))

    uid_num = _int_field(user_arg) if user_arg else 0
    result_uid, result_gid, matched_name = 0, 0, ""
    for entry in read_passwd(root):
        if (entry.uid == uid_num) if uid_num is not None else (entry.name == user_arg):
            result_uid, result_gid, matched_name = entry.uid, entry.gid, entry.name
            break
    else:
        if uid_num is None:
            raise BuildError(f"unable to find user {user_arg}: no matching entries in passwd file")
        result_uid = _checked(uid_num)

    additional: tuple[int, ...] = ()
    if group_arg:
        gid_num = _int_field(group_arg)
        for group in read_group(root):
            if (group.gid == gid_num) if gid_num is not None else (group.name == group_arg):
                result_gid = group.gid
                break
        else:
            if gid_num is None:
                raise BuildError(
                    f"unable to find group {group_arg}: no matching entries in group file")
            result_gid = _checked(gid_num)
    elif matched_name:
        additional = tuple(g.gid for g in read_group(root) if matched_name in g.members)
    return ResolvedUser(result_uid, result_gid, additional)
