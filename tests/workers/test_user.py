"""User resolution against the rootfs's /etc/passwd and /etc/group, and root_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.workers.user import ResolvedUser, resolve_user, root_path

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/bin/false
tester:x:1000:1000::/home/tester:/bin/sh
broken line without fields
web:x:33:33::/var/www:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
staff:x:50:tester,web
tester:x:1000:
docker:x:999:tester
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(("spec", "expected"), [
    ("", ResolvedUser(0, 0)),
    ("root", ResolvedUser(0, 0)),
    ("tester", ResolvedUser(1000, 1000, (50, 999))),
    ("1000", ResolvedUser(1000, 1000, (50, 999))),
    ("web", ResolvedUser(33, 33, (50,))),
    ("1000:1000", ResolvedUser(1000, 1000)),       # both numeric: taken as is
    ("root:root", ResolvedUser(0, 0)),
    ("1000:50", ResolvedUser(1000, 50)),
    ("tester:staff", ResolvedUser(1000, 50)),
    ("tester:4321", ResolvedUser(1000, 4321)),      # numeric group not in /etc/group
    ("5555", ResolvedUser(5555, 0)),                 # numeric user not in /etc/passwd
    ("5555:6666", ResolvedUser(5555, 6666)),
    (":staff", ResolvedUser(0, 50)),
])
def test_resolve_user(root, spec, expected):
    assert resolve_user(str(root), spec) == expected


def test_unknown_names_are_clear_errors(root):
    with pytest.raises(BuildError) as info:
        resolve_user(str(root), "foo")
    assert str(info.value) == "unable to find user foo: no matching entries in passwd file"
    with pytest.raises(BuildError) as info:
        resolve_user(str(root), "tester:nogroup")
    assert str(info.value) == "unable to find group nogroup: no matching entries in group file"


def test_out_of_range_id(root):
    with pytest.raises(BuildError, match="range 0-2147483647"):
        resolve_user(str(root), "4294967296")


def test_missing_files_allow_numeric_ids_only(tmp_path):
    assert resolve_user(str(tmp_path), "42") == ResolvedUser(42, 0)
    with pytest.raises(BuildError, match="unable to find user tester"):
        resolve_user(str(tmp_path), "tester")


def test_passwd_symlink_cannot_escape_rootfs(tmp_path):
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "inside").mkdir()
    (root / "inside/passwd").write_text("good:x:7:7::/:/bin/sh\n")
    # an absolute link and a relative one with too many ".." both stay inside root
    (root / "etc/passwd").symlink_to("/../../../host-etc/passwd")
    with pytest.raises(BuildError):
        resolve_user(str(root), "evil")
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to("../../../../inside/passwd")
    assert resolve_user(str(root), "good") == ResolvedUser(7, 7)


def test_non_regular_passwd_is_ignored(tmp_path):
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc/passwd")  # would block a naive open()
    assert resolve_user(str(tmp_path), "12") == ResolvedUser(12, 0)


def test_root_path(tmp_path):
    root = tmp_path / "r"
    (root / "a/b").mkdir(parents=True)
    (root / "link-abs").symlink_to("/a")
    (root / "a/link-up").symlink_to("../../../..")
    (root / "loop").symlink_to("loop")
    r = str(root)
    assert root_path(r, "/") == r
    assert root_path(r, "/a/b") == f"{r}/a/b"
    assert root_path(r, "/../../a") == f"{r}/a"
    assert root_path(r, "/link-abs/b") == f"{r}/a/b"
    assert root_path(r, "/a/link-up/a") == f"{r}/a"
    assert root_path(r, "/a/missing/x/../y") == f"{r}/a/missing/y"
    assert root_path(r, "/a/missing/../../../../etc") == f"{r}/etc"
    assert root_path(r, "/missing/../link-abs/b") == f"{r}/a/b"
    with pytest.raises(OSError, match="too many levels"):
        root_path(r, "/loop")
