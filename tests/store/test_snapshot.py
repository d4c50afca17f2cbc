"""Snapshotters: chains, whiteouts, merge, diff, layers, flattening, usage — overlayfs and native."""

import os
import stat

import pytest

from pybk.core.errors import StoreError
from pybk.core.store.mounts import mounted
from pybk.core.store.snapshotters import (
    NativeSnapshotter,
    OverlaySnapshotter,
    auto_snapshotter,
    probe_overlay,
)
from pybk.core.store.trees import apply_layer, is_opaque

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount(2), chown, mknod)")


@pytest.fixture(params=["overlayfs", "native"])
def sn(request, store):
    if request.param == "overlayfs":
        if not probe_overlay(store.db).supported:
            pytest.skip(f"overlayfs not usable here: {probe_overlay(store.db).reason}")
        return OverlaySnapshotter(store.db)
    return NativeSnapshotter(store.db)


def build(sn, key, parent, change):
    """prepare → change(mounted dir) → commit under ``key``."""
    with mounted(sn.prepare(key + "-active", parent)) as root:
        change(root)
    sn.commit(key, key + "-active")
    return key


def contents(sn, key, tree):
    with sn.contents(key) as root:
        return tree(root)


def test_chain_of_three_with_deletes(sn, tree, write):
    def base(r):
        write(r, "etc/conf", b"v1", mode=0o600, uid=12, gid=34)
        write(r, "bin/tool", b"#!tool", mode=0o755)
        os.symlink("../bin/tool", os.path.join(r, "etc/link"))
        write(r, "old/inner/file", b"gone soon")

    def second(r):
        os.unlink(os.path.join(r, "bin/tool"))
        write(r, "etc/conf", b"v2", mode=0o640, uid=12, gid=34)
        import shutil
        shutil.rmtree(os.path.join(r, "old"))
        os.mkdir(os.path.join(r, "old"))  # a new, empty directory replaces the deleted one
        write(r, "new/file", b"new")

    def third(r):
        os.unlink(os.path.join(r, "new/file"))
        os.chown(os.path.join(r, "etc/conf"), 7, 8)

    build(sn, "a", None, base)
    build(sn, "b", "a", second)
    build(sn, "c", "b", third)
    expected = {
        "etc": ("dir", 0o755, 0, 0, None),
        "etc/conf": ("file", 0o640, 7, 8, b"v2"),
        "etc/link": ("link", None, 0, 0, "../bin/tool"),
        "bin": ("dir", 0o755, 0, 0, None),
        "old": ("dir", 0o755, 0, 0, None),
        "new": ("dir", 0o755, 0, 0, None),
    }
    assert contents(sn, "c", tree) == expected
    # the lower snapshots are unchanged
    assert contents(sn, "a", tree)["bin/tool"] == ("file", 0o755, 0, 0, b"#!tool")
    assert contents(sn, "b", tree)["new/file"] == ("file", 0o644, 0, 0, b"new")
    # a read-only view shows the same tree and refuses writes
    with mounted(sn.view("c-view", "c")) as root:
        assert tree(root) == expected
        with pytest.raises(OSError):
            os.open(os.path.join(root, "x"), os.O_CREAT | os.O_WRONLY)
    sn.remove("c-view")
    assert sn.layer_chain("c") == ["a", "b", "c"]


