"""The layer tar writer writes exactly the bytes ``tarfile`` writes (PAX, stream mode), for every
kind of entry, so layer diffIDs and digests do not depend on which path formatted a header."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybk.core.fs import archive, tarwriter
from pybk.core.fs.tarwriter import fast_headers, ustar_header

ROOT = os.geteuid() == 0
T0 = 1_700_000_000


class TarfileWriter:
    """The reference: every entry through ``tarfile.TarFile.addfile``."""

    def __init__(self, out, source_date_epoch):
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.epoch = source_date_epoch
        self.links: dict = {}
        self.emitted_dirs: set = set()

    def _mtime(self, seconds):
        return min(seconds, self.epoch) if self.epoch is not None else seconds

    def add(self, path, rel, st_):
        mode = st_.st_mode
        info = tarfile.TarInfo(rel + "/" if stat.S_ISDIR(mode) else rel)
        info.mode, info.uid, info.gid = stat.S_IMODE(mode), st_.st_uid, st_.st_gid
        info.uname = info.gname = ""
        info.mtime = self._mtime(st_.st_mtime_ns // 1_000_000_000)
        xattrs = {k: v for k, v in tarwriter.read_xattrs(path).items()
                  if not k.startswith(("trusted.overlay.", "user.overlay."))}
        info.pax_headers = {"SCHILY.xattr." + k: xattrs[k].decode("utf-8", "surrogateescape")
                            for k in sorted(xattrs)}
        body = None
        if stat.S_ISREG(mode):
            key = (st_.st_dev, st_.st_ino)
            if st_.st_nlink > 1 and key in self.links:
                info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
            else:
                if st_.st_nlink > 1:
                    self.links[key] = rel
                info.type, info.size, body = tarfile.REGTYPE, st_.st_size, path
        elif stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            self.emitted_dirs.add(rel)
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st_.st_rdev), os.minor(st_.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            return
        if body is None:
            self.tar.addfile(info)
        else:
            with open(body, "rb") as f:
                self.tar.addfile(info, f)

    def whiteout(self, parent_rel, name, mtime):
        info = tarfile.TarInfo(f"{parent_rel}/{name}" if parent_rel else name)
        info.mode, info.uid, info.gid, info.size = 0, 0, 0, 0
        info.uname = info.gname = ""
        info.mtime = self._mtime(mtime)
        self.tar.addfile(info)

    def close(self):
        self.tar.close()


def build_tree(root: Path) -> None:
    """Every kind of entry, names too long or not ASCII for a plain header, xattrs, big files."""
    (root / "big").mkdir(parents=True)
    (root / "big" / "two-mib").write_bytes(os.urandom(2 << 20) + b"tail")
    (root / "big" / "exactly-one-mib").write_bytes(os.urandom(1 << 20))
    (root / "big" / "block").write_bytes(b"b" * 512)
    (root / "empty-file").write_bytes(b"")
    (root / "small.txt").write_text("hello\n")
    os.chmod(root / "small.txt", 0o4755)
    os.link(root / "small.txt", root / "small-link")
    os.symlink("small.txt", root / "sym")
    os.symlink("x" * 150, root / "long-target")
    (root / ("n" * 99)).write_text("name of 99")
    (root / ("m" * 100)).write_text("name of 100")
    (root / "deep" / ("d" * 60) / ("e" * 60)).mkdir(parents=True)
    (root / "deep" / ("d" * 60) / ("e" * 60) / "f").write_text("long path")
    (root / "naïve é").write_text("utf-8 name")
    (root / os.fsdecode(b"bad-\xff-name")).write_text("not utf-8")
    (root / "attrs").write_text("x")
    os.setxattr(root / "attrs", "user.pybk", b"\x00\xffbinary")
    os.mkfifo(root / "fifo")
    (root / "opaque").mkdir()
    if ROOT:
        os.chown(root / "small.txt", 1000, 2000)
        os.chown(root / "attrs", 2 ** 21 + 5, 7, follow_symlinks=False)  # too big for octal
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "whiteout", stat.S_IFCHR, 0)
        with contextlib.suppress(OSError):
            os.setxattr(root / "opaque", "trusted.overlay.opaque", b"y")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (T0, T0), follow_symlinks=False)
    os.utime(root / "small.txt", ns=(T0 * 10**9, 2 ** 33 * 10**9 + 5))  # beyond 11 octal digits


def _both(monkeypatch, write) -> tuple[bytes, bytes]:
    out = io.BytesIO()
    write(out)
    monkeypatch.setattr(archive, "LayerWriter", TarfileWriter)
    ref = io.BytesIO()
    write(ref)
    monkeypatch.undo()
    return out.getvalue(), ref.getvalue()


def test_this_python_takes_the_fast_path():
    assert fast_headers()


@pytest.mark.parametrize("epoch", [None, T0 - 10])
def test_overlay_upper_tar_is_what_tarfile_writes(tmp_path, monkeypatch, epoch):
    build_tree(tmp_path / "tree")
    ours, reference = _both(monkeypatch, lambda out: archive.write_overlay_upper_tar(
        tmp_path / "tree", out, source_date_epoch=epoch))
    assert ours == reference
    with tarfile.open(fileobj=io.BytesIO(ours), mode="r|") as tar:
        names = [m.name for m in tar]
    assert "small-link" in names and "m" * 100 in names


def test_diff_tar_is_what_tarfile_writes(tmp_path, monkeypatch):
    build_tree(tmp_path / "lower")
    build_tree(tmp_path / "upper")
    (tmp_path / "upper" / "empty-file").unlink()
    (tmp_path / "upper" / "big" / "block").write_bytes(b"c" * 513)
    ours, reference = _both(monkeypatch, lambda out: archive.write_diff_tar(
        tmp_path / "lower", tmp_path / "upper", out))
    assert ours == reference


def test_a_file_that_shrinks_while_archived_fails(tmp_path, monkeypatch):
    from pybk.core.errors import InputError

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"x" * 5000)
    real_lstat = os.lstat

    def lstat(path, *a, **kw):
        found = real_lstat(path, *a, **kw)
        if str(path).endswith("/f"):
            (tmp_path / "tree" / "f").write_bytes(b"x" * 10)
        return found

    monkeypatch.setattr(archive.os, "lstat", lstat)
    with pytest.raises(InputError, match="changed size"):
        archive.write_overlay_upper_tar(tmp_path / "tree", io.BytesIO())


_names = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=110)


@settings(max_examples=300, deadline=None)
@given(name=_names, linkname=st.one_of(st.just(""), _names),
       mode=st.integers(0, 0o7777), uid=st.integers(0, 8 ** 7 + 2),
       gid=st.integers(0, 8 ** 7 + 2), size=st.integers(0, 8 ** 11 + 2),
       mtime=st.integers(0, 8 ** 11 + 2),
       kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                             tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]))
def test_plain_headers_match_tarfile_or_step_aside(name, linkname, mode, uid, gid, size, mtime,
                                                   kind):
    header = ustar_header(name, mode, uid, gid, size, mtime, kind, linkname)
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    info.type, info.linkname, info.uname, info.gname = kind, linkname, "", ""
    expected = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    if header is None:  # needs an extended header or device numbers: tarfile writes it
        assert len(expected) > 512 or kind == tarfile.CHRTYPE
    else:
        assert header == expected
