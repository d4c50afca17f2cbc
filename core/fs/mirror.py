"""The destination side of an incremental context sync: a directory kept equal to a source tree.

Shared by the local sync (:mod:`pybk.core.fs.localsync`, the source is a directory on this
machine) and the remote one (:mod:`pybk.core.remote.filesync`, the source is a client's list of
entries and file contents received over a session). The caller decides which entries changed
since the last sync (by comparing its records with the saved state) and hands each entry to a
:class:`Mirror`, which makes it in the destination:

- a changed entry is never written in place: it is made at a temporary name, then renamed over
  the old one (copies elsewhere may hard-link synced files); an entry the last sync did not
  have is made at its name directly;
- nothing is written through a symlink: every directory written into is checked (once per sync)
  to be a real directory, from the destination down; a destination that does not match the
  saved state (changed by something else) fails the sync and forgets the state, so the next
  sync makes the copy again from an empty directory;
- entries gone from the source are removed, and directories get their mode and mtime last
  (deepest first: writing into a directory changes its mtime); entries are owned by 0:0 when
  running as root, like BuildKit's local source (owner before mode: a chown clears set-id bits);
- the state is saved atomically, and only when something changed. A sync that fails part way
  saves the state with each entry it touched marked dirty, so the next sync makes those again
  and trusts the rest.

Records are lists ``[kind, mode, size, mtime_ns, ...]`` (kind ``"d"``, ``"f"`` or ``"l"``; the
rest is the caller's); only their kind, mode and mtime are read here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable

from pybk.core.errors import BuildError
from pybk.core.fs.files import remove_path
from pybk.core.model import Model, field

__all__ = ["DestinationChanged", "Mirror", "SyncStats", "make_file", "make_symlink",
           "run_mirror"]

TMP_PREFIX = ".pybk-sync-"
#: the record of an entry a failed sync may have left half made: equal to no real record
DIRTY = ["?"]


class SyncStats(Model):
    """What a sync did; counts are of non-directory entries (files, symlinks)."""

    copied: int
    removed: int
    unchanged: int
    bytes_copied: int
    #: the relative paths of the non-directory entries copied (made again), in the order the
    #: sync made them (not compared: a remote sync makes them in another order)
    sent: tuple[str, ...] = field(default=(), eq=False)


class DestinationChanged(BuildError):
    """The destination is not what the saved state says (a directory is missing or is not a
    directory): something else changed it, and the state cannot be trusted."""


def _owned_by_root(fd_or_path: int | str) -> None:
    if isinstance(fd_or_path, int):
        os.fchown(fd_or_path, 0, 0)
    else:
        os.lchown(fd_or_path, 0, 0)


def make_file(path: str, mode: int, atime_ns: int, mtime_ns: int, fill: Callable[[int], int],
              as_root: bool) -> int:
    """Create the regular file ``path`` (which must not exist: ``FileExistsError`` otherwise,
    before ``fill`` is called), have ``fill(fd)`` write its content, set its owner (0:0 when
    ``as_root``), mode and times; returns what ``fill`` returns (the byte count). A file left
    half written by an error is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        written = fill(fd)
        if as_root:
            _owned_by_root(fd)
        os.fchmod(fd, stat.S_IMODE(mode))
        os.utime(fd, ns=(atime_ns, mtime_ns))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return written


def make_symlink(path: str, target: str, atime_ns: int, mtime_ns: int, as_root: bool) -> int:
    """Create the symlink ``path -> target`` (0:0 when ``as_root``) with its times; returns 0."""
    os.symlink(target, path)
    try:
        if as_root:
            _owned_by_root(path)
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return 0


