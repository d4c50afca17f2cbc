"""The snapshotters: ``overlayfs`` (one layer directory per snapshot, mounts stack the chain)
and ``native`` (a full copy per snapshot, mounts are binds), and choosing one for a store.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pybk.core.errors import StoreError
from pybk.core.fs.files import remove_path
from pybk.core.interfaces import Mount, Snapshotter
from pybk.core.model import Model, asdict
from pybk.core.store import mounts as mountlib
from pybk.core.store.db import StoreDB
from pybk.core.store.snapshots import SnapshotInfo, StoreSnapshotter, as_db
from pybk.core.store.trees import apply_layer, copy_contents, make_whiteout, tree_diff
from pybk.core.userns import in_user_namespace


class OverlaySnapshotter(StoreSnapshotter):
    """overlayfs: each snapshot's directory ``fs`` is its layer; mounts stack the chain."""

    name = "overlayfs"
    #: deepest lowerdir stack mounted as is; a deeper chain is flattened into one directory
    max_depth: ClassVar[int] = 100

    def __init__(self, db: StoreDB | str | os.PathLike[str], *,
                 options: Sequence[str] | None = None):
        super().__init__(db)
        if options is None:
            probe = probe_overlay(self.db)
            options = probe.options if probe.supported else DEFAULT_OVERLAY_OPTIONS
        self.options = tuple(options)
        self.empty = self.base / "empty"
        self.empty.mkdir(exist_ok=True)

    def layer_dir(self, key: str) -> str:
        return str(self.dir(self._require(key)) / "fs")

    def own_layer(self, key: str) -> str | None:
        return str(self.dir(self._require(key, "active")) / "fs")

    def _create_active(self, info: SnapshotInfo, parent: SnapshotInfo | None) -> None:
        directory = self.dir(info)
        (directory / "fs").mkdir()
        (directory / "work").mkdir()
        if parent is not None:
            st = os.stat(self.dir(parent) / "fs")
            os.chown(directory / "fs", st.st_uid, st.st_gid)
            os.chmod(directory / "fs", stat.S_IMODE(st.st_mode))

    def _lowers(self, info: SnapshotInfo) -> list[str]:
        """Layer directories of a committed snapshot, top first, flattened when too deep."""
        dirs: list[str] = []
        for key in reversed(info.chain):
            k_info = info if key == info.key else self._require(key)
            flat = self.dir(k_info) / "flat"
            if flat.is_dir():
                dirs.append(str(flat))
                break
            dirs.append(str(self.dir(k_info) / "fs"))
        if len(dirs) > self.max_depth:
            return [self._flatten(info)]
        return dirs

    def _flatten(self, info: SnapshotInfo) -> str:
        """Materialise the contents of ``info`` into its ``flat`` directory (once)."""
        flat = self.dir(info) / "flat"
        if flat.is_dir():
            return str(flat)
        self._build_once(info, flat, lambda temp: self._apply_chain(info.chain, temp))
        return str(flat)

    def _overlay(self, lowers: Sequence[str], *extra: str) -> list[Mount]:
        return [Mount("overlay", "overlay",
                      ("lowerdir=" + ":".join(lowers), *extra, *self.options))]

    def _readonly_mounts(self, info: SnapshotInfo) -> list[Mount]:
        lowers = self._lowers(info)
        if len(lowers) > 1:
            return self._overlay(lowers)
        top = lowers[0]
        if top.endswith("/fs") and info.whiteouts:
            return self._overlay([top, str(self.empty)])
        return [Mount("bind", top, ("rbind", "ro"))]

    def _active_mounts(self, info: SnapshotInfo) -> list[Mount]:
        directory = self.dir(info)
        if info.parent is None:
            return self._bind(info, ro=False)
        lowers = self._lowers(self._require(info.parent))
        if len(lowers) == 1 and self._require(info.parent).whiteouts and lowers[0].endswith("/fs"):
            lowers.append(str(self.empty))
        return self._overlay(lowers, f"upperdir={directory / 'fs'}", f"workdir={directory / 'work'}")

    def _after_commit(self, info: SnapshotInfo) -> None:
        remove_path(str(self.dir(info) / "work"))

    def _fill_merge(self, info: SnapshotInfo, stack: Sequence[str]) -> None:
        (self.dir(info) / "fs").mkdir()
        if not info.layers:  # an input appears twice or links repeat: copy instead
            self._apply_chain(stack, str(self.dir(info) / "fs"))

    def _fill_stack(self, info: SnapshotInfo, layers: Sequence[str]) -> None:
        (self.dir(info) / "fs").mkdir()

    def _fill_tree_diff(self, info: SnapshotInfo, lower: str | None, upper: str) -> None:
        out = self.dir(info) / "fs"
        out.mkdir()
        with contextlib.ExitStack() as stack:
            low = stack.enter_context(self.contents(lower)) if lower else None
            up = stack.enter_context(self.contents(upper))
            tree_diff(low, up, str(out))


