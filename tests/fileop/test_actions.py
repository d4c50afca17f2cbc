"""FileActionMkFile, MkDir, Rm and Symlink, and their confinement to the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.fs import fileop, rootpath

TS = 1_650_000_000_123_456_789


@pytest.fixture
def root(tmp_path: Path, trees) -> Path:
    return trees.make(tmp_path / "root", {
        "etc/passwd": b"root:x:0:0::/root:/bin/sh\nweb:x:33:34::/var/www:/bin/sh\n",
        "etc/group": b"root:x:0:\nweb:x:34:\nops:x:99:web\n",
        "dir/f": b"f",
        "dir/g.log": b"g",
        "dir/h.log": b"h",
    })


def _owner(user, group=None):
    from pybk.core.llb.ops import ChownOpt, NamedUserOpt, UserOpt

    def opt(v):
        if v is None:
            return None
        return UserOpt(user=v) if isinstance(v, int) else UserOpt(user=NamedUserOpt(name=v))

    return ChownOpt(user=opt(user), group=opt(group))


def test_mkfile(root, trees, root_only):
    fileop.mkfile(str(root), "/dir/new.txt", 0o640, b"hello", _owner("web"), TS)
    fileop.mkfile(str(root), "dir/f", 0o4755, b"replaced", _owner(7, "ops"))
    got = trees.describe(root, owners=True)
    assert got["dir/new.txt"] == ("f", "0o640", b"hello", 33, 34)
    assert got["dir/f"] == ("f", "0o755", b"replaced", 7, 99)  # special bits dropped, like BuildKit
    assert os.lstat(root / "dir/new.txt").st_mtime_ns == TS


def test_mkfile_errors(root):
    with pytest.raises(BuildError, match="mkfile /nodir/x: parent directory does not exist"):
        fileop.mkfile(str(root), "/nodir/x", 0o644, b"")
    with pytest.raises(BuildError, match="mkfile /dir: is a directory"):
        fileop.mkfile(str(root), "/dir", 0o644, b"")


def test_mkdir(root, trees, root_only):
    fileop.mkdir(str(root), "/a/b/c", 0o750, make_parents=True, owner=_owner("web"), timestamp=TS)
    fileop.mkdir(str(root), "/single", 0o700)
    fileop.mkdir(str(root), "/dir", 0o700)  # exists: left alone
    got = trees.describe(root, owners=True)
    for rel in ("a", "a/b", "a/b/c"):
        assert got[rel] == ("d", "0o750", None, 33, 34)
        assert os.lstat(root / rel).st_mtime_ns == TS
    assert got["single"][:2] == ("d", "0o700")
    assert got["dir"][:2] == ("d", "0o755")
    with pytest.raises(BuildError, match="mkdir /x/y: parent directory does not exist"):
        fileop.mkdir(str(root), "/x/y", 0o755)


def test_rm(root, trees):
    fileop.rm(str(root), "/dir/*.log", allow_wildcard=True)
    assert sorted(trees.describe(root)) == ["dir", "dir/f", "etc", "etc/group", "etc/passwd"]
    fileop.rm(str(root), "/nothing", allow_not_found=True)
    fileop.rm(str(root), "/nothing*", allow_wildcard=True)
    with pytest.raises(BuildError, match='rm "/nothing": not found'):
        fileop.rm(str(root), "/nothing")
    fileop.rm(str(root), "/dir")
    assert not (root / "dir").exists()
    with pytest.raises(BuildError, match="refusing to remove the root"):
        fileop.rm(str(root), "/../..")


def test_symlink(root, trees, root_only):
    fileop.symlink(str(root), "../etc/passwd", "/dir/pw", _owner(5, 6), TS)
    got = trees.describe(root, owners=True)
    assert got["dir/pw"] == ("l", None, "../etc/passwd", 5, 6)
    assert os.lstat(root / "dir/pw").st_mtime_ns == TS
    with pytest.raises(BuildError, match="symlink /dir/pw: file exists"):
        fileop.symlink(str(root), "x", "/dir/pw")


def test_actions_stay_inside_the_root(tmp_path, root, trees, outside):
    trees.make(root, {"out": ("->", str(outside)), "up": ("->", "../../..")})
    before = trees.describe(outside)
    fileop.rm(str(root), "/out")  # removes the link, not its target
    assert not os.path.lexists(root / "out")
    fileop.rm(str(root), "/../outside/secret.txt", allow_not_found=True)
    fileop.rm(str(root), "/up/outside", allow_not_found=True)
    fileop.mkdir(str(root), "/up/outside/made", 0o755, make_parents=True)
    fileop.mkfile(str(root), "/up/secret.txt", 0o644, b"in root")
    fileop.symlink(str(root), "/etc/shadow", "/up/sym")
    assert trees.describe(outside) == before
    assert (root / "outside" / "made").is_dir()
    assert (root / "secret.txt").read_bytes() == b"in root"
    assert os.readlink(root / "sym") == "/etc/shadow"


def test_chown_names_resolved_in_another_root(tmp_path, root, trees, root_only):
    other = trees.make(tmp_path / "other", {"etc/passwd": b"web:x:1001:1002::/:/bin/sh\n"})
    fileop.mkfile(str(root), "/x", 0o644, b"", _owner("web"), owner_root=str(other))
    assert trees.describe(root, owners=True)["x"][3:] == (1001, 1002)


def test_resolve_in_root():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "usr/lib"))
        os.symlink("usr/lib", os.path.join(d, "lib"))
        os.symlink("/usr", os.path.join(d, "abs"))
        os.symlink("../../../../usr", os.path.join(d, "usr/lib/up"))
        r = rootpath.resolve_in_root
        assert r(d, "/lib/x") == os.path.join(d, "usr/lib/x")
        assert r(d, "/abs/lib") == os.path.join(d, "usr/lib")
        assert r(d, "/usr/lib/up/lib") == os.path.join(d, "usr/lib")
        assert r(d, "/../../..") == d
        assert r(d, "lib", follow_final=False) == os.path.join(d, "lib")
        assert r(d, "/missing/../lib/y") == os.path.join(d, "usr/lib/y")
