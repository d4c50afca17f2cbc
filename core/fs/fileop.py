"""FileOp actions on real directories (mounted snapshots): copy, mkfile, mkdir, rm, symlink.

Every path is resolved *inside* its root, which stands for ``/``: ``..`` stops at the root and a
symlink met on the way (``/etc -> /usr/etc``, ``x -> ../../..``) is followed within the root, never
out of it. Semantics follow BuildKit's file backend: wildcards are Go ``filepath.Match`` patterns,
a destination ending in ``/`` is a directory, ``dir_copy_contents`` copies a directory's entries
rather than the directory itself, owners named by name are looked up in the ``/etc/passwd`` and
``/etc/group`` of the destination root, and so on. Failures raise :class:`BuildError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import attrs

from pybk.core.errors import BuildError

if TYPE_CHECKING:
    import tarfile

_MAX_SYMLINKS = 255

__all__ = [
    "CopyOptions",
    "LinkPlan",
    "PathFilter",
    "clean_path",
    "copy",
    "mkdir",
    "mkfile",
    "parse_mode_str",
    "resolve_in_root",
    "resolve_owner",
    "resolve_wildcards",
    "rm",
    "symlink",
]


# --------------------------------------------------------------------------------------------
# Paths confined to a root
# --------------------------------------------------------------------------------------------


def resolve_in_root(root: str, path: str, *, follow_final: bool = True) -> str:
    """The host path of ``path`` inside ``root``, resolving symlinks as if ``root`` were ``/``.

    Missing components are kept literally. With ``follow_final=False`` a symlink in the last
    component is left as is (its parents are still resolved).
    """
    root = os.path.abspath(root)
    prefix = "" if root == "/" else root
    pending = [c for c in path.split("/") if c not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    parts: list[str] = []
    links = 0
    while pending:
        comp = pending.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        if not pending and not follow_final:
            parts.append(comp)
            continue
        candidate = prefix + "/" + "/".join([*parts, comp])
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            parts.append(comp)
            continue
        if not stat.S_ISLNK(st.st_mode):
            parts.append(comp)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise BuildError(f"{path}: too many levels of symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            parts = []
        pending.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
    return prefix + "/" + "/".join(parts) if parts else root


def clean_path(path: str) -> str:
    """BuildKit's cleanPath: absolute and clean, keeping a trailing ``/`` or ``/.``."""
    cleaned = posixpath.normpath("/" + path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/."):
        return cleaned + ("/." if cleaned != "/" else ".")
    if path.endswith("/") and cleaned != "/":
        return cleaned + "/"
    return cleaned


def norm_path(path: str) -> str:
    """Absolute, clean form of a path inside a root (``..`` stops at ``/``)."""
    cleaned = posixpath.normpath("/" + path)
    return "/" + cleaned.lstrip("/")


def _root_path(root: str, path: str, follow: bool) -> str:
    """Host path of ``path``; the last component is followed only when ``follow``."""
    return resolve_in_root(root, norm_path(path), follow_final=follow)


def _show(text: str, *roots: str) -> str:
    """Replace host root prefixes in ``text`` by ``/`` so messages name in-root paths."""
    for root in roots:
        root = os.path.abspath(root)
        if root != "/":
            text = text.replace(root + "/", "/").replace(root, "/")
    return text


def _os_error(action: str, e: OSError, *roots: str) -> BuildError:
    where = f" {e.filename}" if e.filename else ""
    return BuildError(_show(f"{action}:{where}: {e.strerror or e}", *roots))


@contextlib.contextmanager
def _user_errors(action: str, *roots: str):
    """Turn OSErrors into BuildErrors and host paths in messages into in-root paths."""
    try:
        yield
    except BuildError as e:
        raise BuildError(_show(str(e), *roots)) from None
    except OSError as e:
        raise _os_error(action, e, *roots) from None


def _rel_display(root: str, host_path: str) -> str:
    rel = os.path.relpath(host_path, os.path.abspath(root))
    return "/" if rel == "." else "/" + rel


# --------------------------------------------------------------------------------------------
# Go filepath.Match wildcards
# --------------------------------------------------------------------------------------------


def _has_wildcards(component: str) -> bool:
    i = 0
    while i < len(component):
        ch = component[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate one Go ``filepath.Match`` pattern (``*``, ``?``, ``[^a-z]``, ``\\`` escapes)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    bad = BuildError(f"syntax error in pattern {pattern!r}")
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 >= n:
                raise bad
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            items: list[str] = []
            first = True
            while True:
                if i >= n:
                    raise bad
                if pattern[i] == "]" and not first:
                    break
                first = False
                lo, i = _class_char(pattern, i, bad)
                if i < n and pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1, bad)
                    if hi < lo:
                        raise bad
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                else:
                    items.append(re.escape(lo))
            out.append(("[^/" if negate else "[") + "".join(items) + "]")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _class_char(pattern: str, i: int, bad: BuildError) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise bad
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise bad
    return pattern[i], i + 1


def resolve_wildcards(root: str, path: str) -> list[str]:
    """Root-relative absolute paths matching ``path`` (Go ``filepath.Match`` per component).

    A path without wildcards is returned as is (whether or not it exists). Intermediate
    directories are not entered through symlinks; matches come in lexical walk order.
    """
    comps = [c for c in norm_path(path).split("/") if c]
    split = next((i for i, c in enumerate(comps) if _has_wildcards(c)), None)
    if split is None:
        return [norm_path(path)]
    base = "/" + "/".join(comps[:split])
    base_host = resolve_in_root(root, base, follow_final=True)
    patterns = [_glob_regex(c) for c in comps[split:]]
    matches: list[str] = []

    def walk(host: str, rel: str, depth: int) -> None:
        try:
            names = sorted(os.listdir(host))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            if not patterns[depth].match(name):
                continue
            child_rel = posixpath.join(rel, name)
            if depth + 1 == len(patterns):
                matches.append(child_rel)
            elif os.path.isdir(os.path.join(host, name)) and not os.path.islink(
                os.path.join(host, name)
            ):
                walk(os.path.join(host, name), child_rel, depth + 1)

    if not os.path.isdir(base_host):
        return []
    walk(base_host, _rel_display(root, base_host), 0)
    return matches


# --------------------------------------------------------------------------------------------
# Include / exclude filtering (BuildKit patternmatcher semantics, from pybk.core.fs.patterns)
# --------------------------------------------------------------------------------------------


class PathFilter:
    """Include/exclude patterns applied to paths relative to a copy or walk base.

    ``verdict(rel, is_dir)`` answers ``(keep, descend)``: whether the entry itself is selected,
    and for a directory whether its children can contain selected entries at all (so a walk
    may skip it without reading it).
    """

    def __init__(self, include_patterns: Sequence[str] = (), exclude_patterns: Sequence[str] = ()):
        from pybk.core.fs.patterns import PatternError, PatternMatcher

        self._matcher_cls = PatternMatcher
        try:
            self.include = PatternMatcher(list(include_patterns)) if include_patterns else None
            self.exclude = PatternMatcher(list(exclude_patterns)) if exclude_patterns else None
        except PatternError as e:
            raise BuildError(f"invalid pattern: {e}") from None
        self._include_comps = [
            [c for c in p.strip("/").split("/") if c not in ("", ".")]
            for p in (self.include.patterns if self.include is not None else ())
            if not p.startswith("!")
        ]
        self._prefix_matchers: dict[str, Any] = {}

    @classmethod
    def create(cls, include_patterns: Sequence[str] | None, exclude_patterns: Sequence[str] | None
               ) -> PathFilter | None:
        """A filter, or ``None`` when there are no patterns (everything is selected)."""
        if not include_patterns and not exclude_patterns:
            return None
        return cls(include_patterns or (), exclude_patterns or ())

    def verdict(self, rel: str, is_dir: bool) -> tuple[bool, bool]:
        keep = True
        descend = True
        if self.include is not None and not self.include.matches(rel):
            keep = False
            descend = is_dir and self._include_may_contain(rel)
        if self.exclude is not None and self.exclude.matches(rel):
            keep = False
            if descend and is_dir:
                descend = not self.exclude.can_skip_dir(rel)
        return keep, descend and is_dir

    def _include_may_contain(self, rel: str) -> bool:
        depth = rel.count("/") + 1
        for comps in self._include_comps:
            if any("**" in c for c in comps[:depth]):
                return True
            if len(comps) > depth:
                prefix = "/".join(comps[:depth])
                matcher = self._prefix_matchers.get(prefix)
                if matcher is None:
                    matcher = self._prefix_matchers[prefix] = self._matcher_cls([prefix])
                if matcher.matches(rel):
                    return True
        return False


# --------------------------------------------------------------------------------------------
# Owners and modes
# --------------------------------------------------------------------------------------------


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


def _timestamp(value: Any) -> int | None:
    """Nanoseconds since the epoch, or ``None`` for unset (``None`` or ``-1``)."""
    if value is None or value == -1:
        return None
    return int(value)


def _mode_value(value: Any) -> int | None:
    if value is None or value == -1:
        return None
    if isinstance(value, str):
        return int(value, 8)
    return int(value)


# --------------------------------------------------------------------------------------------
# Low-level helpers
# --------------------------------------------------------------------------------------------


def _chown(path: str, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    try:
        os.lchown(path, owner[0], owner[1])
    except PermissionError as e:
        raise BuildError(f"failed to chown {path} to {owner[0]}:{owner[1]}: {e.strerror}") from None


def _set_times(path: str, atime_ns: int, mtime_ns: int) -> None:
    try:
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    except NotImplementedError:  # pragma: no cover - lutimes is always there on Linux
        if not os.path.islink(path):
            os.utime(path, ns=(atime_ns, mtime_ns))


def mkdir_all(host_path: str, mode: int, owner: tuple[int, int] | None,
              timestamp_ns: int | None) -> None:
    """Create ``host_path`` and missing parents (already resolved in a root) with mode/owner."""
    missing: list[str] = []
    current = host_path
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
            continue
        except NotADirectoryError:
            raise BuildError(f"cannot create directory {host_path}: not a directory") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot create directory {current}: a file exists there")
        break
    created: list[str] = []
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise BuildError(f"cannot create directory {path}: a file exists there") from None
            continue
        os.chmod(path, mode)
        _chown(path, owner)
        created.append(path)
    if timestamp_ns is not None:
        for path in created:  # after all are made: making a child changes its parent's mtime
            _set_times(path, timestamp_ns, timestamp_ns)


def copy_file_data(src: str, dst: str) -> int:
    """Copy a regular file's content to a new file ``dst`` (mode 0600); returns the byte count."""
    in_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        try:
            return _copy_fd(in_fd, out_fd)
        finally:
            os.close(out_fd)
    finally:
        os.close(in_fd)


def _copy_fd(in_fd: int, out_fd: int) -> int:
    total = 0
    try:
        while True:
            n = os.copy_file_range(in_fd, out_fd, 1 << 30)
            if n == 0:
                return total
            total += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or total:
            raise
    while True:
        chunk = os.read(in_fd, 1 << 20)
        if not chunk:
            return total
        os.write(out_fd, chunk)
        total += len(chunk)


def _copy_xattrs(src: str, dst: str) -> None:
    """Best-effort copy of extended attributes (unsupported ones are skipped, like BuildKit)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError:
            continue


# --------------------------------------------------------------------------------------------
# copy
# --------------------------------------------------------------------------------------------


@attrs.frozen
class CopyOptions:
    """FileActionCopy's options (everything but src/dest); ``None``/-1 mean unset."""

    owner: Any = None
    mode: int | None = None
    follow_symlink: bool = False
    dir_copy_contents: bool = False
    attempt_unpack_docker_compatibility: bool = False
    create_dest_path: bool = False
    allow_wildcard: bool = False
    allow_empty_wildcard: bool = False
    timestamp: int | None = None
    include_patterns: Sequence[str] = ()
    exclude_patterns: Sequence[str] = ()
    always_replace_existing_dest_paths: bool = False
    mode_str: str = ""
    required_paths: Sequence[str] = ()


class LinkPlan:
    """Regular files a copy hard-links from its source instead of copying their bytes.

    Only for a source whose files are never changed in place (a synced local context: the sync
    replaces a changed file by a new one) and only for files whose copy would carry exactly the
    source's owner, mode and times, so nothing is ever applied through the link. The copy
    leaves these files out of the destination ``root`` and records them; once the destination
    is unmounted, :meth:`apply` links them into its layer directory (files cannot be linked
    across an overlay mount, and the layer of a mounted overlay must not be changed from below).
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        #: target path relative to ``root`` -> source file, in copy order
        self.pending: dict[str, str] = {}

    def add(self, src: str, target: str) -> None:
        self.pending[os.path.relpath(target, self.root)] = src

    def discard(self, target: str) -> None:
        """``target`` is written by the copy itself: a link planned there is dropped."""
        if self.pending:
            self.pending.pop(os.path.relpath(target, self.root), None)

    def ensure_parents(self, layer: str) -> None:
        """While ``root`` is mounted over ``layer``: make each target's directory exist in it.

        A directory only in a lower layer is copied up by setting its times to what they are.
        """
        for rel in {os.path.dirname(r) for r in self.pending}:
            if os.path.isdir(os.path.join(layer, rel)):
                continue
            merged = os.path.join(self.root, rel)
            st = os.lstat(merged)
            os.utime(merged, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            if not os.path.isdir(os.path.join(layer, rel)):
                raise BuildError(f"copy: {rel or '/'} did not appear in the layer directory")

    def apply(self, layer: str) -> int:
        """Link the planned files into ``layer`` (not mounted); returns how many."""
        times: dict[str, tuple[int, int]] = {}
        for rel, src in self.pending.items():
            target = os.path.join(layer, rel)
            parent = os.path.dirname(target)
            if parent not in times:
                st = os.lstat(parent)
                times[parent] = (st.st_atime_ns, st.st_mtime_ns)
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                pass
            else:  # only a whiteout (a lower file the copy replaced) can be there
                if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                    raise BuildError(f"copy: unexpected entry at {rel} in the layer directory")
                os.unlink(target)
            os.link(src, target)
        for parent, (atime_ns, mtime_ns) in times.items():
            os.utime(parent, ns=(atime_ns, mtime_ns))
        return len(self.pending)


def copy(src_root: str, src_path: str, dest_root: str, dest_path: str, opts: Any = None, *,
         owner_root: str | None = None, links: LinkPlan | None = None) -> None:
    """FileActionCopy: copy ``src_path`` of ``src_root`` to ``dest_path`` of ``dest_root``.

    ``opts`` is a :class:`CopyOptions` or any object with FileActionCopy's attribute names.
    Owner names resolve against ``owner_root`` (default: ``dest_root``). With ``links`` (a
    :class:`LinkPlan` on ``dest_root``), eligible regular files are planned there instead of
    copied; the caller applies the plan.
    """
    with _user_errors(f"copy {src_path} to {dest_path}", src_root, dest_root):
        _copy(src_root, src_path, dest_root, dest_path, opts, owner_root, links)


def _copy(src_root: str, src_path: str, dest_root: str, dest_path: str, opts: Any,
          owner_root: str | None, links: LinkPlan | None = None) -> None:
    o = opts if opts is not None else CopyOptions()

    def opt(name: str, default: Any) -> Any:
        value = getattr(o, name, default)
        return default if value is None else value

    src = clean_path(src_path)
    dest = clean_path(dest_path)
    owner = resolve_owner(opt("owner", None), owner_root or dest_root)
    timestamp_ns = _timestamp(opt("timestamp", None))
    mode_str = opt("mode_str", "")
    copier = _Copier(
        owner=owner,
        timestamp_ns=timestamp_ns,
        mode=None if mode_str else _mode_value(opt("mode", None)),
        mode_fn=parse_mode_str(mode_str) if mode_str else None,
        path_filter=PathFilter.create(opt("include_patterns", ()), opt("exclude_patterns", ())),
        always_replace=bool(opt("always_replace_existing_dest_paths", False)),
        links=links,
    )
    follow = bool(opt("follow_symlink", False))

    if not opt("create_dest_path", False):
        parent = os.path.dirname(resolve_in_root(dest_root, norm_path(dest)))
        if not os.path.isdir(parent):
            raise BuildError(f'destination "{norm_path(dest)}": parent directory does not exist')

    for required in opt("required_paths", ()):
        if not os.path.lexists(_root_path(src_root, posixpath.join(src, required), follow)):
            raise BuildError(f'"{norm_path(posixpath.join(src, required))}": not found')

    if opt("allow_wildcard", False):
        sources = resolve_wildcards(src_root, src)
        if not sources:
            if opt("allow_empty_wildcard", False):
                return
            raise BuildError(f'"{norm_path(src)}": not found')
    else:
        sources = [src]

    unpack = bool(opt("attempt_unpack_docker_compatibility", False))
    for source in sources:
        if unpack and _unpack(src_root, source, dest_root, dest, owner, timestamp_ns):
            continue
        _copy_one(copier, src_root, source, dest_root, dest, follow,
                  bool(opt("dir_copy_contents", False)))


def _copy_one(copier: _Copier, src_root: str, src: str, dest_root: str, dest: str,
              follow: bool, dir_contents: bool) -> None:
    src_host = _root_path(src_root, src, follow)
    try:
        src_st = os.lstat(src_host)
    except (FileNotFoundError, NotADirectoryError):
        raise BuildError(f'"{norm_path(src)}": not found') from None
    head, tail = posixpath.split(dest)
    ensure = dest if tail in ("", ".") else head
    if ensure:
        mkdir_all(resolve_in_root(dest_root, ensure), 0o755, copier.owner, copier.timestamp_ns)
    dest_host = resolve_in_root(dest_root, norm_path(dest))

    target = _prepare_target(copier, src_st, src, dest_host, dir_contents)
    copier.copy(src_host, "", target, False)


def _prepare_target(copier: _Copier, src_st: os.stat_result, src: str, dest_host: str,
                    dir_contents: bool) -> str:
    src_is_dir = stat.S_ISDIR(src_st.st_mode)
    try:
        dest_st: os.stat_result | None = os.stat(dest_host)
    except (FileNotFoundError, NotADirectoryError):
        dest_st = None
    target = dest_host
    if dest_st is not None and (
        (src_is_dir and not dir_contents) or (not src_is_dir and stat.S_ISDIR(dest_st.st_mode))
    ):
        base = posixpath.basename(norm_path(src))
        if base:
            target = os.path.join(dest_host, base)
    parent = target if (dir_contents and src_is_dir and dest_st is None) else os.path.dirname(target)
    mkdir_all(parent, 0o755, copier.owner, copier.timestamp_ns)
    return target


class _Copier:
    """One copy's state: options, hardlink map, pending (lazily created) parent directories."""

    def __init__(self, *, owner: tuple[int, int] | None, timestamp_ns: int | None,
                 mode: int | None, mode_fn: Callable[[int, bool], int] | None,
                 path_filter: PathFilter | None, always_replace: bool,
                 links: LinkPlan | None = None):
        self.owner = owner
        self.timestamp_ns = timestamp_ns
        self.mode = mode
        self.mode_fn = mode_fn
        self.filter = path_filter
        self.always_replace = always_replace
        self.links = links
        self.inodes: dict[tuple[int, int], str] = {}
        self.parents: list[list[Any]] = []  # [src, dst, created]

    def copy(self, src: str, rel: str, target: str, overwrite_meta: bool) -> None:
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise BuildError(f'"{src}": not found') from None
        is_dir = stat.S_ISDIR(st.st_mode)
        include, descend = True, is_dir
        if rel and self.filter is not None:
            include, descend = self.filter.verdict(rel, is_dir)
            if not include and not descend:
                return
        try:
            target_st: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            target_st = None
        if include:
            if (self.always_replace and target_st is not None
                    and not (is_dir and stat.S_ISDIR(target_st.st_mode))):
                remove_path(target)
                target_st = None
            self._create_parents(overwrite_meta)
        if not is_dir and target_st is not None:
            if stat.S_ISDIR(target_st.st_mode):
                raise BuildError(f"cannot replace directory {target} with a file")
            os.unlink(target)
        if self.links is not None:
            self.links.discard(target)
        copy_info = include
        restore_times = False
        if is_dir:
            created = self._copy_dir(src, rel, target, st, overwrite_meta, include)
            if not overwrite_meta:
                copy_info = created
                restore_times = not created
        elif stat.S_ISREG(st.st_mode) and self.links is not None and self._keeps_info(st):
            self.links.add(src, target)  # every name of one inode: linked together, as in src
            copy_info = False
        elif stat.S_ISREG(st.st_mode):
            link_to = None
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                link_to = self.inodes.get(key)
                if link_to is None:
                    self.inodes[key] = target
            if link_to is not None:
                os.link(link_to, target)
            else:
                copy_file_data(src, target)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(
                st.st_mode) or stat.S_ISSOCK(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
        else:  # pragma: no cover - no other file types on Linux
            raise BuildError(f"unsupported file type: {src}")
        if copy_info:
            self._copy_info(st, target)
            _copy_xattrs(src, target)
        elif restore_times and target_st is not None:
            self._copy_times(st, target)

    def _copy_dir(self, src: str, rel: str, dst: str, st: os.stat_result, overwrite_meta: bool,
                  include: bool) -> bool:
        created = False
        if include:
            created = _copy_dir_only(dst, st, overwrite_meta)
        self.parents.append([src, dst, include])
        try:
            for name in sorted(os.listdir(src)):
                self.copy(os.path.join(src, name), f"{rel}/{name}" if rel else name,
                          os.path.join(dst, name), True)
        finally:
            self.parents.pop()
        return created

    def _create_parents(self, overwrite_meta: bool) -> None:
        for entry in self.parents:
            if entry[2]:
                continue
            src, dst = entry[0], entry[1]
            st = os.stat(src)
            if _copy_dir_only(dst, st, overwrite_meta):
                self._copy_info(st, dst)
                _copy_xattrs(src, dst)
            entry[2] = True

    def _keeps_info(self, st: os.stat_result) -> bool:
        """Whether a copy of this file would get exactly its owner, mode and times."""
        if self.owner is not None and self.owner != (st.st_uid, st.st_gid):
            return False
        if self.owner is None and os.geteuid() != 0:
            return False  # the copy would be owned by this user
        mode = stat.S_IMODE(st.st_mode)
        if self.mode is not None and (mode & ~0o777) | (self.mode & 0o777) != mode:
            return False
        if self.mode_fn is not None and self.mode_fn(mode, False) != mode:
            return False
        return self.timestamp_ns is None or self.timestamp_ns == st.st_mtime_ns == st.st_atime_ns

    def _copy_info(self, st: os.stat_result, target: str) -> None:
        owner = self.owner if self.owner is not None else (st.st_uid, st.st_gid)
        if self.owner is not None or os.geteuid() == 0:
            _chown(target, owner)
        if not stat.S_ISLNK(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
            if self.mode is not None:
                mode = (mode & ~0o777) | (self.mode & 0o777)
            elif self.mode_fn is not None:
                mode = self.mode_fn(mode, stat.S_ISDIR(st.st_mode))
            os.chmod(target, mode)
        self._copy_times(st, target)

    def _copy_times(self, st: os.stat_result, target: str) -> None:
        if self.timestamp_ns is not None:
            _set_times(target, self.timestamp_ns, self.timestamp_ns)
        else:
            _set_times(target, st.st_atime_ns, st.st_mtime_ns)


def _copy_dir_only(dst: str, st: os.stat_result, overwrite_meta: bool) -> bool:
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        os.mkdir(dst, stat.S_IMODE(st.st_mode) | 0o700)
        return True
    if not stat.S_ISDIR(dst_st.st_mode):
        raise BuildError(f"cannot copy to non-directory: {dst}")
    if overwrite_meta:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    return False


def remove_path(path: str) -> None:
    """Remove a file, symlink or whole directory tree; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# --------------------------------------------------------------------------------------------
# Docker-compatible unpacking of local archives (ADD)
# --------------------------------------------------------------------------------------------

_MAGIC = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _open_decompressed(f: Any) -> Any:
    """``f`` itself, or a reader decompressing it (gzip, bzip2, xz, zstd by magic bytes)."""
    import bz2
    import gzip
    import lzma

    head = f.read(6)
    f.seek(0)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            if kind == "gzip":
                return gzip.GzipFile(fileobj=f)
            if kind == "bzip2":
                return bz2.BZ2File(f)
            if kind == "xz":
                return lzma.LZMAFile(f)
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(f)
    return f


def _is_archive(host_path: str) -> bool:
    import lzma
    import tarfile

    try:
        if not stat.S_ISREG(os.lstat(host_path).st_mode):
            return False
        with open(host_path, "rb") as f:
            stream = _open_decompressed(f)
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                return tf.next() is not None
    except (OSError, EOFError, tarfile.TarError, lzma.LZMAError, ValueError):
        return False
    except Exception as e:  # zstandard raises its own error type
        if type(e).__module__.startswith("zstandard"):
            return False
        raise


def _unpack(src_root: str, src: str, dest_root: str, dest: str, owner: tuple[int, int] | None,
            timestamp_ns: int | None) -> bool:
    import tarfile

    src_host = _root_path(src_root, src, True)
    if not _is_archive(src_host):
        return False
    dest_host = resolve_in_root(dest_root, norm_path(dest))
    mkdir_all(dest_host, 0o755, owner, timestamp_ns)
    with open(src_host, "rb") as f, tarfile.open(fileobj=_open_decompressed(f), mode="r|") as tf:
        extract_tar(tf, dest_host)
    return True


def extract_tar(tf: tarfile.TarFile, dest: str) -> None:
    """Extract an open tar stream into ``dest`` like Docker's untar, confined to ``dest``.

    Entries keep their uid/gid, mode, mtime and xattrs; ``..`` names and hardlinks or symlinks
    reaching outside ``dest`` are refused; an existing entry is replaced unless both are dirs.
    """
    dir_times: list[tuple[str, int]] = []
    is_root = os.geteuid() == 0
    for member in tf:
        if _escapes("", member.name.lstrip("/")):
            raise BuildError(f"invalid tar entry {member.name!r}: outside the destination")
        name = posixpath.normpath("/" + member.name).lstrip("/")
        if not name:
            continue
        parent = resolve_in_root(dest, posixpath.dirname(name))
        mkdir_all(parent, 0o755, None, None)
        path = os.path.join(parent, posixpath.basename(name))
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            remove_path(path)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(path, 0o700)
        elif member.isreg():
            source = tf.extractfile(member)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        elif member.issym():
            if not member.linkname.startswith("/") and _escapes(posixpath.dirname(name),
                                                                member.linkname):
                raise BuildError(f"invalid symlink {member.name!r} -> {member.linkname!r}")
            os.symlink(member.linkname, path)
        elif member.islnk():
            if _escapes("", member.linkname.lstrip("/")):
                raise BuildError(f"invalid hardlink {member.name!r} -> {member.linkname!r}")
            link_name = posixpath.normpath("/" + member.linkname).lstrip("/")
            os.link(resolve_in_root(dest, link_name, follow_final=False), path)
            continue
        elif member.ischr() or member.isblk() or member.isfifo():
            if not is_root and not member.isfifo():
                continue
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else \
                stat.S_IFIFO
            os.mknod(path, kind | (member.mode & 0o7777), os.makedev(member.devmajor,
                                                                     member.devminor))
        else:
            continue
        if is_root:
            os.lchown(path, member.uid, member.gid)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        for key, value in (member.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr."):
                with contextlib.suppress(OSError):
                    os.setxattr(path, key[len("SCHILY.xattr."):], value.encode("utf-8",
                                "surrogateescape"), follow_symlinks=False)
        mtime_ns = int(member.mtime * 1_000_000_000)
        if member.isdir():
            dir_times.append((path, mtime_ns))
        else:
            _set_times(path, mtime_ns, mtime_ns)
    for path, mtime_ns in reversed(dir_times):
        _set_times(path, mtime_ns, mtime_ns)


def _escapes(base_dir: str, link: str) -> bool:
    depth = len([c for c in base_dir.split("/") if c and c != "."])
    for comp in link.split("/"):
        if comp in ("", "."):
            continue
        depth = depth - 1 if comp == ".." else depth + 1
        if depth < 0:
            return True
    return False


# --------------------------------------------------------------------------------------------
# mkfile, mkdir, rm, symlink
# --------------------------------------------------------------------------------------------


def mkfile(root: str, path: str, mode: int, data: bytes, owner: Any = None,
           timestamp: int | None = None, *, owner_root: str | None = None) -> None:
    """FileActionMkFile: write ``data`` to ``path`` (parent must exist) with mode and owner."""
    with _user_errors(f"mkfile {path}", root):
        _mkfile(root, path, mode, data, owner, timestamp, owner_root)


def _mkfile(root: str, path: str, mode: int, data: bytes, owner: Any = None,
           timestamp: int | None = None, owner_root: str | None = None) -> None:
    owner_ids = resolve_owner(owner, owner_root or root)
    host = resolve_in_root(root, norm_path(path))
    if host == os.path.abspath(root) or os.path.isdir(host):
        raise BuildError(f"mkfile {norm_path(path)}: is a directory")
    if not os.path.isdir(os.path.dirname(host)):
        raise BuildError(f"mkfile {norm_path(path)}: parent directory does not exist")
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(host, (_mode_value(mode) or 0) & 0o777)
    _chown(host, owner_ids)
    ts = _timestamp(timestamp)
    if ts is not None:
        _set_times(host, ts, ts)


def mkdir(root: str, path: str, mode: int, make_parents: bool = False, owner: Any = None,
          timestamp: int | None = None, *, owner_root: str | None = None) -> None:
    """FileActionMkDir: create ``path``; with ``make_parents`` also missing parents (same mode).

    An existing directory is left alone.
    """
    with _user_errors(f"mkdir {path}", root):
        _mkdir(root, path, mode, make_parents, owner, timestamp, owner_root)


def _mkdir(root: str, path: str, mode: int, make_parents: bool = False, owner: Any = None,
          timestamp: int | None = None, owner_root: str | None = None) -> None:
    owner_ids = resolve_owner(owner, owner_root or root)
    host = resolve_in_root(root, norm_path(path))
    mode_bits = (_mode_value(mode) or 0) & 0o777
    ts = _timestamp(timestamp)
    if make_parents:
        mkdir_all(host, mode_bits, owner_ids, ts)
        return
    try:
        os.mkdir(host, mode_bits)
    except FileExistsError:
        return
    except FileNotFoundError:
        raise BuildError(f"mkdir {norm_path(path)}: parent directory does not exist") from None
    os.chmod(host, mode_bits)
    _chown(host, owner_ids)
    if ts is not None:
        _set_times(host, ts, ts)


def rm(root: str, path: str, allow_not_found: bool = False, allow_wildcard: bool = False) -> None:
    """FileActionRm: remove ``path`` (recursively; a symlink itself, never its target)."""
    with _user_errors(f"rm {path}", root):
        _rm(root, path, allow_not_found, allow_wildcard)


def _rm(root: str, path: str, allow_not_found: bool = False, allow_wildcard: bool = False) -> None:
    if allow_wildcard:
        for match in resolve_wildcards(root, clean_path(path)):
            _rm_path(root, match, allow_not_found)
        return
    _rm_path(root, path, allow_not_found)


def _rm_path(root: str, path: str, allow_not_found: bool) -> None:
    cleaned = norm_path(path)
    if cleaned == "/":
        raise BuildError("rm: refusing to remove the root directory")
    host = resolve_in_root(root, cleaned, follow_final=False)
    if not os.path.lexists(host):
        if allow_not_found:
            return
        raise BuildError(f'rm "{cleaned}": not found')
    remove_path(host)


def symlink(root: str, oldpath: str, newpath: str, owner: Any = None,
            timestamp: int | None = None, *, owner_root: str | None = None) -> None:
    """FileActionSymlink: create ``newpath`` pointing at ``oldpath`` (stored verbatim)."""
    with _user_errors(f"symlink {newpath}", root):
        _symlink(root, oldpath, newpath, owner, timestamp, owner_root)


def _symlink(root: str, oldpath: str, newpath: str, owner: Any = None,
            timestamp: int | None = None, owner_root: str | None = None) -> None:
    owner_ids = resolve_owner(owner, owner_root or root)
    host = resolve_in_root(root, norm_path(newpath), follow_final=False)
    try:
        os.symlink(oldpath, host)
    except FileExistsError:
        raise BuildError(f"symlink {norm_path(newpath)}: file exists") from None
    except FileNotFoundError:
        raise BuildError(f"symlink {norm_path(newpath)}: parent directory does not exist") from None
    _chown(host, owner_ids)
    ts = _timestamp(timestamp)
    if ts is not None:
        _set_times(host, ts, ts)