class FuseOverlaySnapshotter(OverlaySnapshotter):
    """fuse-overlayfs: overlayfs's layout, its mounts served by the ``fuse-overlayfs`` program
    (for a kernel refusing overlayfs in a user namespace); unmounted like any mount."""

    name = "fuse-overlayfs"
    program = "fuse-overlayfs"

    def __init__(self, db: StoreDB | str | os.PathLike[str], *,
                 options: Sequence[str] | None = None):
        if shutil.which(self.program) is None:
            raise StoreError("snapshotter fuse-overlayfs: the fuse-overlayfs program is not "
                             "installed (apt-get install fuse-overlayfs)")
        super().__init__(db, options=() if options is None else options)

    def _overlay(self, lowers: Sequence[str], *extra: str) -> list[Mount]:
        return [Mount("fuse3." + self.program, "overlay",
                      ("lowerdir=" + ":".join(lowers), *extra, *self.options))]


class NativeSnapshotter(StoreSnapshotter):
    """native: each snapshot's ``fs`` is a full copy of its contents; mounts are binds."""

    name = "native"

    def layer_dir(self, key: str) -> str:
        """The own layer; for a child it is computed once (a tree diff against its parent)."""
        info = self._require(key)
        directory = self.dir(info)
        layer = directory / "layer"
        if layer.is_dir():
            return str(layer)
        if info.parent is None and not info.layers:
            return str(directory / "fs")
        if info.kind != "committed":
            raise StoreError(f"snapshot {key!r} is not committed: it has no layer yet")
        parent_fs = str(self.dir(self._require(info.parent)) / "fs")
        self._build_once(info, layer, lambda temp: tree_diff(parent_fs, str(directory / "fs"),
                                                             temp))
        return str(layer)

    def _create_active(self, info: SnapshotInfo, parent: SnapshotInfo | None) -> None:
        fs = self.dir(info) / "fs"
        fs.mkdir()
        if parent is not None:
            copy_contents(str(self.dir(parent) / "fs"), str(fs))

    def _active_mounts(self, info: SnapshotInfo) -> list[Mount]:
        return self._bind(info, ro=False)

    def _readonly_mounts(self, info: SnapshotInfo) -> list[Mount]:
        return self._bind(info, ro=True)

    def _fill_merge(self, info: SnapshotInfo, stack: Sequence[str]) -> None:
        directory = self.dir(info)
        (directory / "fs").mkdir()
        self._apply_chain(stack, str(directory / "fs"))
        if info.layers:
            (directory / "layer").mkdir()

    def _fill_stack(self, info: SnapshotInfo, layers: Sequence[str]) -> None:
        directory = self.dir(info)
        (directory / "fs").mkdir()
        self._apply_chain(layers, str(directory / "fs"))
        (directory / "layer").mkdir()

    def _fill_tree_diff(self, info: SnapshotInfo, lower: str | None, upper: str) -> None:
        directory = self.dir(info)
        (directory / "layer").mkdir()
        (directory / "fs").mkdir()
        with contextlib.ExitStack() as stack:
            low = stack.enter_context(self.contents(lower)) if lower else None
            up = stack.enter_context(self.contents(upper))
            tree_diff(low, up, str(directory / "layer"))
        apply_layer(str(directory / "layer"), str(directory / "fs"))


# --------------------------------------------------------------------------------------------
# Choosing a snapshotter
# --------------------------------------------------------------------------------------------

DEFAULT_OVERLAY_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")


class OverlayProbe(Model):
    """Whether overlayfs works for this store on this kernel, and with which extra options."""

    supported: bool
    options: tuple[str, ...] = ()
    kernel: str = ""
    reason: str = ""


def probe_overlay(db: StoreDB) -> OverlayProbe:
    """Mount a tiny overlay (two lowers with a whiteout, an upper) in the store's tmp, once.

    The answer is kept in the store and asked again only after a kernel change (or a change
    between real root and a user namespace, where every option set gets ``userxattr``: opaque
    directories are marked with ``user.overlay.opaque`` there).
    """
    kernel = os.uname().release + (" userns" if in_user_namespace() else "")
    cached = db.get_meta("overlayfs.probe")
    if cached and cached.get("kernel") == kernel:
        return OverlayProbe(cached["supported"], tuple(cached["options"]), kernel,
                            cached.get("reason", ""))
    result = _run_overlay_probe(db, kernel)
    db.set_meta("overlayfs.probe", asdict(result))
    return result


