"""The live tty view, in a real pseudo-terminal: `--progress auto` picks it on a terminal."""

import os
import pty
import subprocess
import sys

import pytest
from support.engine import require_runc


def _run_in_pty(argv, cwd):
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    env.pop("BUILDKIT_PROGRESS", None)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_auto_progress_on_a_terminal_is_the_live_view(tmp_path, busybox_layout):
    require_runc()
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo one\nRUN echo two\n")
    code, screen = _run_in_pty(
        [sys.executable, "-m", "pybk.core.cli.commands", "--root", str(tmp_path / "store"), "build",
         "--build-context", f"busybox=oci-layout://{busybox_layout}", "."], tmp_path)
    assert code == 0, screen
    assert "[+] Building" in screen and "FINISHED" in screen
    assert "RUN echo one" in screen and "RUN echo two" in screen
    assert "#1 " not in screen  # not the plain renderer
