"""Incremental sync of a client's directory to a remote daemon (fsutil's model), transport-free.

The client lists its build context (:func:`stat_tree`: one entry per directory, file and symlink,
selected by the same patterns and the same walk as :func:`pybk.core.fs.localsync.sync_local`)
and serves the content of the files it listed (:class:`FileServer`). The daemon compares the
list with what it received last time and asks, in one request, for the files that changed
(:func:`apply_tree`); the destination then holds what ``sync_local`` of the same directory
would make (same names, kinds, modes, mtimes, symlinks, hardlinks; 0:0 owners when root), by
the same code (:mod:`pybk.core.fs.mirror`).

Nothing here talks to a network: the daemon's side gets the transport as ``fetch(rels)``, an
iterator of ``(rel, chunk)``; the client's side is ``FileServer(...).read``. What crosses is
JSON-able (lists, str, int) plus the chunks (bytes).

An entry is ``[rel, kind, mode, size, mtime_ns, target, group]``:

- ``rel``: ``/``-separated path relative to the context; the first entry is the context's
  root, ``"."``; every other entry's parent is a directory listed before it;
- ``kind``: ``"d"`` (directory), ``"f"`` (regular file) or ``"l"`` (symlink); sockets, fifos
  and devices are not listed;
- ``mode``: the permission bits (``0o7777``); ``size``: bytes (0 for directories);
  ``mtime_ns``: the modification time; ``target``: a symlink's target (``""`` otherwise);
- ``group``: for a file with other names among the entries (hardlinks), the ``rel`` of the
  first of them (so all names of one inode share it); ``""`` otherwise.

Each side distrusts the other. The daemon checks the list before touching anything (clean
relative names, no duplicates, parents listed as directories, known kinds, sane numbers; a
hardlink may only name an earlier listed file) and never writes through a symlink; file
contents must have the size listed. The client sends only files it listed, opened from its
root one directory at a time without following symlinks (a directory swapped for a symlink
since the listing is refused).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence

from pybk.core.errors import BuildError, InputError
from pybk.core.fs.localsync import context_filter, walk_context
from pybk.core.fs.mirror import Mirror, SyncStats, make_file, run_mirror

__all__ = ["CHUNK_SIZE", "FileServer", "SyncStats", "apply_tree", "check_entries", "stat_tree"]

#: the largest chunk a :class:`FileServer` sends
CHUNK_SIZE = 1 << 20
#: the daemon's state file format (distinct from the local sync's: one is never taken for the
#: other)
_STATE_VERSION = "remote-1"
_KINDS = ("d", "f", "l")
_MAX_INT = 1 << 63

#: ``fetch(rels)``: the content of each requested file, as ``(rel, chunk)`` pairs
Fetch = Callable[[list[str]], Iterable[tuple[str, bytes]]]


# --------------------------------------------------------------------------------------------
# the client's side
# --------------------------------------------------------------------------------------------


def stat_tree(root: str | os.PathLike[str], *, include: Sequence[str] = (),
              exclude: Sequence[str] = (), follow: Sequence[str] = ()) -> list[list]:
    """The entries of the context at ``root`` selected by ``include``/``exclude`` (BuildKit
    patternmatcher patterns) and ``follow`` (only these paths, their parents and the targets of
    symlinks among them, in addition to ``include``), as ``sync_local`` selects them: an
    excluded directory is not read."""
    src = os.path.realpath(os.fspath(root))
    if not os.path.isdir(src):
        raise BuildError(f"local context {os.fspath(root)}: not a directory")
    root_st = os.stat(src)
    entries: list[list] = [[".", "d", stat.S_IMODE(root_st.st_mode), 0, root_st.st_mtime_ns,
                            "", ""]]
    first_names: dict[tuple[int, int], str] = {}

    def visit(rel: str, host: str, st: os.stat_result, is_dir: bool) -> None:
        mode = st.st_mode
        if is_dir:
            entries.append([rel, "d", stat.S_IMODE(mode), 0, st.st_mtime_ns, "", ""])
        elif stat.S_ISREG(mode):
            group = first_names.setdefault((st.st_dev, st.st_ino), rel) \
                if st.st_nlink > 1 else ""
            entries.append([rel, "f", stat.S_IMODE(mode), st.st_size, st.st_mtime_ns, "", group])
        elif stat.S_ISLNK(mode):
            entries.append([rel, "l", stat.S_IMODE(mode), st.st_size, st.st_mtime_ns,
                            os.readlink(host), ""])

    try:
        walk_context(src, context_filter(src, include, exclude, follow), visit)
    except OSError as e:
        raise BuildError(f"listing local context {os.fspath(root)}: {e}") from None
    return entries


class FileServer:
    """Serves the content of the regular files listed in ``entries`` (and of nothing else)."""

    def __init__(self, root: str | os.PathLike[str], entries: Iterable[Sequence]):
        self.root = os.path.realpath(os.fspath(root))
        self._sizes = {e[0]: e[3] for e in entries if e[1] == "f"}

    def read(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """``(rel, chunk)`` for each file of ``rels`` in turn: its content in chunks of at most
        :data:`CHUNK_SIZE` bytes (one empty chunk for an empty file). A name not listed as a
        file, a file whose path now goes through a symlink or is not a regular file, or whose
        size is not the one listed (it changed meanwhile) stops the transfer with an error."""
        parent_fd: tuple[str, int] | None = None  # the last directory opened (siblings follow)
        try:
            for rel in rels:
                size = self._sizes.get(rel) if isinstance(rel, str) else None
                if size is None:
                    raise BuildError(f"refusing to send {rel!r}: not a file listed to the daemon")
                parent, _, name = rel.rpartition("/")
                if parent_fd is None or parent_fd[0] != parent:
                    if parent_fd is not None:
                        os.close(parent_fd[1])
                        parent_fd = None
                    parent_fd = (parent, self._open_dir(rel, parent))
                yield from self._send(rel, name, parent_fd[1], size)
        finally:
            if parent_fd is not None:
                os.close(parent_fd[1])

    def _open_dir(self, rel: str, parent: str) -> int:
        """An fd of directory ``parent``, opened from the root without following symlinks."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in parent.split("/") if parent else ():
                if comp in ("", ".", ".."):
                    raise BuildError(f"refusing to send {rel!r}: not a clean relative path")
                next_fd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except OSError as e:
            os.close(fd)
            raise self._refused(rel, e) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refused(self, rel: str, e: OSError) -> BuildError:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return BuildError(f"refusing to send {rel!r}: its path now goes through a symlink "
                              "or a non-directory")
        return BuildError(f"cannot send {rel!r}: {e.strerror or e}")

    def _send(self, rel: str, name: str, dir_fd: int, size: int) -> Iterator[tuple[str, bytes]]:
        if name in ("", ".", ".."):
            raise BuildError(f"refusing to send {rel!r}: not a clean relative path")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as e:
            raise self._refused(rel, e) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BuildError(f"refusing to send {rel!r}: no longer a regular file")
            sent = 0
            while True:
                chunk = os.read(fd, min(CHUNK_SIZE, size + 1 - sent))
                if not chunk:
                    break
                sent += len(chunk)
                if sent > size:
                    break
                yield rel, chunk
            if sent != size:
                raise BuildError(f"{rel}: changed while the build context was being sent "
                                 f"({size} bytes listed); try again")
            if size == 0:
                yield rel, b""
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# the daemon's side
# --------------------------------------------------------------------------------------------