def _run_overlay_probe(db: StoreDB, kernel: str) -> OverlayProbe:
    if any(c in str(db.root) for c in ",:"):
        return OverlayProbe(False, (), kernel, "store path contains ',' or ':'")
    base = db.process_tmp(f"overlay-probe-{secrets.token_hex(4)}")
    reason = ""
    try:
        extra = ("userxattr",) if in_user_namespace() else ()
        for options in ((*DEFAULT_OVERLAY_OPTIONS, *extra), extra):
            remove_path(str(base))
            for d in ("l1", "l2", "upper", "work", "merged"):
                (base / d).mkdir(parents=True)
            (base / "l1" / "gone").write_text("x")
            (base / "l2" / "kept").write_text("y")
            try:
                make_whiteout(str(base / "l2" / "gone"))
                lowers = f"lowerdir={base / 'l2'}:{base / 'l1'}"
                mountlib.mount_all([Mount("overlay", "overlay", (
                    lowers, f"upperdir={base / 'upper'}", f"workdir={base / 'work'}", *options,
                ))], str(base / "merged"))
            except OSError as e:
                reason = str(e)
                continue
            try:
                (base / "merged" / "new").write_text("z")
                seen = sorted(os.listdir(base / "merged"))
            finally:
                mountlib.unmount_all(str(base / "merged"))
            if seen == ["kept", "new"] and (base / "upper" / "new").exists():
                return OverlayProbe(True, tuple(options), kernel)
            reason = f"unexpected overlay contents {seen}"
        return OverlayProbe(False, (), kernel, reason)
    finally:
        remove_path(str(base))


def auto_snapshotter(db: StoreDB | str | os.PathLike[str]) -> Snapshotter:
    """overlayfs when the kernel allows it for this store; else, in a user namespace,
    fuse-overlayfs when it is installed and works; else native. The choice is kept in the
    store (``snapshotter.auto``), with the reason when it is not overlayfs."""
    db = as_db(db)
    probe = probe_overlay(db)
    chosen: StoreSnapshotter
    if probe.supported:
        chosen = OverlaySnapshotter(db, options=probe.options)
    elif in_user_namespace() and probe_fuse_overlay(db):
        chosen = FuseOverlaySnapshotter(db)
    else:
        chosen = NativeSnapshotter(db)
    if in_user_namespace():
        _announce(db, chosen.name, probe)
    return chosen


def _announce(db: StoreDB, name: str, probe: OverlayProbe) -> None:
    """Say once per store (and again when it changes) which snapshotter ``auto`` chose in a
    user namespace, and why overlayfs was not."""
    if db.get_meta("snapshotter.auto") == name:
        return
    why = "" if probe.supported else f" (overlayfs: {probe.reason or 'refused'})"
    sys.stderr.write(f"pybk: rootless store {db.root}: snapshotter {name}{why}\n")
    db.set_meta("snapshotter.auto", name)


def probe_fuse_overlay(db: StoreDB) -> bool:
    """Whether fuse-overlayfs mounts a tiny overlay in the store's tmp (asked once per
    kernel, kept in the store)."""
    kernel = os.uname().release + (" userns" if in_user_namespace() else "")
    cached = db.get_meta("fuse-overlayfs.probe")
    if cached and cached.get("kernel") == kernel:
        return bool(cached["supported"])
    supported = False
    if shutil.which(FuseOverlaySnapshotter.program) is not None:
        base = db.process_tmp(f"fuse-probe-{secrets.token_hex(4)}")
        try:
            for d in ("lower", "upper", "work", "merged"):
                (base / d).mkdir(parents=True)
            (base / "lower" / "kept").write_text("y")
            mountlib.mount_all([Mount("fuse3." + FuseOverlaySnapshotter.program, "overlay", (
                f"lowerdir={base / 'lower'}", f"upperdir={base / 'upper'}",
                f"workdir={base / 'work'}"))], str(base / "merged"))
            try:
                supported = os.listdir(base / "merged") == ["kept"]
            finally:
                mountlib.unmount_all(str(base / "merged"))
        except OSError:
            supported = False
        finally:
            remove_path(str(base))
    db.set_meta("fuse-overlayfs.probe", {"kernel": kernel, "supported": supported})
    return supported


SNAPSHOTTERS: dict[str, type[StoreSnapshotter]] = {
    OverlaySnapshotter.name: OverlaySnapshotter,
    FuseOverlaySnapshotter.name: FuseOverlaySnapshotter,
    NativeSnapshotter.name: NativeSnapshotter,
}


def make_snapshotter(db: StoreDB, name: str = "auto") -> Snapshotter:
    """The snapshotter called ``name`` (``auto``, ``overlayfs``, ``fuse-overlayfs`` or
    ``native``)."""
    if name == "auto":
        return auto_snapshotter(db)
    try:
        return SNAPSHOTTERS[name](db)
    except KeyError:
        raise StoreError(f"unknown snapshotter {name!r} (choose auto, "
                         f"{', '.join(SNAPSHOTTERS)})") from None


class SnapshotterSet:
    """The snapshotters of one store: the default one new records use, made on first use by
    ``make_default``, and the built-in ones by name for records another configuration made."""

    def __init__(self, db: StoreDB, make_default: Callable[[], Snapshotter]):
        self.db = db
        self._make_default = make_default
        self._default: Snapshotter | None = None
        self._named: dict[str, Snapshotter] = {}

    @property
    def default(self) -> Snapshotter:
        if self._default is None:
            self._default = self._make_default()
            self._named[self._default.name] = self._default
        return self._default

    def named(self, name: str) -> Any:
        """The snapshotter called ``name``: the default one, or a built-in one."""
        if name not in self._named and self.default.name != name:
            self._named[name] = make_snapshotter(self.db, name)
        return self._named[name]
