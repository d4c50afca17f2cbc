"""apply_layer: safe unpacking, metadata, compression and whiteouts."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from pybk.core.errors import InputError
from pybk.core.fs.archive import apply_layer

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, device nodes, trusted xattrs)")


def entry(name: str, kind: str = "file", data: bytes = b"", *, mode: int | None = None, link: str = "",
          uid: int = 0, gid: int = 0, mtime: float = 1_600_000_000, xattrs: dict | None = None,
          dev: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    info.linkname, info.uid, info.gid, info.mtime = link, uid, gid, mtime
    info.devmajor, info.devminor = dev
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    if kind == "file":
        info.size = len(data)
        return info, data
    return info, None


def make_tar(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def snapshot(directory: Path) -> dict[str, tuple]:
    """Everything observable about a tree (to prove it was not touched)."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            result[os.path.relpath(path, directory)] = (st.st_mode, st.st_nlink, st.st_mtime_ns, content)
    return result


@pytest.fixture
def sandbox(tmp_path):
    """``(dest, outside)``: unpack into dest; outside holds a sentinel that must survive."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "sentinel").write_text("do not touch")
    before = snapshot(outside)
    yield dest, outside
    assert snapshot(outside) == before, "something was written outside the destination"
    assert not (tmp_path / "pwned").exists()


def apply(data: bytes, dest: Path, **kw) -> int:
    return apply_layer(io.BytesIO(data), dest, media_type="application/vnd.oci.image.layer.v1.tar", **kw)


# ------------------------------------------------------------------------------------------
# Escapes


def test_dotdot_names_are_refused(sandbox):
    dest, outside = sandbox
    for name in ["../outside/pwned", "a/../../outside/pwned", "../pwned"]:
        with pytest.raises(InputError, match="outside the layer root"):
            apply(make_tar(entry(name, data=b"x")), dest)


def test_dotdot_that_stays_inside_is_fine(sandbox):
    dest, _ = sandbox
    apply(make_tar(entry("a/b/../c", data=b"x")), dest)
    assert (dest / "a" / "c").read_bytes() == b"x"


def test_absolute_names_land_inside(sandbox):
    dest, outside = sandbox
    apply(make_tar(entry(f"{outside}/pwned", data=b"x"), entry("/etc/passwd", data=b"root")), dest)
    assert (dest / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"
    assert (dest / "etc" / "passwd").read_bytes() == b"root"


@pytest.mark.parametrize("target", ["ABS", "../../outside", "../../../../../../../../outside", "/../outside"])
def test_symlink_then_write_through_it_stays_inside(sandbox, target):
    dest, outside = sandbox
    target = str(outside) if target == "ABS" else target
    apply(make_tar(entry("link", "symlink", link=target),
                   entry("link/pwned", data=b"x"),
                   entry("link/sub/deeper", data=b"y")), dest)
    assert os.readlink(dest / "link") == target
    landed = [p for p in dest.rglob("pwned")]
    assert len(landed) == 1 and landed[0].read_bytes() == b"x"
    assert os.path.realpath(landed[0]).startswith(str(dest) + "/")


def test_symlinked_directory_chain_escape(sandbox):
    dest, outside = sandbox
    apply(make_tar(entry("a", "dir"), entry("a/up", "symlink", link=".."),
                   entry("a/up2", "symlink", link="up/a/up/.."),
                   entry("a/up2/a/up2/pwned", data=b"x")), dest)
    assert (dest / "pwned").read_bytes() == b"x"  # every ".." stopped at the root


def test_existing_symlink_is_replaced_not_written_through(sandbox):
    dest, outside = sandbox
    apply(make_tar(entry("evil", "symlink", link=str(outside / "sentinel")),
                   entry("evil", data=b"overwritten?"),
                   entry("evildir", "symlink", link=str(outside)),
                   entry("evildir", "dir")), dest)
    assert (dest / "evil").read_bytes() == b"overwritten?" and not (dest / "evil").is_symlink()
    assert (dest / "evildir").is_dir() and not (dest / "evildir").is_symlink()


def test_symlink_loop_is_an_error(sandbox):
    dest, _ = sandbox
    with pytest.raises(InputError, match="too many levels of symbolic links"):
        apply(make_tar(entry("a", "symlink", link="b"), entry("b", "symlink", link="a"),
                       entry("a/x", data=b"x")), dest)


@pytest.mark.parametrize("link", ["../outside/sentinel", "ABS", "via/sentinel", "/../../outside/sentinel"])
def test_hardlinks_to_outside_are_refused(sandbox, link):
    dest, outside = sandbox
    link = str(outside / "sentinel") if link == "ABS" else link
    with pytest.raises(InputError, match="hard link|outside the layer root"):
        apply(make_tar(entry("via", "symlink", link=str(outside)),
                       entry("stolen", "hardlink", link=link)), dest)
    assert not (dest / "stolen").exists()
    assert os.stat(outside / "sentinel").st_nlink == 1


def test_hardlink_inside_and_file_through_parent_that_is_a_file(sandbox):
    dest, _ = sandbox
    apply(make_tar(entry("f", data=b"data"), entry("g", "hardlink", link="/f")), dest)
    assert os.stat(dest / "f").st_ino == os.stat(dest / "g").st_ino
    with pytest.raises(InputError, match="is not a directory"):
        apply(make_tar(entry("f/x", data=b"x")), dest)


# ------------------------------------------------------------------------------------------
# Metadata and compression


def test_metadata_is_preserved(tmp_path):
    dest = tmp_path / "dest"
    apply(make_tar(
        entry("dir", "dir", mode=0o750, uid=12, gid=34, mtime=1_500_000_000),
        entry("dir/suid", data=b"#!", mode=0o4755, uid=12, gid=34, mtime=1_400_000_000.5),
        entry("dir/link", "symlink", link="suid", uid=5, gid=6),
        entry("dir/attrs", data=b"a", xattrs={"user.pybk": "hello", "trusted.overlay.opaque": "y"}),
        entry("dir/fifo", "fifo", mode=0o600),
    ), dest)
    d = os.lstat(dest / "dir")
    assert stat.S_IMODE(d.st_mode) == 0o750 and d.st_mtime == 1_500_000_000
    s = os.lstat(dest / "dir" / "suid")
    assert stat.S_IMODE(s.st_mode) == 0o4755 and s.st_mtime_ns == 1_400_000_000_500_000_000
    assert os.readlink(dest / "dir" / "link") == "suid"
    assert os.getxattr(dest / "dir" / "attrs", "user.pybk") == b"hello"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "dir" / "attrs")
    assert stat.S_ISFIFO(os.lstat(dest / "dir" / "fifo").st_mode)
    if ROOT:
        assert (s.st_uid, s.st_gid) == (12, 34)
        link = os.lstat(dest / "dir" / "link")
        assert (link.st_uid, link.st_gid) == (5, 6)


@needs_root
def test_device_nodes_when_root(tmp_path):
    apply(make_tar(entry("null", "char", dev=(1, 3), mode=0o666)), tmp_path / "d")
    st = os.lstat(tmp_path / "d" / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions_by_media_type_and_sniffing(tmp_path, compression):
    data = make_tar(entry("a", data=b"A" * 10000), entry("b/c", data=b"C"))
    blob = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "none": bytes}[compression](data)
    media_type = "application/vnd.oci.image.layer.v1.tar" + ("" if compression == "none" else f"+{compression}")
    path = tmp_path / "layer"
    path.write_bytes(blob)
    assert apply_layer(path, tmp_path / "by-type", media_type=media_type) == len(data)
    assert apply_layer(io.BytesIO(blob), tmp_path / "sniffed") == len(data)
    for d in ("by-type", "sniffed"):
        assert (tmp_path / d / "a").read_bytes() == b"A" * 10000
        assert (tmp_path / d / "b" / "c").read_bytes() == b"C"


def test_corrupt_archive_is_an_input_error(tmp_path):
    blob = gzip.compress(make_tar(entry("a", data=b"A" * 100000)))
    with pytest.raises(InputError, match="corrupt layer archive"):
        apply_layer(io.BytesIO(blob[: len(blob) // 2]), tmp_path / "d",
                    media_type="application/vnd.docker.image.rootfs.diff.tar.gzip")
    with pytest.raises(InputError, match="unsupported layer media type"):
        apply_layer(io.BytesIO(b""), tmp_path / "d", media_type="text/plain")


# ------------------------------------------------------------------------------------------
# Whiteouts


def lower_tree(dest: Path) -> None:
    apply(make_tar(
        entry("keep", data=b"k"), entry("gone", data=b"g"), entry("gonedir", "dir"),
        entry("gonedir/inner", data=b"i"), entry("opq", "dir"), entry("opq/old1", data=b"1"),
        entry("opq/olddir", "dir"), entry("opq/olddir/x", data=b"x"), entry("link", "symlink", link="keep"),
    ), dest)


def test_whiteouts_delete_and_opaque_dirs_hide_lower_content(tmp_path):
    dest = tmp_path / "rootfs"
    lower_tree(dest)
    apply(make_tar(
        entry(".wh.gone"), entry(".wh.gonedir"), entry(".wh.link"), entry(".wh.never-existed"),
        entry("opq/new", data=b"n"), entry("opq/.wh..wh..opq"),  # marker after new content
        entry("fresh", data=b"f"), entry(".wh.fresh"),  # same-layer whiteouts do not apply
        entry("missing-parent/.wh.x"),
    ), dest)
    assert sorted(os.listdir(dest)) == ["fresh", "keep", "opq"]
    assert sorted(os.listdir(dest / "opq")) == ["new"]
    assert (dest / "fresh").read_bytes() == b"f"


def test_malformed_whiteout(tmp_path):
    with pytest.raises(InputError, match="malformed whiteout"):
        apply(make_tar(entry("a/.wh..")), tmp_path / "d")


@needs_root
def test_overlay_style_whiteouts(tmp_path):
    upper = tmp_path / "upper"
    apply(make_tar(entry("dir", "dir"), entry("dir/.wh..wh..opq"), entry("dir/new", data=b"n"),
                   entry(".wh.gone"), entry("sub/.wh.deep")), upper, whiteout_style="overlay")
    for path in (upper / "gone", upper / "sub" / "deep"):
        st = os.lstat(path)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "dir", "trusted.overlay.opaque") == b"y"
    assert (upper / "dir" / "new").read_bytes() == b"n"


def test_busybox_layer_unpacks(busybox_layout, tmp_path):
    import json

    index = json.loads((busybox_layout / "index.json").read_text())
    blobs = busybox_layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    layer = manifest["layers"][0]
    size = apply_layer(blobs / layer["digest"].split(":")[1], tmp_path / "rootfs", media_type=layer["mediaType"])
    rootfs = tmp_path / "rootfs"
    assert size > os.path.getsize("/bin/busybox")
    assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert stat.S_IMODE(os.stat(rootfs / "bin" / "busybox").st_mode) == 0o755
    assert os.readlink(rootfs / "bin" / "sh") == "/bin/busybox"
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
    assert "tester:x:1000:1000" in (rootfs / "etc" / "passwd").read_text()
    assert os.stat(rootfs / "etc" / "passwd").st_mtime == 0