def _bad(index: int, entry: object, why: str) -> InputError:
    shown = repr(entry)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return InputError(f"invalid entry {index} of the build context's file list {shown}: {why}")


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value < high


def _check_rel(rel: object) -> str | None:
    """Why ``rel`` is not a clean relative path (``None`` when it is)."""
    if not isinstance(rel, str) or not rel:
        return "the name is empty or not a string"
    if "\0" in rel:
        return "the name holds a NUL byte"
    if rel.startswith("/"):
        return "the name is an absolute path"
    if any(comp in ("", ".", "..") for comp in rel.split("/")):
        return "the name has an empty, '.' or '..' component"
    return None


def check_entries(entries: object) -> list[tuple[str, list]]:
    """Check a client's list of entries (untrusted) and return ``(rel, record)`` pairs, the
    root as ``""``. ``record`` is ``[kind, mode, size, mtime_ns, target, first_name]``, where
    ``first_name`` is the hardlink group for the other names of a file, ``""`` for the first
    one (or a file with no other names). Raises :class:`InputError` naming the first problem."""
    if not isinstance(entries, list | tuple) or not entries:
        raise InputError("the build context's file list is empty")
    kinds: dict[str, str] = {}
    leaders: set[str] = set()  # files listed as the first name of their hardlink group
    out: list[tuple[str, list]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, list | tuple) or len(entry) != 7:
            raise _bad(index, entry, "not a list of 7 fields")
        rel, kind, mode, size, mtime_ns, target, group = entry
        if index == 0:
            if rel != "." or kind != "d":
                raise _bad(index, entry, "the first entry is not the root directory '.'")
            rel = ""
        else:
            why = _check_rel(rel)
            if why is not None:
                raise _bad(index, entry, why)
            if rel in kinds:
                raise _bad(index, entry, "listed twice")
            if kinds.get(rel.rpartition("/")[0]) != "d":
                raise _bad(index, entry, "its parent is not a directory listed before it")
        if kind not in _KINDS:
            raise _bad(index, entry, f"unknown kind {kind!r}")
        if not _is_int(mode, 0, 0o10000):
            raise _bad(index, entry, "the mode is not an integer in 0..0o7777")
        if not _is_int(size, 0, _MAX_INT) or (kind == "d" and size != 0):
            raise _bad(index, entry, "the size is not a valid integer")
        if not _is_int(mtime_ns, -_MAX_INT, _MAX_INT):
            raise _bad(index, entry, "the mtime is not a valid integer")
        if not isinstance(target, str) or (kind == "l") != bool(target) or "\0" in target:
            raise _bad(index, entry, "a symlink needs a target (without NUL), other kinds none")
        if not isinstance(group, str) or (group and kind != "f"):
            raise _bad(index, entry, "only a regular file may have a hardlink group")
        first = ""
        if group == rel:
            leaders.add(rel)
        elif group:
            if group not in leaders:
                raise _bad(index, entry, "its hardlink group is not the name of a file listed "
                           "before it (as the first of its group)")
            first = group
        kinds[rel] = kind
        out.append((rel, [kind, mode, size, mtime_ns, target, first]))
    return out


