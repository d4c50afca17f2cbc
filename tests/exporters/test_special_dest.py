"""A tarball written to a character device or a FIFO goes into it: the node stays what it
was (renaming a finished temporary file over ``/dev/null`` would replace the device with a
regular file), and nothing is left beside it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
import threading

import pytest
from support.engine import need_runc

from pybk.core.fs.files import output_file


def _build(tmp_path, output: str) -> subprocess.CompletedProcess:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\n")
    (ctx / "a.txt").write_text("payload\n")
    return subprocess.run([sys.executable, "-m", "pybk.core.cli.entry", "--addr", "", "--root",
                           str(tmp_path / "store"), "build", "-q", "-o", output, str(ctx)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["tar", "oci", "docker"])
def test_tar_outputs_into_a_fifo_leave_it_a_fifo(tmp_path, kind):
    need_runc()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    done = _build(tmp_path, f"type={kind},dest={fifo}")
    reader.join(60)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx", "pipe", "store"]
    (tmp_path / "got.tar").write_bytes(received[0])
    with tarfile.open(tmp_path / "got.tar") as tar:
        names = tar.getnames()
    assert ("a.txt" in names) if kind == "tar" else ("index.json" in names or
                                                       "manifest.json" in names)


def test_output_file_writes_a_device_in_place_and_files_atomically(tmp_path):
    device = "/dev/null"
    before = os.lstat(device)
    with output_file(device) as out:
        out.write(b"gone")
    after = os.lstat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert not os.path.exists(f"{device}.{os.getpid()}.tmp")
    target = tmp_path / "out.tar"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), output_file(str(target)) as out:
        out.write(b"half")
        raise RuntimeError("export failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["out.tar"]
    with output_file(str(target)) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new"