class Mirror:
    """The destination of one sync: the entries made, kept and removed, and what it counted.

    ``old`` is the state of the last sync (rel -> record); ``new`` collects this sync's
    records as entries are handed in. ``rel`` is ``""`` for the root, else a clean relative
    path whose parent was handed in (as a directory) before it.
    """

    def __init__(self, dest: str, old: dict[str, list],
                 on_copied: Callable[[str], None] | None = None):
        self.dest = dest
        self.old = old
        self.new: dict[str, list] = {}
        self.on_copied = on_copied
        self.copied = 0
        self.unchanged = 0
        self.bytes = 0
        self.sent: list[str] = []
        self.as_root = os.geteuid() == 0
        #: directories whose metadata must be (re)applied
        self.touched: set[str] = set()
        #: entries this sync made, replaced or removed (possibly half way, when it fails)
        self.dirty: set[str] = set()
        #: directories known, in this sync, to be real directories (not symlinks) from dest down
        self._verified: set[str] = {""}
        self._tmp_counter = 0

    def host(self, rel: str) -> str:
        return os.path.join(self.dest, rel) if rel else self.dest

    # -- checks -----------------------------------------------------------------------------

    def _verify_dir(self, rel: str) -> None:
        """Make sure directory ``rel`` and its parents are real directories (not symlinks)."""
        unverified: list[str] = []
        while rel not in self._verified:
            unverified.append(rel)
            rel = rel.rpartition("/")[0]
        for rel in reversed(unverified):  # from the top down
            try:
                st = os.lstat(self.host(rel))
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise DestinationChanged(
                    f"{rel}: not a directory in the copy of the context, though the last sync "
                    "made one there (changed by something else): the next sync copies "
                    "everything again")
            self._verified.add(rel)

    def _check_parent(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent not in self._verified:
            self._verify_dir(parent)

    # -- entries ----------------------------------------------------------------------------

    def dir(self, rel: str, record: list) -> None:
        """Directory ``rel``: made when the last sync had no directory there; its mode and
        mtime are applied by :meth:`finish_dirs` when its record changed."""
        self.new[rel] = record
        old = self.old.get(rel)
        if old == record:
            return
        self.touched.add(rel)
        if not rel or (old is not None and old[0] == "d"):
            return
        self._check_parent(rel)
        self.dirty.add(rel)
        target = self.host(rel)
        try:
            is_dir = stat.S_ISDIR(os.lstat(target).st_mode)
        except FileNotFoundError:
            is_dir = None
        if is_dir is False:
            os.unlink(target)
        if not is_dir:
            os.mkdir(target, 0o700)
        self._verified.add(rel)
        self.touched.add(rel.rpartition("/")[0])

    def keep(self, rel: str, record: list) -> None:
        """Non-directory ``rel`` is unchanged since the last sync."""
        self.new[rel] = record
        self.unchanged += 1

    def place(self, rel: str, record: list, make: Callable[[str], int]) -> None:
        """(Re)make non-directory ``rel``: ``make(path)`` creates it at ``path``, which does not
        exist (raising ``FileExistsError`` before doing anything else if it does), and returns
        the bytes it copied. A name the last sync did not have is made in place; a taken one
        (changed, or left by a sync that stopped before saving its state) through a temporary
        name renamed over it."""
        self.new[rel] = record
        self._check_parent(rel)
        self._verified.discard(rel)
        self.dirty.add(rel)
        self.touched.add(rel.rpartition("/")[0])
        target = self.host(rel)
        if rel not in self.old:
            try:
                self.bytes += make(target)
            except FileExistsError:
                pass
            else:
                self._copied(rel, record)
                return
        tmp = self._temp_name(os.path.dirname(target))
        copied = make(tmp)
        try:
            try:
                os.replace(tmp, target)
            except IsADirectoryError:
                shutil.rmtree(target)
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.bytes += copied
        self._copied(rel, record)

    def symlink(self, rel: str, record: list, target: str, atime_ns: int) -> None:
        """(Re)make symlink ``rel -> target`` (its mtime is the record's)."""
        self.place(rel, record,
                   lambda path: make_symlink(path, target, atime_ns, record[3], self.as_root))

    def link(self, rel: str, record: list, first: str) -> None:
        """(Re)make ``rel`` as another name of the file synced at ``first``."""
        self._check_parent(first)
        source = self.host(first)

        def make(path: str) -> int:
            os.link(source, path, follow_symlinks=False)
            return 0

        self.place(rel, record, make)

    def _copied(self, rel: str, record: list) -> None:
        self.copied += 1
        self.sent.append(rel)
        if self.on_copied is not None and record[0] == "f":
            self.on_copied(rel)

    def _temp_name(self, directory: str) -> str:
        while True:
            self._tmp_counter += 1
            tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{self._tmp_counter}")
            if not os.path.lexists(tmp):
                return tmp

    # -- the end of a sync ------------------------------------------------------------------

    def remove_stale(self) -> int:
        """Delete entries of the last sync the source no longer has; returns non-dirs removed.

        An entry under a directory that went, or became a non-directory, went with it (and is
        not looked for: the name may now be a symlink)."""
        removed = 0
        for rel in sorted(r for r in self.old if r and r not in self.new):
            if self.old[rel][0] != "d":
                removed += 1
            parent = rel.rpartition("/")[0]
            kept = self.new.get(parent)
            if kept is None or kept[0] != "d":
                continue
            self._check_parent(rel)
            self.dirty.add(rel)
            remove_path(self.host(rel))
            self.touched.add(parent)
        return removed

    def finish_dirs(self) -> None:
        """Apply directory owners, modes and mtimes, deepest first (children touch parents)."""
        for rel in sorted(self.touched, reverse=True):
            record = self.new.get(rel)
            if record is None or record[0] != "d":
                continue
            self._verify_dir(rel)
            target = self.host(rel)
            if self.as_root:
                _owned_by_root(target)
            os.chmod(target, stat.S_IMODE(record[1]))
            os.utime(target, ns=(record[3], record[3]), follow_symlinks=False)

    def state_after_failure(self) -> dict[str, list]:
        """The state to save when the sync failed: the last one, with every entry this sync
        touched (made, replaced, removed, or a directory whose metadata was not applied yet)
        marked dirty."""
        dirty = self.dirty | self.touched
        state = dict(self.old)
        for rel in state:  # under a name made or removed (a directory replaced by a file, or
            parent = rel.rpartition("/")[0]  # removed: what it held went with it)
            while parent:
                if parent in self.dirty:
                    dirty.add(rel)
                    break
                parent = parent.rpartition("/")[0]
        for rel in dirty:
            state[rel] = DIRTY
        return state


def load_state(state_file: str, dest: str, version: int | str) -> dict[str, list]:
    """The entries saved by the last sync into ``dest``; empty when unknown or not matching."""
    import orjson

    try:
        with open(state_file, "rb") as f:
            data = orjson.loads(f.read())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("v") != version or \
            data.get("dest") != dest or not os.path.isdir(dest):
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def save_state(state_file: str, dest: str, version: int | str, entries: dict[str, list]) -> None:
    """Write the state atomically (a temporary file renamed over the old one)."""
    import orjson

    tmp = f"{state_file}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"v": version, "dest": dest, "entries": entries}))
    os.replace(tmp, state_file)


def run_mirror(dest: str, state_file: str, version: int | str,
               fill: Callable[[Mirror], None],
               on_copied: Callable[[str], None] | None = None) -> SyncStats:
    """One sync into ``dest``: load the state (none, or one not matching: ``dest`` is emptied),
    let ``fill`` hand every entry of the source to the :class:`Mirror`, remove what is gone,
    finish the directories and save the state (see the module docstring for failures)."""
    old = load_state(state_file, dest, version)
    if not old and os.path.lexists(dest):
        shutil.rmtree(dest)  # unknown content: start from an empty copy
    os.makedirs(dest, exist_ok=True)
    mirror = Mirror(dest, old, on_copied)
    try:
        fill(mirror)
        removed = mirror.remove_stale()
        mirror.finish_dirs()
    except DestinationChanged:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_file)
        raise
    except BaseException:
        if mirror.dirty or mirror.touched:
            try:
                save_state(state_file, dest, version, mirror.state_after_failure())
            except OSError:  # the old state would be trusted: have none
                with contextlib.suppress(OSError):
                    os.unlink(state_file)
        raise
    if mirror.new != old:
        save_state(state_file, dest, version, mirror.new)
    return SyncStats(copied=mirror.copied, removed=removed, unchanged=mirror.unchanged,
                     bytes_copied=mirror.bytes, sent=tuple(mirror.sent))