class _Incoming:
    """The stream of ``(rel, chunk)`` pairs from ``fetch``, one file after the other.

    A file is complete once it has its listed size (the next pair is not waited for): what
    goes wrong after that is not the file's fault.
    """

    def __init__(self, chunks: Iterable[tuple[str, bytes]]):
        self._chunks = chunks
        self._it = iter(chunks)
        self._head: tuple[str, bytes] | None = None
        self._ended = False

    def peek(self) -> tuple[str, bytes] | None:
        """The next pair, not consumed (``None`` at the end of the stream)."""
        if self._head is None and not self._ended:
            item = next(self._it, None)
            if item is None:
                self._ended = True
                return None
            if not isinstance(item, tuple | list) or len(item) != 2 or \
                    not isinstance(item[0], str) or \
                    not isinstance(item[1], bytes | bytearray | memoryview):
                raise InputError("the client sent something else than (name, bytes) pairs")
            self._head = (item[0], item[1])
        return self._head

    def write(self, rel: str, size: int, fd: int) -> int:
        """Write the ``size`` bytes of ``rel`` (the next pairs of the stream, at least one) to
        ``fd``; returns ``size``."""
        written = 0
        first = True
        while first or written < size:
            item = self.peek()
            if item is None or item[0] != rel:
                raise InputError(f"{rel}: the client sent {written} bytes, it listed {size}")
            self._head = None
            chunk = memoryview(item[1])
            written += len(chunk)
            if written > size:
                raise InputError(f"{rel}: the client sent more than the {size} bytes it listed")
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
            first = False
        return written

    def close(self) -> None:
        """Close the stream (a generator left half way runs its ``finally`` blocks now)."""
        for source in (self._it, self._chunks):
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _maker(mirror: Mirror, incoming: _Incoming, rel: str, record: list
           ) -> Callable[[str], int]:
    """What makes file ``rel`` at a path, from the next chunks of ``incoming``."""
    mode, size, mtime_ns = record[1], record[2], record[3]

    def make(path: str) -> int:
        return make_file(path, mode, mtime_ns, mtime_ns,
                         lambda fd: incoming.write(rel, size, fd), mirror.as_root)

    return make