def test_overlay_layer_dir_holds_whiteouts(store, tree, write):
    if not probe_overlay(store.db).supported:
        pytest.skip("overlayfs not usable here")
    sn = OverlaySnapshotter(store.db)
    build(sn, "a", None, lambda r: (write(r, "f", b"1"), write(r, "d/g", b"2")))

    def change(r):
        os.unlink(os.path.join(r, "f"))
        import shutil
        shutil.rmtree(os.path.join(r, "d"))
        os.mkdir(os.path.join(r, "d"))
        write(r, "d/h", b"3")

    build(sn, "b", "a", change)
    layer = sn.layer_dir("b")
    st = os.lstat(os.path.join(layer, "f"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert is_opaque(os.path.join(layer, "d"))
    assert sorted(os.listdir(os.path.join(layer, "d"))) == ["h"]


def test_committed_snapshot_is_never_mounted_writable(sn, write):
    build(sn, "a", None, lambda r: write(r, "f", b"1"))
    for m in sn.mounts("a"):
        assert "upperdir" not in ",".join(m.options)
        if m.type == "bind":
            assert "ro" in m.options
    with pytest.raises(StoreError, match="not an active snapshot"):
        sn.commit("again", "a")


def test_remove_refuses_while_children_exist(sn, write):
    build(sn, "a", None, lambda r: write(r, "f"))
    build(sn, "b", "a", lambda r: write(r, "g"))
    with pytest.raises(StoreError, match="still needed by b"):
        sn.remove("a")
    sn.remove("b")
    sn.remove("a")
    assert not sn.exists("a") and not sn.exists("b")
    assert [p for p in sn.base.iterdir() if p.name.isdigit()] == []


def test_merge_layers_inputs_in_order(sn, tree, write):
    build(sn, "base", None, lambda r: (write(r, "shared", b"base"), write(r, "only-base", b"b"),
                                       write(r, "doomed", b"d")))

    def app(r):
        write(r, "shared", b"app", mode=0o600, uid=5, gid=6)
        write(r, "app/bin", b"x", mode=0o755)
        os.symlink("app/bin", os.path.join(r, "run"))

    build(sn, "app", None, app)
    # an input whose own chain deletes a path: the whiteout applies to earlier inputs too
    build(sn, "rm1", None, lambda r: write(r, "doomed", b"again"))
    build(sn, "rm2", "rm1", lambda r: os.unlink(os.path.join(r, "doomed")))

    sn.merge(["base", "app", "rm2"], "merged")
    got = contents(sn, "merged", tree)
    assert got == {
        "shared": ("file", 0o600, 5, 6, b"app"),
        "only-base": ("file", 0o644, 0, 0, b"b"),
        "app": ("dir", 0o755, 0, 0, None),
        "app/bin": ("file", 0o755, 0, 0, b"x"),
        "run": ("link", None, 0, 0, "app/bin"),
    }
    assert sn.layer_chain("merged") == ["base", "app", "rm1", "rm2", "merged"]
    # a merge can be a parent like any committed snapshot
    build(sn, "child", "merged", lambda r: write(r, "later", b"l"))
    assert contents(sn, "child", tree)["later"][4] == b"l"
    assert "only-base" in contents(sn, "child", tree)
    with pytest.raises(StoreError, match="still needed"):
        sn.remove("app")


def test_merge_with_repeated_input_is_materialised(sn, tree, write):
    build(sn, "a", None, lambda r: write(r, "f", b"a"))
    build(sn, "b", None, lambda r: write(r, "f", b"b"))
    sn.merge(["a", "b", "a"], "aba")
    assert contents(sn, "aba", tree) == {"f": ("file", 0o644, 0, 0, b"a")}


def test_diff_of_unrelated_snapshots(sn, tree, write):
    def lower(r):
        write(r, "same", b"s")
        write(r, "changed", b"old")
        write(r, "mode", b"m", mode=0o644)
        write(r, "owner", b"o")
        write(r, "deleted/deep/file", b"x")
        write(r, "deleted-file", b"x")
        os.symlink("a", os.path.join(r, "link"))

    def upper(r):
        lower(r)
        write(r, "changed", b"new!")
        os.chmod(os.path.join(r, "mode"), 0o700)
        os.chown(os.path.join(r, "owner"), 1000, 1000)
        import shutil
        shutil.rmtree(os.path.join(r, "deleted"))
        os.unlink(os.path.join(r, "deleted-file"))
        os.unlink(os.path.join(r, "link"))
        os.symlink("b", os.path.join(r, "link"))
        write(r, "added/file", b"+", mode=0o604, uid=3, gid=4)

    build(sn, "lower", None, lower)
    build(sn, "upper", None, upper)  # not a child of lower: a tree diff is needed
    # keep the unchanged file's times equal in both trees
    with sn.contents("lower") as low, sn.contents("upper") as up:
        assert os.lstat(os.path.join(low, "same")).st_size == os.lstat(
            os.path.join(up, "same")).st_size
    sn.diff("lower", "upper", "d")

    layer = sn.layer_dir("d")
    for gone in ("deleted", "deleted-file"):
        st = os.lstat(os.path.join(layer, gone))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    shown = contents(sn, "d", tree)
    assert shown["changed"] == ("file", 0o644, 0, 0, b"new!")
    assert shown["mode"] == ("file", 0o700, 0, 0, b"m")
    assert shown["owner"] == ("file", 0o644, 1000, 1000, b"o")
    assert shown["link"] == ("link", None, 0, 0, "b")
    assert shown["added/file"] == ("file", 0o604, 3, 4, b"+")
    assert "deleted" not in shown and "deleted-file" not in shown  # whiteouts are hidden

    # merging the diff onto lower reproduces upper
    sn.merge(["lower", "d"], "rebuilt")
    assert contents(sn, "rebuilt", tree) == contents(sn, "upper", tree)


def test_diff_of_parent_and_child_reuses_layers(sn, tree, write):
    build(sn, "a", None, lambda r: (write(r, "keep", b"k"), write(r, "drop", b"d")))
    build(sn, "b", "a", lambda r: (os.unlink(os.path.join(r, "drop")), write(r, "add", b"+")))
    sn.diff("a", "b", "d")
    assert sn.layer_chain("d") == ["b", "d"]
    assert contents(sn, "d", tree) == {"add": ("file", 0o644, 0, 0, b"+")}
    build(sn, "other", None, lambda r: (write(r, "drop", b"x"), write(r, "x", b"x")))
    sn.merge(["other", "d"], "m")
    assert sorted(contents(sn, "m", tree)) == ["add", "x"]
    # diff from scratch is the whole snapshot
    sn.diff(None, "b", "all")
    assert contents(sn, "all", tree) == contents(sn, "b", tree)


def test_native_layer_dir_is_a_tree_diff(store, tree, write):
    sn = NativeSnapshotter(store.db)
    build(sn, "a", None, lambda r: (write(r, "x", b"1"), write(r, "y", b"2")))
    build(sn, "b", "a", lambda r: (os.unlink(os.path.join(r, "x")), write(r, "z", b"3")))
    assert tree(sn.layer_dir("a")) == {"x": ("file", 0o644, 0, 0, b"1"),
                                       "y": ("file", 0o644, 0, 0, b"2")}
    layer = tree(sn.layer_dir("b"))
    assert layer == {"x": ("chr", 0, 0, 0, (0, 0)), "z": ("file", 0o644, 0, 0, b"3")}


def test_overlay_flattens_deep_chains(store, tree, write, monkeypatch):
    if not probe_overlay(store.db).supported:
        pytest.skip("overlayfs not usable here")
    sn = OverlaySnapshotter(store.db)
    monkeypatch.setattr(OverlaySnapshotter, "max_depth", 3)
    parent = None
    for i in range(6):
        def change(r, i=i):
            write(r, f"f{i}", str(i).encode())
            if i:
                os.unlink(os.path.join(r, f"f{i - 1}"))
        parent = build(sn, f"s{i}", parent, change)
    mounts = sn.mounts("s5")
    lowers = [o for o in mounts[0].options if o.startswith("lowerdir=")]
    assert not lowers or lowers[0].count(":") < 3
    assert contents(sn, "s5", tree) == {"f5": ("file", 0o644, 0, 0, b"5")}
    assert sn.layer_chain("s5") == [f"s{i}" for i in range(6)]


def test_usage_counts_own_files(sn, write):
    build(sn, "a", None, lambda r: write(r, "big", b"x" * (1 << 20)))
    build(sn, "b", "a", lambda r: write(r, "small", b"y"))
    assert sn.usage("a") >= 1 << 20
    if sn.name == "overlayfs":
        assert sn.usage("b") < 1 << 20  # only its own layer
    assert sn.usage("a") == sn.usage("a")  # committed: cached


def test_auto_picks_overlay_here(store):
    probe = probe_overlay(store.db)
    if not probe.supported:
        pytest.skip(f"overlayfs not usable on this kernel: {probe.reason}")
    assert auto_snapshotter(store.db).name == "overlayfs"
    assert store.snapshotter.name == "overlayfs"
    assert store.get_meta("overlayfs.probe")["supported"] is True


def test_apply_layer_handles_whiteouts_and_opaque_dirs(tmp_path, tree, write):
    target, layer = tmp_path / "t", tmp_path / "l"
    write(str(target), "d/old", b"o")
    write(str(target), "gone", b"g")
    write(str(target), "file-becomes-dir", b"f")
    os.makedirs(layer / "d")
    os.setxattr(layer / "d", "trusted.overlay.opaque", b"y")
    write(str(layer), "d/new", b"n")
    os.mknod(layer / "gone", stat.S_IFCHR, os.makedev(0, 0))
    write(str(layer), "file-becomes-dir/inner", b"i")
    apply_layer(str(layer), str(target))
    got = tree(str(target))
    assert sorted(got) == ["d", "d/new", "file-becomes-dir", "file-becomes-dir/inner"]
    assert "trusted.overlay.opaque" not in os.listxattr(target / "d")
