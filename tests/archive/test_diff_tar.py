"""write_diff_tar and write_overlay_upper_tar: layer tars that apply_layer turns back into the tree."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from pybk.core.fs.archive import (
    apply_layer,
    decompressed,
    write_diff_tar,
    write_overlay_upper_tar,
)

ROOT = os.geteuid() == 0


def read_layer_members(source, *, media_type=None) -> list[tarfile.TarInfo]:
    """The entries of a layer tar (names and metadata only), in archive order."""
    with tarfile.open(fileobj=decompressed(source, media_type), mode="r|") as tar:
        return list(tar)
T0 = 1_700_000_000


def tree_state(root: Path) -> dict[str, tuple]:
    """Type, mode, owner, mtime, content/target/device and user xattrs of every entry, plus
    which names share an inode."""
    state: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                detail = Path(path).read_bytes()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                detail = st.st_rdev
            else:
                detail = None
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in sorted(os.listxattr(path, follow_symlinks=False)) if k.startswith("user.")}
            state[rel] = (mode, st.st_uid, st.st_gid, int(st.st_mtime), detail, xattrs)
    state["<hardlinks>"] = sorted(sorted(names) for names in inodes.values())
    return state


def set_times(root: Path, when: int = T0) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)


def build_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("key=value\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.chmod(root / "bin" / "tool", 0o4755)
    os.symlink("tool", root / "bin" / "alias")
    os.symlink("/nowhere/absolute", root / "dangling")
    os.link(root / "bin" / "tool", root / "bin" / "tool-hardlink")
    (root / "empty").mkdir(mode=0o700)
    os.chmod(root / "empty", 0o700)
    (root / "name with spaces é").write_text("unicode")
    (root / "deep" / "a" / "b").mkdir(parents=True)
    (root / "deep" / "a" / "b" / "leaf").write_text("leaf")
    (root / "unchanged").mkdir()
    (root / "unchanged" / "file").write_text("same")
    (root / "gone-dir" / "sub").mkdir(parents=True)
    (root / "gone-dir" / "sub" / "f").write_text("bye")
    (root / "gone-file").write_text("bye")
    (root / "becomes-dir").write_text("file now")
    (root / "becomes-file").mkdir()
    (root / "becomes-file" / "child").write_text("c")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "etc" / "conf", "user.pybk", b"\x00\xffbinary")
    if ROOT:
        os.chown(root / "etc" / "conf", 1000, 1000)
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    set_times(root)


def diff_tar(lower: Path | None, upper: Path, **kw) -> bytes:
    buf = io.BytesIO()
    write_diff_tar(lower, upper, buf, **kw)
    return buf.getvalue()


def names(tar_bytes: bytes) -> list[str]:
    return [m.name for m in read_layer_members(io.BytesIO(tar_bytes))]


def cp_a(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def test_full_tree_round_trip(tmp_path):
    tree = tmp_path / "tree"
    build_tree(tree)
    data = diff_tar(None, tree)
    assert apply_layer(io.BytesIO(data), tmp_path / "out") == len(data)
    assert tree_state(tmp_path / "out") == tree_state(tree)
    members = read_layer_members(io.BytesIO(data))
    link = next(m for m in members if m.name in ("bin/tool", "bin/tool-hardlink") and m.islnk())
    assert link.linkname in ("bin/tool", "bin/tool-hardlink")
    assert all(m.uname == "" and m.gname == "" for m in members)


def test_diff_round_trips_changes_and_deletions(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    build_tree(lower)
    cp_a(lower, upper)
    (upper / "etc" / "conf").write_text("key=changed\n")
    (upper / "etc" / "new").write_text("added")
    (upper / "gone-file").unlink()
    subprocess.run(["rm", "-rf", str(upper / "gone-dir")], check=True)
    (upper / "becomes-dir").unlink()
    (upper / "becomes-dir").mkdir()
    (upper / "becomes-dir" / "inside").write_text("x")
    subprocess.run(["rm", "-rf", str(upper / "becomes-file")], check=True)
    (upper / "becomes-file").write_text("was a dir")
    os.chmod(upper / "deep" / "a" / "b" / "leaf", 0o600)
    os.unlink(upper / "bin" / "alias")
    os.symlink("elsewhere", upper / "bin" / "alias")
    os.link(upper / "etc" / "new", upper / "etc" / "new-link")
    os.setxattr(upper / "empty", "user.tag", b"1")
    set_times(upper, T0 + 100)
    for path in ["unchanged", "unchanged/file", "bin/tool", "bin/tool-hardlink", "fifo", "dangling",
                 "name with spaces é"]:
        os.utime(upper / path, (T0, T0), follow_symlinks=False)  # untouched entries keep their times
    os.utime(upper / "bin", (T0, T0))

    data = diff_tar(lower, upper)
    entries = names(data)
    assert "unchanged" not in entries and "unchanged/file" not in entries and "bin/tool" not in entries
    for expected in ["etc", "etc/conf", "etc/new", ".wh.gone-file", ".wh.gone-dir", "becomes-dir",
                     "becomes-dir/inside", "becomes-file", "deep", "deep/a", "deep/a/b",
                     "deep/a/b/leaf", "bin/alias", "empty"]:
        assert expected in entries
    assert not any(e.startswith("gone-dir/") for e in entries)
    assert entries.index("deep") < entries.index("deep/a") < entries.index("deep/a/b/leaf")
    members = {m.name: m for m in read_layer_members(io.BytesIO(data))}
    assert members["etc/new-link"].islnk() or members["etc/new"].islnk()

    target = tmp_path / "target"
    cp_a(lower, target)
    apply_layer(io.BytesIO(data), target)
    assert tree_state(target) == tree_state(upper)


def test_output_is_deterministic_and_clamped_to_source_date_epoch(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    build_tree(lower)
    cp_a(lower, upper)
    (upper / "gone-file").unlink()
    (upper / "etc" / "conf").write_text("new")
    first = diff_tar(lower, upper, source_date_epoch=T0 - 50)
    assert diff_tar(lower, upper, source_date_epoch=T0 - 50) == first
    members = read_layer_members(io.BytesIO(first))
    assert {m.mtime for m in members} == {T0 - 50}
    later = diff_tar(lower, upper, source_date_epoch=4_000_000_000)
    assert {m.mtime for m in read_layer_members(io.BytesIO(later)) if not m.name.startswith(".wh.")} == {
        int(os.stat(upper / "etc").st_mtime), int(os.stat(upper / "etc" / "conf").st_mtime)}


def test_identical_trees_give_an_empty_layer(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    build_tree(lower)
    cp_a(lower, upper)
    assert names(diff_tar(lower, upper)) == []


@pytest.mark.skipif(not ROOT, reason="overlayfs needs root")
def test_overlay_upper_dir_becomes_an_oci_layer(tmp_path):
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    build_tree(lower)
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount overlayfs here")
    try:
        (merged / "gone-file").unlink()
        subprocess.run(["rm", "-rf", str(merged / "gone-dir"), str(merged / "deep")], check=True)
        (merged / "deep").mkdir()  # opaque: the lower deep/a/b is hidden
        (merged / "deep" / "fresh").write_text("fresh")
        (merged / "etc" / "conf").write_text("changed")
        os.link(merged / "deep" / "fresh", merged / "deep" / "fresh-link")
        expected = tree_state(merged)
    finally:
        subprocess.run(["umount", str(merged)], check=True)

    assert os.getxattr(upper / "deep", "trusted.overlay.opaque") == b"y"
    buf = io.BytesIO()
    write_overlay_upper_tar(upper, buf)
    members = read_layer_members(io.BytesIO(buf.getvalue()))
    entries = [m.name for m in members]
    assert ".wh.gone-file" in entries and ".wh.gone-dir" in entries
    assert entries.index("deep") + 1 == entries.index("deep/.wh..wh..opq")
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for m in members for k in m.pax_headers)
    assert not any(m.ischr() for m in members)

    target = tmp_path / "target"
    cp_a(lower, target)
    apply_layer(io.BytesIO(buf.getvalue()), target)
    assert tree_state(target) == expected

    upper2 = tmp_path / "upper2"
    apply_layer(io.BytesIO(buf.getvalue()), upper2, whiteout_style="overlay")
    again = io.BytesIO()
    write_overlay_upper_tar(upper2, again)
    assert [m.name for m in read_layer_members(io.BytesIO(again.getvalue()))] == entries


def test_overlay_tar_needs_no_root_for_plain_trees(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("f")
    buf = io.BytesIO()
    write_overlay_upper_tar(tree, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert tar.getnames() == ["d", "d/f"]
