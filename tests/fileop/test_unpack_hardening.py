"""ADD of a local archive: hostile tars (hard links to symlinks, overlay xattrs) stay harmless."""

from __future__ import annotations

import io
import os
import stat
import tarfile

from pybk.core.fs import fileop
from pybk.core.fs.fileop import CopyOptions

DOCKERFILE = dict(create_dest_path=True, allow_wildcard=True, allow_empty_wildcard=True,
                  follow_symlink=True, dir_copy_contents=True,
                  attempt_unpack_docker_compatibility=True)


def _add(tmp_path, tar: bytes):
    s = tmp_path / "s"
    s.mkdir()
    (s / "x.tar").write_bytes(tar)
    d = tmp_path / "d"
    fileop.copy(str(s), "x.tar", str(d), "/", CopyOptions(**DOCKERFILE))
    return d


def _tar(*infos: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in infos:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _link_following_symlinks_by_default(monkeypatch):
    """Make ``os.link`` behave as on CPython >= 3.14 (Linux): the default follows symlinks."""
    real = os.link

    def link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
        if follow_symlinks:
            src = os.path.realpath(src)
        return real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)

    monkeypatch.setattr(os, "link", link)


def test_hardlink_to_a_symlink_links_the_symlink_not_the_host_file(tmp_path, monkeypatch):
    host = tmp_path / "host-secret"
    host.write_bytes(b"host only")
    sym = tarfile.TarInfo("s")
    sym.type, sym.linkname = tarfile.SYMTYPE, str(host)
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "s"
    _link_following_symlinks_by_default(monkeypatch)
    d = _add(tmp_path, _tar((sym, None), (hard, None)))
    st = os.lstat(d / "h")
    assert stat.S_ISLNK(st.st_mode) and os.readlink(d / "h") == str(host)
    assert st.st_ino == os.lstat(d / "s").st_ino
    assert os.lstat(host).st_nlink == 1 and host.read_bytes() == b"host only"


def test_overlay_xattrs_from_an_added_tar_are_dropped(tmp_path):
    pax = {"SCHILY.xattr.trusted.overlay.opaque": "y",
           "SCHILY.xattr.trusted.overlay.redirect": "/elsewhere",
           "SCHILY.xattr.user.overlay.opaque": "y",
           "SCHILY.xattr.user.kept": "yes"}
    dir_info = tarfile.TarInfo("dir")
    dir_info.type, dir_info.mode, dir_info.pax_headers = tarfile.DIRTYPE, 0o755, dict(pax)
    file_info = tarfile.TarInfo("dir/f")
    file_info.size, file_info.mode, file_info.pax_headers = 2, 0o644, dict(pax)
    d = _add(tmp_path, _tar((dir_info, None), (file_info, b"hi")))
    for path in (d / "dir", d / "dir" / "f"):
        names = os.listxattr(path)
        assert "user.kept" in names
        assert not [n for n in names if ".overlay." in n], names


def test_layers_too_link_the_symlink_itself(tmp_path, monkeypatch):
    from pybk.core.fs.archive import apply_layer

    host = tmp_path / "host-secret"
    host.write_bytes(b"host only")
    sym = tarfile.TarInfo("s")
    sym.type, sym.linkname = tarfile.SYMTYPE, str(host)
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "s"
    _link_following_symlinks_by_default(monkeypatch)
    apply_layer(io.BytesIO(_tar((sym, None), (hard, None))), tmp_path / "layer")
    assert stat.S_ISLNK(os.lstat(tmp_path / "layer" / "h").st_mode)
    assert os.lstat(host).st_nlink == 1
