"""Incremental mirror of a client directory (``local://NAME``) into the store's copy.

The walk skips excluded directories without reading them and, with include patterns or follow
paths, never enters directories that cannot hold a selected file. Each entry's lstat is compared
with the state of the previous sync; only entries whose ``(mode, size, mtime_ns, inode, dev)``
changed are copied; the destination side (temporary names renamed into place, removals,
directory modes and mtimes, 0:0 owners, the state file) is :mod:`pybk.core.fs.mirror`, shared
with the remote sync (:mod:`pybk.core.remote.filesync`), which also shares this module's walk
(:func:`context_filter`, :func:`walk_context`).

Hardlinks are kept: names of one source inode (among the synced entries) become names of one
destination file. Because the inode is part of each entry's state and changed entries are always
replaced, never written in place, a link made or broken in the source is mirrored by the next
sync.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from pybk.core.errors import BuildError
from pybk.core.fs.files import copy_fd_data
from pybk.core.fs.mirror import Mirror, SyncStats, make_file, run_mirror
from pybk.core.fs.pathfilter import PathFilter
from pybk.core.fs.rootpath import resolve_in_root
from pybk.core.model import Model, field

__all__ = ["ContextSurvey", "SyncStats", "context_filter", "follow_targets", "survey_context",
           "sync_local", "transfer_report", "walk_context"]

#: 3: owners before modes (set-id bits kept), failed syncs save dirty marks
_STATE_VERSION = 3

#: ``visit(rel, host_path, lstat, is_dir)``
Visitor = Callable[[str, str, os.stat_result, bool], None]


def follow_targets(root: str, follow_paths: Sequence[str]) -> list[str]:
    """The follow paths plus each symlink hop met resolving them (relative to ``root``)."""
    out: list[str] = []
    for path in follow_paths:
        current = os.path.normpath("/" + path)
        for _ in range(256):
            rel = os.path.relpath(current, "/")
            if rel == "." or rel in out:
                break
            out.append(rel)
            host = os.path.join(root, rel)
            if not os.path.islink(host):
                break
            target = os.readlink(host)
            joined = target if target.startswith("/") else \
                os.path.join(os.path.dirname(current), target)
            resolved = resolve_in_root(root, joined, follow_final=False)
            current = "/" + os.path.relpath(resolved, root)
    return out


def context_filter(root: str, include_patterns: Sequence[str] = (),
                   exclude_patterns: Sequence[str] = (),
                   follow_paths: Sequence[str] = ()) -> PathFilter | None:
    """The filter selecting a context's entries: the include patterns, plus (with follow paths)
    the follow paths and their symlink hops; ``None`` when everything is selected."""
    includes = list(include_patterns)
    if follow_paths:
        includes.extend(follow_targets(root, follow_paths))
    return PathFilter.create(includes, list(exclude_patterns))


def walk_context(root: str, path_filter: PathFilter | None, visit: Visitor) -> None:
    """Call ``visit`` for each selected entry under ``root`` (not for ``root`` itself), a
    directory before its content, in ``scandir`` order.

    An excluded directory is not read unless a selected entry may be inside (a re-included
    path, an include pattern reaching into it); such a directory is visited (as a parent)
    only when something inside it is. Every kind of entry is visited: what to do with
    sockets, fifos and devices is the caller's.
    """
    _walk(root, "", [], path_filter, visit)


def _walk(host: str, rel: str, pending: list[tuple[str, str, os.stat_result]],
          path_filter: PathFilter | None, visit: Visitor) -> bool:
    """Walk directory ``host`` (``rel`` in the tree); True when anything of it was visited.

    ``pending`` holds ancestors not visited yet (they are, just before a selected child).
    """
    kept_any = False
    try:
        it = os.scandir(host)
    except PermissionError as e:
        raise BuildError(f"cannot read {rel or '.'} of the local context: {e.strerror}") from None
    with it:
        for entry in it:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            keep, descend = True, is_dir
            if path_filter is not None:
                keep, descend = path_filter.verdict(child_rel, is_dir)
                if not keep and not descend:
                    continue
            st = entry.stat(follow_symlinks=False)
            if is_dir and not keep:
                if _walk(entry.path, child_rel, [*pending, (child_rel, entry.path, st)],
                         path_filter, visit):
                    kept_any = True
                    pending = []
                continue
            for pending_rel, pending_host, pending_st in pending:
                visit(pending_rel, pending_host, pending_st, True)
            pending = []
            kept_any = True
            visit(child_rel, entry.path, st, is_dir)
            if is_dir:
                _walk(entry.path, child_rel, [], path_filter, visit)
    return kept_any


def _record(kind: str, st: os.stat_result) -> list:
    return [kind, st.st_mode, st.st_size if kind != "d" else 0, st.st_mtime_ns, st.st_ino,
            st.st_dev]


class _LocalSource:
    """Hands the entries of one walk of the source to the mirror."""

    def __init__(self, mirror: Mirror):
        self.mirror = mirror
        self.old = mirror.old
        #: (dev, inode) of a multiply linked source file -> the first synced name of it
        self._link_groups: dict[tuple[int, int], str] = {}
        #: first names of multiply linked files copied by this sync (a new inode: the other
        #: names are linked to it again, even unchanged ones)
        self._made_first: set[str] = set()

    def visit(self, rel: str, host: str, st: os.stat_result, is_dir: bool) -> None:
        if is_dir:
            self.mirror.dir(rel, _record("d", st))
            return
        mode = st.st_mode
        if stat.S_ISREG(mode):
            record = _record("f", st)
        elif stat.S_ISLNK(mode):
            record = _record("l", st)
        else:
            return  # sockets, fifos and devices are not transferred
        first_name = None
        if st.st_nlink > 1 and record[0] == "f":
            first_name = self._link_groups.setdefault((st.st_dev, st.st_ino), rel)
            if first_name == rel:
                first_name = None
        if self.old.get(rel) == record and (first_name is None or
                                            first_name not in self._made_first):
            self.mirror.keep(rel, record)
        elif first_name is not None:
            self.mirror.link(rel, record, first_name)
        elif record[0] == "l":
            self.mirror.symlink(rel, record, os.readlink(host), st.st_atime_ns)
        else:
            self.mirror.place(rel, record, lambda path: self._copy(host, path, st))
            if st.st_nlink > 1:
                self._made_first.add(rel)

    def _copy(self, host: str, path: str, st: os.stat_result) -> int:
        in_fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return make_file(path, st.st_mode, st.st_atime_ns, st.st_mtime_ns,
                             lambda fd: copy_fd_data(in_fd, fd), self.mirror.as_root)
        finally:
            os.close(in_fd)


def sync_local(src_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *,
               include_patterns: Sequence[str] = (), exclude_patterns: Sequence[str] = (),
               follow_paths: Sequence[str] = (),
               state_file: str | os.PathLike[str],
               on_copied: Callable[[str], None] | None = None) -> SyncStats:
    """Make ``dest_dir`` mirror the selected part of ``src_dir``, copying only what changed.

    ``include_patterns``/``exclude_patterns``: BuildKit patternmatcher patterns (an excluded
    directory is not read). ``follow_paths``: only these paths (their parents, and the targets of
    symlinks among them) are transferred, in addition to ``include_patterns``. ``on_copied``
    is given the relative path of each regular file copied, once it is complete.
    """
    src = os.path.realpath(os.fspath(src_dir))
    dest = os.path.abspath(os.fspath(dest_dir))
    if not os.path.isdir(src):
        raise BuildError(f"local context {os.fspath(src_dir)}: not a directory")
    path_filter = context_filter(src, include_patterns, exclude_patterns, follow_paths)

    def fill(mirror: Mirror) -> None:
        mirror.dir("", _record("d", os.stat(src)))
        walk_context(src, path_filter, _LocalSource(mirror).visit)

    try:
        return run_mirror(dest, os.fspath(state_file), _STATE_VERSION, fill, on_copied)
    except OSError as e:
        raise BuildError(f"syncing local context {os.fspath(src_dir)}: {e}") from None


# -- the context report ---------------------------------------------------------------------

#: the share of the context's bytes outside every COPY/ADD source above which the report hints
#: at .dockerignore
UNUSED_HINT_SHARE = 0.5


class ContextSurvey(Model, frozen=False):
    """What a context holds, from the build's point of view (:func:`survey_context`). Files are
    regular files and symlinks (sockets, fifos and devices are never transferred); bytes are
    their sizes. An excluded directory that is not read is one entry of unknown size."""

    #: (rel, size) of the files selected and copied by the sync (all selected: no sync)
    sent: list[tuple[str, int]] = field(factory=list)
    #: (rel, size) of the files selected but unchanged since the last sync
    unchanged: list[tuple[str, int]] = field(factory=list)
    #: (rel, size) of the files outside every COPY/ADD source (the follow paths)
    unused: list[tuple[str, int]] = field(factory=list)
    #: (rel, size, pattern) of the entries excluded by the exclude (.dockerignore) patterns;
    #: a directory not read is ``rel + "/ (not read)"`` with size -1
    ignored: list[tuple[str, int, str]] = field(factory=list)

    @staticmethod
    def _bytes(entries: Sequence[tuple]) -> int:
        return sum(max(e[1], 0) for e in entries)

    def by_pattern(self) -> dict[str, tuple[int, int, list[str]]]:
        """pattern -> (entries, bytes, the directories not read), in pattern order of first
        use."""
        out: dict[str, tuple[int, int, list[str]]] = {}
        for rel, size, pattern in self.ignored:
            count, total, unread = out.get(pattern, (0, 0, []))
            if size < 0:
                unread = [*unread, rel]
            out[pattern] = (count + 1, total + max(size, 0), unread)
        return out

    def unused_share(self) -> float:
        """The share of the bytes not ignored that no COPY/ADD uses."""
        total = self._bytes(self.sent) + self._bytes(self.unchanged) + self._bytes(self.unused)
        return self._bytes(self.unused) / total if total else 0.0

    def lines(self, *, synced: bool = True) -> list[str]:
        """The report: totals, ignored entries per pattern, the largest files sent, a hint."""
        b = self._bytes
        entries = len(self.sent) + len(self.unchanged) + len(self.unused) + len(self.ignored)
        considered = b(self.sent) + b(self.unchanged) + b(self.unused) + b(self.ignored)
        verb = "sent" if synced else "to send"
        out = [f"context: {entries} entries ({considered} bytes) considered: "
               f"{len(self.sent)} {verb} ({b(self.sent)} bytes), "
               + (f"{len(self.unchanged)} unchanged ({b(self.unchanged)} bytes), "
                  if synced else "")
               + f"{len(self.unused)} not used by any COPY/ADD ({b(self.unused)} bytes), "
               f"{len(self.ignored)} ignored ({b(self.ignored)} bytes)"]
        for pattern, (count, total, unread) in self.by_pattern().items():
            noun = "entry" if count == 1 else "entries"
            size = "" if len(unread) == count else f" ({total} bytes)"
            shown = f": {', '.join(unread)}" if unread else ""
            out.append(f"context: ignored by .dockerignore pattern {pattern!r}: {count} {noun}"
                       f"{size}{shown}")
        largest = sorted(self.sent, key=lambda e: (-e[1], e[0]))[:5]
        if largest:
            out.append(f"context: largest files {verb}: "
                       + ", ".join(f"{rel} ({size} bytes)" for rel, size in largest))
        share = self.unused_share()
        if share > UNUSED_HINT_SHARE:
            out.append(f"hint: {int(share * 100)}% of the context's bytes are not used by any "
                       "COPY/ADD; add them to .dockerignore")
        return out


def survey_context(root: str, include_patterns: Sequence[str] = (),
                   exclude_patterns: Sequence[str] = (), follow_paths: Sequence[str] = (),
                   sent: Sequence[str] | None = None) -> ContextSurvey:
    """Classify every entry of the context ``root`` as :func:`sync_local` selects it: ignored
    (by which exclude pattern; an excluded directory the sync would not read is not read here
    either), outside the include patterns and follow paths (unused), or selected: ``sent``
    (the paths a sync copied, :attr:`SyncStats.sent`) or unchanged. ``sent=None``: every
    selected file counts as sent."""
    exclude = PathFilter(exclude_patterns=exclude_patterns).exclude if exclude_patterns else None
    root = os.path.realpath(root)
    select = context_filter(root, include_patterns, (), follow_paths)
    copied = None if sent is None else set(sent)
    survey = ContextSurvey()

    def walk(host: str, rel: str, unused: bool) -> None:
        # ``unused``: no entry below can be selected (the sync does not enter this directory)
        try:
            entries = sorted(os.scandir(host), key=lambda e: e.name)
        except PermissionError as e:
            raise BuildError(f"cannot read {rel or '.'} of the local context: "
                             f"{e.strerror}") from None
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if exclude is not None and exclude.matches(child):
                if is_dir and exclude.can_skip_dir(child):
                    survey.ignored.append((child + "/ (not read)", -1,
                                           exclude.deciding_pattern(child) or ""))
                    continue
                if is_dir:
                    walk(entry.path, child, unused)
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    survey.ignored.append((child, st.st_size,
                                           exclude.deciding_pattern(child) or ""))
                continue
            if is_dir:
                below = unused or (select is not None and not any(select.verdict(child, True)))
                walk(entry.path, child, below)
                continue
            st = entry.stat(follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            item = (child, st.st_size)
            if unused or (select is not None and not select.verdict(child, False)[0]):
                survey.unused.append(item)
            elif copied is None or child in copied:
                survey.sent.append(item)
            else:
                survey.unchanged.append(item)

    walk(root, "", False)
    return survey


def transfer_report(root: str, include_patterns: Sequence[str], exclude_patterns: Sequence[str],
                    follow_paths: Sequence[str], stats: SyncStats) -> list[str]:
    """The report lines after a sync of ``root`` (:func:`survey_context`'s); a sync that sent
    and removed nothing (a warm build) gets one line and no second walk of the context."""
    if not (stats.copied or stats.removed):
        return [f"context: nothing sent, {stats.unchanged} files unchanged since the last sync"]
    return survey_context(root, include_patterns, exclude_patterns, follow_paths,
                          stats.sent).lines()