def _receive(mirror: Mirror, wanted: dict[str, list], fetch: Fetch) -> None:
    """Ask ``fetch`` for the files of ``wanted`` (once) and write each as it arrives."""
    incoming = _Incoming(fetch(list(wanted)))
    remaining = dict(wanted)
    try:
        while (head := incoming.peek()) is not None:
            rel = head[0]
            record = remaining.pop(rel, None)
            if record is None:
                raise InputError(f"the client sent {rel!r}, which was not asked for "
                                 "(or sent it twice, or not in one piece)")
            mirror.place(rel, record, _maker(mirror, incoming, rel, record))
    finally:
        incoming.close()
    if remaining:
        missing = ", ".join(repr(r) for r in list(remaining)[:3])
        raise InputError(f"the client did not send {len(remaining)} of the files asked for "
                         f"({missing}{', ...' if len(remaining) > 3 else ''})")


def _keep_or_fetch(mirror: Mirror, checked: list[tuple[str, list]]) -> dict[str, list]:
    """Keep the files whose copy is still right; the records of those to fetch (by rel).

    A file's copy is an inode of the destination, shared by the names of its hardlink group.
    A name keeps its inode when its record is unchanged; the first name of a group (or a file
    with no other names) also when only its group changed (it was another name of a group
    whose first name went: the inode has the content), unless another name keeps that inode
    already, so two groups never share one.
    """
    old = mirror.old
    wanted: dict[str, list] = {}
    claimed: set[str] = set()  # groups of the last sync whose inode is kept (by first name)
    promoted: list[tuple[str, list]] = []
    for rel, record in checked:
        if record[0] != "f" or record[5]:
            continue
        if old.get(rel) == record:
            mirror.keep(rel, record)
            claimed.add(rel)
        else:
            promoted.append((rel, record))
    for rel, record in promoted:
        was = old.get(rel)
        if was is not None and len(was) == 6 and was[0] == "f" and was[5] and \
                was[:5] == record[:5] and was[5] not in claimed:
            claimed.add(was[5])
            mirror.keep(rel, record)
        else:
            wanted[rel] = record
    return wanted


def _apply(mirror: Mirror, checked: list[tuple[str, list]], fetch: Fetch) -> None:
    """Directories first, then the contents of the files that changed (one ``fetch``), then
    symlinks and the other names of hardlinked files."""
    for rel, record in checked:
        if record[0] == "d":
            mirror.dir(rel, record)
    wanted = _keep_or_fetch(mirror, checked)
    if wanted:
        _receive(mirror, wanted, fetch)
    old = mirror.old
    for rel, record in checked:
        kind, first = record[0], record[5]
        if kind == "l":
            if old.get(rel) == record:
                mirror.keep(rel, record)
            else:
                mirror.symlink(rel, record, record[4], record[3])
        elif kind == "f" and first:
            if old.get(rel) == record and first not in wanted:
                mirror.keep(rel, record)
            else:
                mirror.link(rel, record, first)


def apply_tree(dest: str | os.PathLike[str], entries: object, fetch: Fetch, *,
               state_file: str | os.PathLike[str],
               on_copied: Callable[[str], None] | None = None) -> SyncStats:
    """Make ``dest`` mirror the client's ``entries`` (from :func:`stat_tree`, untrusted),
    asking ``fetch`` once for the files that changed since the last sync into ``dest``
    (``state_file`` remembers it; a missing or foreign one empties ``dest`` first).

    ``on_copied`` is given the relative path of each regular file made, once it is complete.
    ``SyncStats.bytes_copied`` counts the file bytes received.
    """
    checked = check_entries(entries)
    dest_path = os.path.abspath(os.fspath(dest))

    def fill(mirror: Mirror) -> None:
        _apply(mirror, checked, fetch)

    try:
        return run_mirror(dest_path, os.fspath(state_file), _STATE_VERSION, fill, on_copied)
    except OSError as e:
        raise BuildError(f"receiving the build context into {dest_path}: {e}") from None
