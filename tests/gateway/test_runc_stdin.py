"""``RuncExecutor.run(stdin=…)``: bytes or an async stream fed to the process, which the gateway
needs for a conversation; without ``stdin`` the process still reads ``/dev/null``."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from support.rootfs import busybox_available, make_busybox_rootfs

from pybk.core.interfaces import Mount, ProcessSpec

pytestmark = pytest.mark.runc


@pytest.fixture
def box(tmp_path):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    if not busybox_available():
        pytest.skip("busybox-static is not installed")
    from pybk.workers.runc import RuncExecutor

    root = [Mount("bind", str(make_busybox_rootfs(tmp_path / "rootfs")), ("rbind",))]
    return RuncExecutor(tmp_path / "state"), root


def _sh(script):
    return ProcessSpec(args=("/bin/sh", "-c", script), network="none")


def test_stdin_bytes_and_default_devnull(box):
    executor, root = box
    out = []
    code = asyncio.run(executor.run(_sh("tr a-z A-Z; echo done"), root, stdout=out.append,
                                    stdin=b"hello\nworld\n"))
    assert code == 0 and b"".join(out) == b"HELLO\nWORLD\ndone\n"
    out.clear()
    code = asyncio.run(executor.run(_sh("cat; echo eof"), root, stdout=out.append))
    assert code == 0 and b"".join(out) == b"eof\n"


def test_stdin_stream_is_a_conversation(box):
    """Each answer depends on the previous line: the stream is written as it is produced."""
    executor, root = box

    async def talk():
        lines: asyncio.Queue[bytes] = asyncio.Queue()
        buffer = bytearray()

        def stdout(chunk):
            buffer.extend(chunk)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                lines.put_nowait(line)

        async def questions():
            yield b"1\n"
            for _ in range(3):
                answer = int(await lines.get())
                yield f"{answer * 2}\n".encode()

        script = "while read -r n; do echo $((n + 1)); done; echo bye"
        code = await executor.run(_sh(script), root, stdout=stdout, stdin=questions())
        rest = []
        while not lines.empty():
            rest.append(lines.get_nowait())
        return code, rest

    code, rest = asyncio.run(talk())
    # 1 -> 2, 4 -> 5, 10 -> 11, 22 -> 23, then stdin closes
    assert code == 0 and rest == [b"23", b"bye"]


def test_process_that_ignores_stdin_is_not_blocked(box):
    executor, root = box

    async def endless():
        while True:
            yield b"x" * 65536

    out = []
    code = asyncio.run(asyncio.wait_for(
        executor.run(_sh("echo quick"), root, stdout=out.append, stdin=endless()), 20))
    assert code == 0 and b"".join(out) == b"quick\n"
