"""pybk.core.store.mounts: mount(2)/umount2(2) helpers and mountinfo scanning (root only)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pybk.core.interfaces import Mount
from pybk.core.store.mounts import (
    MS_BIND,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    cleanup_stale_mounts,
    find_mounts_under,
    mount,
    mount_all,
    mounted,
    parse_options,
    unmount,
    unmount_all,
)


def _mount_options(target: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in reversed(f.readlines()):
            fields = line.split()
            if fields[4] == str(target):
                return set(fields[5].split(","))
    raise AssertionError(f"{target} is not mounted")


def test_parse_options_splits_flags_propagation_and_data():
    flags, propagation, data = parse_options(
        ["rbind", "ro", "nosuid", "rprivate", "size=1m", "rw", "mode=755"])
    assert flags == MS_BIND | MS_REC | MS_NOSUID
    assert not flags & MS_RDONLY  # a later "rw" wins
    assert propagation
    assert data == ["size=1m", "mode=755"]


def test_read_only_bind_is_remounted(needs_root, tmp_path):
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    target.mkdir()
    (src / "f").write_text("x")
    mount(Mount("bind", str(src), ("rbind", "ro")), str(target))
    try:
        assert "ro" in _mount_options(target)
        assert (target / "f").read_text() == "x"
        with pytest.raises(OSError) as info:
            (target / "g").write_text("y")
        assert info.value.errno == errno.EROFS
    finally:
        unmount(str(target))
    assert find_mounts_under(str(target)) == []


def test_tmpfs_and_overlay_stack(needs_root, tmp_path):
    lower, upper, work, target = (tmp_path / n for n in ("lower", "upper", "work", "target"))
    for d in (lower, upper, work, target):
        d.mkdir()
    (lower / "base").write_text("lower")
    mount_all([Mount("overlay", "overlay",
                     (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))],
              str(target))
    try:
        (target / "new").write_text("upper")
        assert sorted(os.listdir(target)) == ["base", "new"]
        assert (upper / "new").read_text() == "upper"
        assert not (lower / "new").exists()
        # a tmpfs on a sub-directory, taken down with everything else by unmount_all
        (target / "sub").mkdir()
        mount(Mount("tmpfs", "tmpfs", ("size=1m", "mode=700")), str(target / "sub"))
        st = os.statvfs(target / "sub")
        assert st.f_blocks * st.f_frsize == 1024 * 1024
        assert os.stat(target / "sub").st_mode & 0o777 == 0o700
    finally:
        unmount_all(str(target))
    assert find_mounts_under(str(tmp_path)) == []
    assert os.listdir(target) == []


def test_overlay_with_many_long_lowerdirs(needs_root, tmp_path):
    layers = []
    for i in range(60):
        layer = tmp_path / ("layer-" + "x" * 80 + f"-{i:02d}")
        layer.mkdir()
        (layer / f"f{i:02d}").write_text(str(i))
        layers.append(str(layer))
    opts = (f"lowerdir={':'.join(layers)}",)
    assert len(opts[0]) > os.sysconf("SC_PAGE_SIZE")
    with mounted([Mount("overlay", "overlay", opts)]) as target:
        names = sorted(os.listdir(target))
        assert names == [f"f{i:02d}" for i in range(60)]
    assert find_mounts_under(target) == []
    assert not os.path.exists(target)


def test_mounted_context_manager_cleans_up(needs_root, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("hi")
    with mounted([Mount("bind", str(src), ("rbind", "ro"))]) as target:
        assert Path(target, "hello").read_text() == "hi"
        assert find_mounts_under(target) == [target]
    assert not os.path.exists(target)
    assert (src / "hello").read_text() == "hi"


def test_failed_mount_is_oserror_naming_target(needs_root, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(OSError) as info:
        mount_all([Mount("tmpfs", "tmpfs", ()),
                   Mount("bind", str(tmp_path / "missing"), ("rbind",))], str(target))
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(target)
    assert str(target) in str(info.value)
    assert find_mounts_under(str(target)) == []  # the tmpfs was undone
    with pytest.raises(OSError) as info:
        unmount(str(target))
    assert info.value.errno == errno.EINVAL and info.value.filename == str(target)


def test_find_mounts_under_decodes_escapes(needs_root, tmp_path):
    target = tmp_path / "with space\tand tab"
    target.mkdir(parents=True)
    mount(Mount("tmpfs", "tmpfs", ()), str(target))
    try:
        assert find_mounts_under(str(tmp_path)) == [str(target)]
        assert find_mounts_under(str(tmp_path / "with")) == []  # a prefix, not a parent
    finally:
        unmount(str(target))


def test_cleanup_stale_mounts_unmounts_deepest_first(needs_root, tmp_path):
    base = tmp_path / "leaked"
    base.mkdir()
    mount(Mount("tmpfs", "tmpfs", ()), str(base))
    (base / "a").mkdir()
    mount(Mount("tmpfs", "tmpfs", ()), str(base / "a"))
    (base / "a" / "b").mkdir()
    mount(Mount("bind", str(tmp_path), ("bind",)), str(base / "a" / "b"))
    mount(Mount("tmpfs", "tmpfs", ()), str(base))  # stacked on top
    assert len(find_mounts_under(str(base))) == 4
    removed = cleanup_stale_mounts(str(base))
    assert removed[:2] == [str(base / "a" / "b"), str(base / "a")]
    assert len(removed) == 4
    assert find_mounts_under(str(tmp_path)) == []
    assert cleanup_stale_mounts(str(base)) == []
