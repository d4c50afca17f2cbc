"""FileActionCopy on real directories: every option, with the resulting trees asserted."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.fs import fileop
from pybk.core.fs.fileop import CopyOptions

#: what the Dockerfile frontend sets for COPY
DOCKERFILE = dict(create_dest_path=True, allow_wildcard=True, allow_empty_wildcard=True,
                  follow_symlink=True, dir_copy_contents=True)


def cp(src: Path, src_path: str, dest: Path, dest_path: str, **opts) -> None:
    fileop.copy(str(src), src_path, str(dest), dest_path, CopyOptions(**opts))


@pytest.fixture
def src(tmp_path: Path, trees) -> Path:
    return trees.make(tmp_path / "src", {
        "a.txt": (b"A", 0o644),
        "b.txt": (b"B", 0o600),
        "c.md": b"C",
        "run.sh": (b"#!/bin/sh\n", 0o755),
        "dir/one": b"1",
        "dir/sub/two": b"2",
        "dir2/three": b"3",
        "link-to-a": ("->", "a.txt"),
        "link-to-dir": ("->", "dir"),
    })


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


# --- Docker's COPY rules: wildcards, trailing slashes, directories --------------------------------


@pytest.mark.parametrize(("src_path", "dest_path", "expected"), [
    ("a.txt", "/new", {"new": ("f", "0o644", b"A")}),
    ("a.txt", "/new/", {"new": ("d", "0o755", None), "new/a.txt": ("f", "0o644", b"A")}),
    ("/a.txt", "/x/y/z.txt", {"x": ("d", "0o755", None), "x/y": ("d", "0o755", None),
                              "x/y/z.txt": ("f", "0o644", b"A")}),
    ("dir", "/d", {"d": ("d", "0o755", None), "d/one": ("f", "0o644", b"1"),
                   "d/sub": ("d", "0o755", None), "d/sub/two": ("f", "0o644", b"2")}),
    ("dir/", "/d/", {"d": ("d", "0o755", None), "d/one": ("f", "0o644", b"1"),
                     "d/sub": ("d", "0o755", None), "d/sub/two": ("f", "0o644", b"2")}),
    ("*.txt", "/t/", {"t": ("d", "0o755", None), "t/a.txt": ("f", "0o644", b"A"),
                      "t/b.txt": ("f", "0o600", b"B")}),
    ("?.md", "/t/", {"t": ("d", "0o755", None), "t/c.md": ("f", "0o644", b"C")}),
    ("[ab].txt", "/t/", {"t": ("d", "0o755", None), "t/a.txt": ("f", "0o644", b"A"),
                         "t/b.txt": ("f", "0o600", b"B")}),
    ("[^a].txt", "/t/", {"t": ("d", "0o755", None), "t/b.txt": ("f", "0o600", b"B")}),
    ("dir*", "/m/", {"m": ("d", "0o755", None), "m/one": ("f", "0o644", b"1"),
                     "m/sub": ("d", "0o755", None), "m/sub/two": ("f", "0o644", b"2"),
                     "m/three": ("f", "0o644", b"3")}),
    ("dir/*/two", "/w/", {"w": ("d", "0o755", None), "w/two": ("f", "0o644", b"2")}),
    ("nothing*", "/n/", {}),
    ("link-to-a", "/f", {"f": ("f", "0o644", b"A")}),
    ("../../a.txt", "/up", {"up": ("f", "0o644", b"A")}),
])
def test_dockerfile_copy_rules(src, dest, trees, src_path, dest_path, expected):
    cp(src, src_path, dest, dest_path, **DOCKERFILE)
    assert trees.describe(dest) == expected


def test_copy_into_existing_directory_and_over_existing_file(src, dest, trees):
    trees.make(dest, {"existing/": None, "file": b"old"})
    (dest / "existing").chmod(0o700)
    cp(src, "a.txt", dest, "/existing", **DOCKERFILE)
    cp(src, "dir", dest, "/existing", **DOCKERFILE)
    cp(src, "b.txt", dest, "/file", **DOCKERFILE)
    got = trees.describe(dest)
    assert got["existing"] == ("d", "0o700", None)  # an existing dest keeps its metadata
    assert got["existing/a.txt"] == ("f", "0o644", b"A")
    assert got["existing/one"] == ("f", "0o644", b"1")
    assert got["existing/sub/two"] == ("f", "0o644", b"2")
    assert got["file"] == ("f", "0o600", b"B")


def test_directory_itself_without_dir_copy_contents(src, dest, trees):
    (src / "dir").chmod(0o750)
    cp(src, "dir", dest, "/fresh", create_dest_path=True)  # absent dest: becomes the copy
    trees.make(dest, {"there/": None})
    cp(src, "dir", dest, "/there", create_dest_path=True)  # existing dest: copied into it
    got = trees.describe(dest)
    assert got["fresh"] == ("d", "0o750", None)
    assert got["fresh/sub/two"] == ("f", "0o644", b"2")
    assert got["there/dir"] == ("d", "0o750", None)
    assert got["there/dir/one"] == ("f", "0o644", b"1")


def test_missing_sources(src, dest):
    with pytest.raises(BuildError, match=r'^"/nope": not found$'):
        cp(src, "nope", dest, "/x", **DOCKERFILE)
    with pytest.raises(BuildError, match=r'^"/dir/nope": not found$'):
        cp(src, "dir/nope", dest, "/made/for/nothing/", **DOCKERFILE)
    with pytest.raises(BuildError, match=r'"/nothing\*": not found'):
        cp(src, "nothing*", dest, "/x/", allow_wildcard=True, create_dest_path=True)
    with pytest.raises(BuildError, match=r'"/dir/missing": not found'):
        cp(src, "dir", dest, "/x/", required_paths=["missing"], **DOCKERFILE)
    assert os.listdir(dest) == []


def test_create_dest_path_off_needs_the_parent(src, dest, trees):
    with pytest.raises(BuildError, match="parent directory does not exist"):
        cp(src, "a.txt", dest, "/no/such/file")
    cp(src, "a.txt", dest, "/top")
    assert trees.describe(dest) == {"top": ("f", "0o644", b"A")}


def test_follow_symlink(src, dest, trees):
    cp(src, "link-to-a", dest, "/kept", create_dest_path=True)
    cp(src, "link-to-a", dest, "/followed", create_dest_path=True, follow_symlink=True)
    cp(src, "link-to-dir", dest, "/dircontents", **DOCKERFILE)
    got = trees.describe(dest)
    assert got["kept"] == ("l", None, "a.txt")
    assert got["followed"] == ("f", "0o644", b"A")
    assert got["dircontents/one"] == ("f", "0o644", b"1")


def test_symlinks_inside_a_copied_tree_are_copied_as_links(src, dest, trees):
    cp(src, "/", dest, "/all/", **DOCKERFILE)
    got = trees.describe(dest)
    assert got["all/link-to-dir"] == ("l", None, "dir")
    assert got["all/link-to-a"] == ("l", None, "a.txt")
    assert got["all/run.sh"] == ("f", "0o755", b"#!/bin/sh\n")


# --- mode, mode_str, owner, timestamps, hardlinks, xattrs ------------------------------------------


def test_mode_octal_applies_to_files_and_subdirs(src, dest, trees):
    cp(src, "dir", dest, "/m", mode=0o600, **DOCKERFILE)
    cp(src, "run.sh", dest, "/m/run.sh", mode=0o640, **DOCKERFILE)
    got = trees.describe(dest)
    assert got["m"] == ("d", "0o755", None)  # the dest dir made for the contents is not chmodded
    assert got["m/one"] == ("f", "0o600", b"1")
    assert got["m/sub"] == ("d", "0o600", None)
    assert got["m/run.sh"] == ("f", "0o640", b"#!/bin/sh\n")


@pytest.mark.parametrize(("mode_str", "file_mode", "expected"), [
    ("u+x,g-w", 0o664, 0o744),
    ("+x", 0o644, 0o755),
    ("go=rX", 0o600, 0o644),
    ("go=rX", 0o700, 0o755),
    ("u=rwx,g=u,o=", 0o644, 0o770),
    ("a-w", 0o666, 0o444),
    ("g+s,o+t", 0o755, 0o3755),
    ("u=rw,go=r", 0o777, 0o644),
    ("755", 0o600, 0o755),
])
def test_mode_str_symbolic(tmp_path, trees, mode_str, file_mode, expected):
    s = trees.make(tmp_path / "s", {"f": (b"x", file_mode)})
    d = tmp_path / "d"
    cp(s, "f", d, "/f", mode_str=mode_str, **DOCKERFILE)
    assert stat.S_IMODE(os.lstat(d / "f").st_mode) == expected


def test_mode_str_capital_x_on_directories(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"d/f": (b"x", 0o600), "d/g": (b"y", 0o744)})
    (s / "d").chmod(0o700)
    dest = tmp_path / "out"
    cp(s, "/", dest, "/", mode_str="go=rX", **DOCKERFILE)
    got = trees.describe(dest)
    assert got["d"][1] == "0o755" and got["d/f"][1] == "0o644" and got["d/g"][1] == "0o755"


def test_bad_mode_str(src, dest):
    with pytest.raises(BuildError, match="invalid chmod mode 'u\\+q'"):
        cp(src, "a.txt", dest, "/x", mode_str="u+q", **DOCKERFILE)


def _owner(user=None, group=None):
    from pybk.core.llb.ops import ChownOpt, NamedUserOpt, UserOpt

    def opt(v):
        if v is None:
            return None
        return UserOpt(user=v) if isinstance(v, int) else UserOpt(user=NamedUserOpt(name=v))

    return ChownOpt(user=opt(user), group=opt(group))


@pytest.fixture
def rootfs_dest(tmp_path: Path, trees) -> Path:
    """A destination rootfs whose /etc is a symlink inside the root (resolved within it)."""
    return trees.make(tmp_path / "rootfs", {
        "realetc/passwd": b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:5678::/home/app:/bin/sh\n",
        "realetc/group": b"root:x:0:\nstaff:x:4321:app\n",
        "etc": ("->", "/realetc"),
    })


def test_chown_by_name_uses_the_destination_passwd(src, rootfs_dest, trees, root_only):
    # the source has its own passwd saying something else: it must not be used
    trees.make(src, {"etc/passwd": b"app:x:1:1::/:/bin/sh\n"})
    cp(src, "dir", rootfs_dest, "/app/", owner=_owner("app"), **DOCKERFILE)
    cp(src, "a.txt", rootfs_dest, "/g.txt", owner=_owner("app", "staff"), **DOCKERFILE)
    cp(src, "a.txt", rootfs_dest, "/id.txt", owner=_owner(42), **DOCKERFILE)
    cp(src, "a.txt", rootfs_dest, "/gid.txt", owner=_owner(None, 77), **DOCKERFILE)
    got = trees.describe(rootfs_dest, owners=True)
    assert got["app"][3:] == (1234, 5678)  # parent dirs made for the copy get the owner too
    assert got["app/one"][3:] == (1234, 5678)
    assert got["app/sub/two"][3:] == (1234, 5678)
    assert got["g.txt"][3:] == (1234, 4321)
    assert got["id.txt"][3:] == (42, 42)
    assert got["gid.txt"][3:] == (0, 77)


def test_chown_unknown_user(src, rootfs_dest):
    with pytest.raises(BuildError, match="unable to find user nobody2"):
        cp(src, "a.txt", rootfs_dest, "/x", owner=_owner("nobody2"), **DOCKERFILE)


def test_owner_preserved_without_chown(src, dest, trees, root_only):
    os.lchown(src / "a.txt", 1000, 1001)
    os.lchown(src / "link-to-a", 1002, 1003)
    cp(src, "/", dest, "/", **DOCKERFILE)
    got = trees.describe(dest, owners=True)
    assert got["a.txt"][3:] == (1000, 1001)
    assert got["link-to-a"][3:] == (1002, 1003)


def test_timestamps_preserved_or_overridden(src, dest):
    os.utime(src / "a.txt", ns=(1_000_000_000, 1_500_000_123))
    os.utime(src / "dir" / "sub", ns=(2_000_000_000, 2_000_000_000))
    cp(src, "/", dest, "/keep/", **DOCKERFILE)
    assert os.lstat(dest / "keep" / "a.txt").st_mtime_ns == 1_500_000_123
    assert os.lstat(dest / "keep" / "dir" / "sub").st_mtime_ns == 2_000_000_000
    ts = 1_700_000_000_000_000_000
    cp(src, "dir", dest, "/ts/", timestamp=ts, **DOCKERFILE)
    for rel in ("ts", "ts/one", "ts/sub", "ts/sub/two"):
        assert os.lstat(dest / rel).st_mtime_ns == ts, rel
    cp(src, "link-to-a", dest, "/ts2/link", timestamp=ts, create_dest_path=True)
    assert os.lstat(dest / "ts2/link").st_mtime_ns == ts


def test_hardlinks_are_preserved_within_one_copy(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"x/a": b"shared", "x/c": b"alone"})
    os.link(s / "x" / "a", s / "x" / "b")
    d = tmp_path / "d"
    cp(s, "x", d, "/y/", **DOCKERFILE)
    a, b, c = (os.lstat(d / "y" / n) for n in "abc")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert c.st_ino != a.st_ino
    assert a.st_ino != os.lstat(s / "x" / "a").st_ino
    assert (d / "y" / "b").read_bytes() == b"shared"


def test_xattrs_are_copied(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"f": b"x"})
    try:
        os.setxattr(s / "f", "user.pybk", b"value")
    except OSError:
        pytest.skip("the filesystem has no user xattrs")
    d = tmp_path / "d"
    cp(s, "f", d, "/f", **DOCKERFILE)
    assert os.getxattr(d / "f", "user.pybk") == b"value"


def test_special_files(tmp_path, trees):
    s = trees.make(tmp_path / "s", {})
    os.mkfifo(s / "fifo", 0o640)
    d = tmp_path / "d"
    cp(s, "/", d, "/", **DOCKERFILE)
    st = os.lstat(d / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


# --- replacing existing destination paths ---------------------------------------------------------


def test_existing_dest_paths_replace_or_fail(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"x": b"file", "y/z": b"in dir"})
    d1 = trees.make(tmp_path / "d1", {"x/inner": b"dir here"})
    with pytest.raises(BuildError, match="cannot replace directory /x with a file"):
        cp(s, "/", d1, "/", **DOCKERFILE)
    d2 = trees.make(tmp_path / "d2", {"y": b"file here"})
    with pytest.raises(BuildError, match="cannot copy to non-directory: /y"):
        cp(s, "/", d2, "/", **DOCKERFILE)
    d = trees.make(tmp_path / "d", {"x/inner": b"dir here", "y": b"file here"})
    cp(s, "/", d, "/", always_replace_existing_dest_paths=True, **DOCKERFILE)
    assert trees.describe(d) == {"x": ("f", "0o644", b"file"), "y": ("d", "0o755", None),
                                 "y/z": ("f", "0o644", b"in dir")}


def test_existing_symlink_at_a_file_target_is_replaced_not_followed(tmp_path, trees, outside):
    s = trees.make(tmp_path / "s", {"secret.txt": b"new"})
    d = trees.make(tmp_path / "d", {"secret.txt": ("->", str(outside / "secret.txt"))})
    cp(s, "secret.txt", d, "/", **DOCKERFILE)
    assert trees.describe(d) == {"secret.txt": ("f", "0o644", b"new")}
    assert (outside / "secret.txt").read_bytes() == b"do not touch"


# --- include / exclude patterns -------------------------------------------------------------------


def test_include_and_exclude_patterns(tmp_path, trees):
    s = trees.make(tmp_path / "s", {
        "app/main.py": b"m", "app/util.py": b"u", "app/notes.txt": b"n",
        "app/tests/test_x.py": b"t", "docs/readme": b"r", "vendor/lib/x.py": b"v",
    })
    d = tmp_path / "d"
    cp(s, "/", d, "/", include_patterns=["app", "vendor/**/*.py"],
       exclude_patterns=["**/*.txt", "app/tests"], **DOCKERFILE)
    assert sorted(trees.describe(d)) == ["app", "app/main.py", "app/util.py", "vendor",
                                         "vendor/lib", "vendor/lib/x.py"]


def test_invalid_pattern(src, dest):
    with pytest.raises(BuildError, match="invalid pattern"):
        cp(src, "/", dest, "/", exclude_patterns=["[unterminated"], **DOCKERFILE)


def test_exclude_with_reinclusion(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"logs/a.log": b"a", "logs/keep.log": b"k", "x": b"x"})
    d = tmp_path / "d"
    cp(s, "/", d, "/", exclude_patterns=["logs", "!logs/keep.log"], **DOCKERFILE)
    assert sorted(trees.describe(d)) == ["logs", "logs/keep.log", "x"]


# --- docker-compatible unpacking of local archives (ADD) ------------------------------------------


def _tar_bytes(entries: list[tuple[str, object]], compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, value in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            info.uid, info.gid = 123, 456
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o750
                tf.addfile(info)
            elif isinstance(value, tuple) and value[0] == "->":
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
                tf.addfile(info)
            elif isinstance(value, tuple) and value[0] == "=>":
                info.type, info.linkname = tarfile.LNKTYPE, value[1]
                tf.addfile(info)
            else:
                data = value if isinstance(value, bytes) else str(value).encode()
                info.size, info.mode = len(data), 0o640
                tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if compress == "gz":
        return gzip.compress(raw)
    if compress == "bz2":
        return bz2.compress(raw)
    if compress == "xz":
        return lzma.compress(raw)
    if compress == "zst":
        import zstandard

        return zstandard.ZstdCompressor().compress(raw)
    return raw


ENTRIES = [("top/", None), ("top/f.txt", b"inside"), ("top/l", ("->", "f.txt")),
           ("top/h", ("=>", "top/f.txt"))]


@pytest.mark.parametrize("compress", ["", "gz", "bz2", "xz", "zst"])
def test_unpack_local_archives(tmp_path, trees, compress, root_only):
    s = trees.make(tmp_path / "s", {"pkg.bin": _tar_bytes(ENTRIES, compress)})
    d = tmp_path / "d"
    cp(s, "pkg.bin", d, "/opt/", attempt_unpack_docker_compatibility=True, **DOCKERFILE)
    got = trees.describe(d, owners=True)
    assert got["opt/top"] == ("d", "0o750", None, 123, 456)
    assert got["opt/top/f.txt"] == ("f", "0o640", b"inside", 123, 456)
    assert got["opt/top/l"] == ("l", None, "f.txt", 123, 456)
    assert os.lstat(d / "opt/top/h").st_ino == os.lstat(d / "opt/top/f.txt").st_ino
    assert os.lstat(d / "opt/top/f.txt").st_mtime_ns == 1_600_000_000 * 10**9
    assert os.lstat(d / "opt/top").st_mtime_ns == 1_600_000_000 * 10**9


def test_no_unpack_when_off_or_not_an_archive(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"a.tar.gz": _tar_bytes(ENTRIES, "gz"),
                                    "fake.tar.gz": b"\x1f\x8b\x08 not really gzip",
                                    "text.tar": b"hello"})
    d = tmp_path / "d"
    cp(s, "a.tar.gz", d, "/off/", **DOCKERFILE)
    cp(s, "*.tar*", d, "/on/", attempt_unpack_docker_compatibility=True, **DOCKERFILE)
    got = trees.describe(d)
    assert got["off/a.tar.gz"][0] == "f"
    assert got["on/fake.tar.gz"] == ("f", "0o644", b"\x1f\x8b\x08 not really gzip")
    assert got["on/text.tar"] == ("f", "0o644", b"hello")
    assert got["on/top/f.txt"][2] == b"inside"


@pytest.mark.parametrize("entries", [
    [("../evil", b"x")],
    [("a/../../evil", b"x")],
    [("l", ("->", "../../../evil"))],
    [("h", ("=>", "../outside/secret.txt"))],
])
def test_unpack_refuses_entries_leaving_the_destination(tmp_path, trees, outside, entries):
    s = trees.make(tmp_path / "s", {"evil.tar": _tar_bytes(entries)})
    d = tmp_path / "d"
    with pytest.raises(BuildError, match="invalid|outside"):
        cp(s, "evil.tar", d, "/x/", attempt_unpack_docker_compatibility=True, **DOCKERFILE)
    assert not (tmp_path / "evil").exists() and not (d / "evil").exists()
    assert trees.describe(outside)["secret.txt"][2] == b"do not touch"


def test_unpack_through_an_absolute_symlink_stays_inside(tmp_path, trees, outside):
    entries = [("etc", ("->", str(outside / "etc"))), ("etc/passwd", b"pwned\n")]
    s = trees.make(tmp_path / "s", {"x.tar": _tar_bytes(entries)})
    d = tmp_path / "d"
    cp(s, "x.tar", d, "/", attempt_unpack_docker_compatibility=True, **DOCKERFILE)
    assert (outside / "etc" / "passwd").read_bytes() == b"host\n"
    inner = d / str(outside / "etc" / "passwd").lstrip("/")
    assert inner.read_bytes() == b"pwned\n"


# --- confinement ----------------------------------------------------------------------------------


def test_source_paths_never_leave_the_source_root(tmp_path, trees, outside):
    s = trees.make(tmp_path / "s", {
        "abs-link": ("->", str(outside / "secret.txt")),
        "rel-link": ("->", "../../../../outside/secret.txt"),
        "etc-link": ("->", "/etc"),
        "etc/passwd": b"root-of-src\n",
    })
    d = tmp_path / "d"
    with pytest.raises(BuildError, match="not found"):
        cp(s, "../outside/secret.txt", d, "/x", **DOCKERFILE)
    with pytest.raises(BuildError, match="not found"):
        cp(s, "abs-link", d, "/x", **DOCKERFILE)
    with pytest.raises(BuildError, match="not found"):
        cp(s, "rel-link", d, "/x", **DOCKERFILE)
    cp(s, "../../etc/passwd", d, "/p1", **DOCKERFILE)
    cp(s, "etc-link/passwd", d, "/p2", **DOCKERFILE)
    assert (d / "p1").read_bytes() == b"root-of-src\n"
    assert (d / "p2").read_bytes() == b"root-of-src\n"


def test_destination_symlinks_resolve_inside_the_destination_root(tmp_path, trees, outside):
    s = trees.make(tmp_path / "s", {"f": b"data", "tree/g": b"g"})
    d = trees.make(tmp_path / "d", {
        "abs": ("->", str(outside)),
        "rel": ("->", "../../../../.."),
        "etc": ("->", "/usr/etc"),
    })
    before = trees.describe(outside)
    cp(s, "f", d, "/abs/", **DOCKERFILE)
    cp(s, "f", d, "/rel/secret.txt", **DOCKERFILE)
    cp(s, "tree", d, "/etc/", **DOCKERFILE)
    cp(s, "f", d, "/../../../outside/secret.txt", **DOCKERFILE)
    assert trees.describe(outside) == before
    got = trees.describe(d)
    assert got[str(outside).lstrip("/") + "/f"] == ("f", "0o644", b"data")
    assert got["secret.txt"] == ("f", "0o644", b"data")
    assert got["etc"] == ("l", None, "/usr/etc")
    assert got["usr/etc/g"] == ("f", "0o644", b"g")
    assert got["outside/secret.txt"] == ("f", "0o644", b"data")


def test_symlink_loops_are_an_error(tmp_path, trees):
    s = trees.make(tmp_path / "s", {"f": b"data"})
    d = trees.make(tmp_path / "d", {"loop": ("->", "/loop")})
    with pytest.raises(BuildError, match="too many levels of symbolic links"):
        cp(s, "f", d, "/loop/", **DOCKERFILE)


def test_dest_subdirectory_symlink_is_not_followed(tmp_path, trees, outside):
    s = trees.make(tmp_path / "s", {"sub/file": b"x"})
    d = trees.make(tmp_path / "d", {"sub": ("->", str(outside))})
    before = trees.describe(outside)
    with pytest.raises(BuildError, match="cannot copy to non-directory: /sub"):
        cp(s, "/", d, "/", **DOCKERFILE)
    assert trees.describe(outside) == before


# --------------------------------------------------------------------------------------------
# LinkPlan: files planned for hard-linking instead of copied
# --------------------------------------------------------------------------------------------


def _plan_copy(src: Path, dest: Path, **opts) -> fileop.LinkPlan:
    plan = fileop.LinkPlan(str(dest))
    fileop.copy(str(src), "/", str(dest), "/out", CopyOptions(create_dest_path=True, **opts),
                links=plan)
    return plan


@pytest.mark.skipif(os.geteuid() != 0, reason="a copy keeps the source owner only as root")
def test_link_plan_takes_files_whose_metadata_the_copy_keeps(tmp_path: Path, trees):
    src = trees.make(tmp_path / "src", {"a": (b"A", 0o640), "d/b": b"B", "l": ("->", "a")})
    os.link(src / "a", src / "d" / "twin")
    dest = tmp_path / "dest"
    dest.mkdir()
    plan = _plan_copy(src, dest)
    assert plan.pending == {"out/a": str(src / "a"), "out/d/b": str(src / "d" / "b"),
                            "out/d/twin": str(src / "d" / "twin")}
    assert sorted(os.listdir(dest / "out")) == ["d", "l"]  # directories and symlinks: copied
    d_mtime = os.stat(dest / "out" / "d").st_mtime_ns
    assert plan.apply(str(dest)) == 3
    assert os.stat(dest / "out" / "a").st_ino == os.stat(src / "a").st_ino
    assert os.stat(dest / "out" / "d" / "twin").st_ino == os.stat(src / "a").st_ino
    assert os.stat(dest / "out" / "d").st_mtime_ns == d_mtime  # linking kept directory times


@pytest.mark.parametrize("opts", [dict(owner=(1000, 1000)), dict(mode=0o700),
                                  dict(timestamp=1_000_000_000), dict(mode_str="u+x")])
def test_link_plan_copies_when_metadata_would_differ(tmp_path: Path, trees, opts):
    src = trees.make(tmp_path / "src", {"a": (b"A", 0o644)})
    dest = tmp_path / "dest"
    dest.mkdir()
    plan = _plan_copy(src, dest, **opts)
    assert plan.pending == {}
    assert (dest / "out" / "a").read_bytes() == b"A"
    assert os.stat(dest / "out" / "a").st_ino != os.stat(src / "a").st_ino


@pytest.mark.skipif(os.geteuid() != 0, reason="a copy keeps the source owner only as root")
def test_link_plan_same_owner_mode_and_replaced_whiteout(tmp_path: Path, trees):
    src = trees.make(tmp_path / "src", {"a": (b"A", 0o644)})
    st = os.stat(src / "a")
    dest = tmp_path / "dest"
    (dest / "out").mkdir(parents=True)
    plan = _plan_copy(src, dest, owner=(st.st_uid, st.st_gid), mode=0o644)
    assert list(plan.pending) == ["out/a"]
    os.mknod(dest / "out" / "a", stat.S_IFCHR, 0)  # overlay's mark of a replaced lower file
    plan.apply(str(dest))
    assert (dest / "out" / "a").read_bytes() == b"A" and os.stat(dest / "out" / "a").st_nlink == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="a copy keeps the source owner only as root")
def test_link_plan_later_write_to_the_same_target_wins(tmp_path: Path, trees):
    first = trees.make(tmp_path / "one", {"x": (b"linked", 0o644)})
    second = trees.make(tmp_path / "two", {"x": (b"copied", 0o644)})
    dest = tmp_path / "dest"
    dest.mkdir()
    plan = fileop.LinkPlan(str(dest))
    fileop.copy(str(first), "/x", str(dest), "/x", CopyOptions(), links=plan)
    fileop.copy(str(second), "/x", str(dest), "/x", CopyOptions(mode=0o600), links=plan)
    assert plan.pending == {}
    assert (dest / "x").read_bytes() == b"copied"
