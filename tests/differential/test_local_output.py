"""``--output type=local`` against BuildKit v0.8 (dockerd 20.10's client): every file the
output writes belongs to the user running the client (root here), whatever the image says;
BuildKit's ``type=tar`` and pybk's keep the image's owners (compared in
``test_buildkit_v08.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybk.core.cli.commands import main

pytestmark = pytest.mark.slow

DOCKERFILE = ("ARG BASE\nFROM ${BASE}\n"
              "RUN mkdir -p /owned/sub /nobody && echo a > /owned/sub/a && echo n > /nobody/n "
              "&& ln -s sub/a /owned/link && chown -R 1000:1000 /owned "
              "&& chown -h 1000:1000 /owned/link && chown -R 65534:65534 /nobody "
              "&& chmod 2775 /owned/sub\n")


def _owners(root: Path) -> dict[str, tuple[int, int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            found["/" + str(path.relative_to(root))] = (st.st_uid, st.st_gid,
                                                        st.st_mode & 0o7777)
    return found


def test_local_output_owners_as_buildkit(buildkit, busybox_ref, busybox_layout, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    theirs, ours = tmp_path / "buildkit", tmp_path / "pybk"
    buildkit.docker("build", "--network=none", "--progress=plain", "--build-arg",
                    f"BASE={busybox_ref.rsplit(':', 1)[0]}", "--output",
                    f"type=local,dest={theirs}", str(context))
    assert main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "--build-arg", "BASE=busybox", "--build-context",
                 f"busybox=oci-layout://{busybox_layout}", "-o", f"type=local,dest={ours}",
                 str(context)]) == 0
    bk, mine = _owners(theirs), _owners(ours)
    assert bk["/owned/sub/a"][:2] == bk["/nobody/n"][:2] == (0, 0)
    assert mine == bk
