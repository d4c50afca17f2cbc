"""``-o type=local`` writes every file as the user running the build, as BuildKit's client does
(its filesync target resets each entry's uid/gid to the client's own); ``-o type=tar`` keeps
the image's owners, in both engines. The remote client's side (``unpack_tree``) does the same
for a ``local`` output streamed from a daemon."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from support.engine import need_runc

from pybk.core.cli.commands import main

DOCKERFILE = ("FROM busybox\n"
              "RUN mkdir -p /owned/sub /nobody && echo a > /owned/sub/a && echo n > /nobody/n "
              "&& ln -s sub/a /owned/link && chown -R 1000:1000 /owned "
              "&& chown -h 1000:1000 /owned/link && chown -R 65534:65534 /nobody "
              "&& chmod 2775 /owned/sub\n")

#: a non-root user and group no file of the trees below belongs to
UID, GID = 4321, 4322


def _entries(root: Path) -> dict[str, os.stat_result]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found["/" + str(path.relative_to(root))] = path.lstat()
    return found


def test_local_output_is_the_callers_and_tar_keeps_the_owners(busybox_layout, tmp_path):
    need_runc()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    out, tar = tmp_path / "out", tmp_path / "fs.tar"
    assert main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "--build-context", f"busybox=oci-layout://{busybox_layout}",
                 "-o", f"type=local,dest={out}", "-o", f"type=tar,dest={tar}", str(ctx)]) == 0
    entries = _entries(out)
    assert (out / "owned" / "sub" / "a").read_text() == "a\n"
    assert os.readlink(out / "owned" / "link") == "sub/a"
    assert len(entries) > 100  # busybox's applets, /etc … and what the RUN made
    others = {path: (st.st_uid, st.st_gid) for path, st in entries.items()
              if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid())}
    assert others == {}
    assert entries["/owned/sub"].st_mode & 0o7777 == 0o2775  # modes are kept
    with tarfile.open(tar) as archive:
        owners = {m.name.strip("/"): (m.uid, m.gid) for m in archive}
    assert owners["owned"] == owners["owned/sub/a"] == owners["owned/link"] == (1000, 1000)
    assert owners["nobody"] == owners["nobody/n"] == (65534, 65534)
    assert owners["bin/busybox"] == (0, 0)


#: runs in a child that imports what it needs, then becomes UID:GID (the interpreter's own
#: files may not be readable by that user) and exports a directory-backed result
EXPORT_AS_USER = r"""
import contextlib, hashlib, json, os, sys  # json, hashlib: imported lazily by the exporter
from pybk.core.interfaces import BuildResultView
from pybk.exporters.local import LocalExporter, LocalOptions
src, dest, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

class Tree(BuildResultView):
    @contextlib.contextmanager
    def mount(self):
        yield src

instance = LocalExporter().resolve(LocalOptions(dest=dest))
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
instance.export(Tree(), {})
"""

#: the remote client's unpacking of a ``local`` output's tar stream, as UID:GID
UNPACK_AS_USER = r"""
import os, sys, tarfile  # tarfile: imported lazily by unpack_tree
from pybk.core.remote.clientside import unpack_tree
stream, dest, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
with open(stream, "rb") as f:
    unpack_tree(f, dest)
"""


@pytest.fixture
def shared_dir():
    """A directory other users can reach (pytest's own are private to root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root to run a process as another user (CI=true: required)")
        pytest.skip("needs root to run a process as another user")
    top = Path(tempfile.mkdtemp(prefix="pybk-owners-"))
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _as_user(script: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-c", script, *args, str(UID), str(GID)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_local_export_by_a_non_root_user_gives_it_every_file(shared_dir):
    src = shared_dir / "src"
    (src / "owned" / "sub").mkdir(parents=True)
    (src / "owned" / "sub" / "a").write_text("a\n")
    (src / "nobody").mkdir()
    (src / "nobody" / "n").write_text("n\n")
    os.symlink("sub/a", src / "owned" / "link")
    for path in ("owned", "owned/sub", "owned/sub/a", "owned/link"):
        os.lchown(src / path, 1000, 1000)
    for path in ("nobody", "nobody/n"):
        os.lchown(src / path, 65534, 65534)
    os.chmod(src / "owned" / "sub", 0o2775)
    dest = shared_dir / "dest"
    dest.mkdir()
    os.chown(dest, UID, GID)
    _as_user(EXPORT_AS_USER, str(src), str(dest))
    entries = _entries(dest)
    assert set(entries) == {"/owned", "/owned/sub", "/owned/sub/a", "/owned/link", "/nobody",
                            "/nobody/n"}
    assert {(st.st_uid, st.st_gid) for st in entries.values()} == {(UID, GID)}
    assert (dest / "nobody" / "n").read_text() == "n\n"
    assert entries["/owned/sub"].st_mode & 0o7777 == 0o2775


def test_remote_client_writes_a_local_output_as_its_user(shared_dir):
    stream = shared_dir / "out.tar"
    with tarfile.open(stream, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, owner, data in (("owned", 1000, None), ("owned/a", 1000, b"a\n"),
                                  ("nobody", 65534, None), ("nobody/n", 65534, b"n\n")):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = owner
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    os.chmod(stream, 0o644)
    dest = shared_dir / "dest"
    dest.mkdir()
    os.chown(dest, UID, GID)
    _as_user(UNPACK_AS_USER, str(stream), str(dest))
    entries = _entries(dest)
    assert set(entries) == {"/owned", "/owned/a", "/nobody", "/nobody/n"}
    assert {(st.st_uid, st.st_gid) for st in entries.values()} == {(UID, GID)}
    assert (dest / "owned" / "a").read_text() == "a\n"


def test_remote_client_writes_a_local_output_as_its_user_root_too(tmp_path):
    from pybk.core.remote.clientside import unpack_tree

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.uid, info.gid, info.size = 1000, 65534, 2
        tar.addfile(info, io.BytesIO(b"f\n"))
    data.seek(0)
    unpack_tree(data, str(tmp_path / "out"))
    st = (tmp_path / "out" / "f").lstat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
