"""Paths inside a root directory that stands for ``/``, and Go ``filepath.Match`` wildcards.

``..`` stops at the root and a symlink met on the way (``/etc -> /usr/etc``, ``x -> ../../..``)
is followed within the root, never out of it. Messages about such paths name them as seen from
inside the root.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from functools import lru_cache

from pybk.core.errors import BuildError

_MAX_SYMLINKS = 255

__all__ = ["clean_path", "has_wildcards", "norm_path", "resolve_in_root", "resolve_wildcards", "root_path",
           "user_errors"]


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


def root_path(root: str, path: str, follow: bool) -> str:
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
def user_errors(action: str, *roots: str):
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


def has_wildcards(component: str) -> bool:
    """Whether a path component holds ``filepath.Match`` wildcards (``\\`` escapes one)."""
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
    split = next((i for i, c in enumerate(comps) if has_wildcards(c)), None)
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
