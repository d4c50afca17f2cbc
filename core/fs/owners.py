"""Owners, modes and timestamps as FileOp actions give them.

Owners named by name are looked up in the ``/etc/passwd`` and ``/etc/group`` of a root; modes
are octal or symbolic (chmod's ``u+x,go=rX``); ``None`` or ``-1`` mean unset.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.fs.rootpath import resolve_in_root

__all__ = ["mode_value", "parse_mode_str", "resolve_owner", "timestamp_value"]


def _user_opt(opt: Any) -> tuple[str | None, int | None]:
    """(name, id) of a UserOpt given as an int, a str, or an object with name/id attributes."""
    if opt is None:
        return None, None
    if isinstance(opt, bool):
        raise BuildError(f"invalid owner {opt!r}")
    if isinstance(opt, int):
        return None, opt
    if isinstance(opt, str):
        return (None, int(opt)) if opt.isdigit() else (opt, None)
    by_name = getattr(opt, "by_name", None)
    if by_name is not None:
        return getattr(by_name, "name", by_name), None
    by_id = getattr(opt, "by_id", None)
    if by_id is not None:
        return None, int(by_id)
    name = getattr(opt, "name", None)
    if name:
        return name, None
    ident = getattr(opt, "id", None)
    if ident is not None:
        return None, int(ident)
    return None, None


def _lookup(root: str, filename: str, name: str, what: str) -> tuple[int, int]:
    """(id, primary gid) of ``name`` in ``root``'s /etc/passwd, or (gid, 0) in /etc/group."""
    host = resolve_in_root(root, filename)
    try:
        with open(host, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 3 and fields[0] == name:
                    try:
                        primary = int(fields[3]) if what == "user" and len(fields) > 3 else 0
                        return int(fields[2]), primary
                    except ValueError:
                        break
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise BuildError(f"unable to find {what} {name}: no {filename} in the destination") from None
    raise BuildError(f"unable to find {what} {name}")


def resolve_owner(owner: Any, root: str) -> tuple[int, int] | None:
    """uid/gid of a ChownOpt (``user``/``group``, each by name or id) against ``root``'s files.

    A user without a group takes the user's primary group (by name) or gid = uid (by id); a
    group alone leaves uid 0. ``owner`` may also be a ``(uid, gid)`` tuple. ``None`` = keep.
    """
    if owner is None:
        return None
    if isinstance(owner, tuple):
        return int(owner[0]), int(owner[1])
    user_name, user_id = _user_opt(getattr(owner, "user", None))
    group_name, group_id = _user_opt(getattr(owner, "group", None))
    if user_name is None and user_id is None and group_name is None and group_id is None:
        return None
    uid = gid = 0
    if user_name is not None:
        uid, gid = _lookup(root, "/etc/passwd", user_name, "user")
    elif user_id is not None:
        uid = gid = user_id
    if group_name is not None:
        gid, _ = _lookup(root, "/etc/group", group_name, "group")
    elif group_id is not None:
        gid = group_id
    return uid, gid


_WHO_BITS = {"u": 0o700, "g": 0o070, "o": 0o007}
_WHO_SHIFT = {"u": 6, "g": 3, "o": 0}
_MODE_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[rwxXst]*|[ugo]))+)\Z")
_MODE_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")


def parse_mode_str(mode_str: str) -> Callable[[int, bool], int]:
    """A function ``(mode, is_dir) -> mode`` for a chmod mode: octal or symbolic (``u+x,go=rX``).

    Symbolic clauses without a ``who`` apply to all of user, group and others.
    """
    text = mode_str.strip()
    if re.fullmatch(r"[0-7]{1,4}", text):
        value = int(text, 8)
        return lambda mode, is_dir: (mode & ~0o7777) | value
    clauses = []
    for clause in text.split(","):
        m = _MODE_CLAUSE.match(clause)
        if not m:
            raise BuildError(f"invalid chmod mode {mode_str!r}")
        who = m.group(1).replace("a", "ugo") or "ugo"
        clauses.append((sorted(set(who)), _MODE_ACTION.findall(m.group(2))))

    def apply(mode: int, is_dir: bool) -> int:
        perm = mode & 0o7777
        for who, actions in clauses:
            for op, perms in actions:
                bits = 0
                if perms in ("u", "g", "o"):
                    source = (perm >> _WHO_SHIFT[perms]) & 0o7
                    for w in who:
                        bits |= source << _WHO_SHIFT[w]
                else:
                    for w in who:
                        shift = _WHO_SHIFT[w]
                        if "r" in perms:
                            bits |= 0o4 << shift
                        if "w" in perms:
                            bits |= 0o2 << shift
                        if "x" in perms or ("X" in perms and (is_dir or perm & 0o111)):
                            bits |= 0o1 << shift
                    if "s" in perms:
                        bits |= (0o4000 if "u" in who else 0) | (0o2000 if "g" in who else 0)
                    if "t" in perms and "o" in who:
                        bits |= 0o1000
                if op == "+":
                    perm |= bits
                elif op == "-":
                    perm &= ~bits
                else:
                    clear = 0
                    for w in who:
                        clear |= _WHO_BITS[w]
                    clear |= (0o4000 if "u" in who else 0) | (0o2000 if "g" in who else 0)
                    clear |= 0o1000 if "o" in who else 0
                    perm = (perm & ~clear) | bits
        return (mode & ~0o7777) | perm

    return apply


def timestamp_value(value: Any) -> int | None:
    """Nanoseconds since the epoch, or ``None`` for unset (``None`` or ``-1``)."""
    if value is None or value == -1:
        return None
    return int(value)


def mode_value(value: Any) -> int | None:
    if value is None or value == -1:
        return None
    if isinstance(value, str):
        return int(value, 8)
    return int(value)

