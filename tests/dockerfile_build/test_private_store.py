"""A store made under the most permissive umask stays private through a build, and steps run
as another user still work on it: the container's user never walks the store's paths (the
rootfs is its root; overlayfs reaches the layers with the mounter's credentials)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.engine import require_runc

#: prints every path given on stdin that uid 65534 can reach
PROBE = r"""
import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
for line in sys.stdin.read().splitlines():
    try:
        os.lstat(line)
        print(line)
    except OSError:
        pass
"""


@pytest.fixture
def private_client():
    """A client on a fresh store in a directory everyone may enter, made under umask 0."""
    require_runc()
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from pybk.core.engine.client import Client

    base = Path(tempfile.mkdtemp(prefix="pybk-private-"))
    os.chmod(base, 0o755)
    old = os.umask(0)
    try:
        with Client(root=str(base / "store")) as client:
            yield client, base / "store"
    finally:
        os.umask(old)
        from pybk.core.store.mounts import cleanup_stale_mounts

        cleanup_stale_mounts(str(base))
        shutil.rmtree(base, ignore_errors=True)


def test_a_build_as_nobody_on_a_private_store(private_client, dfbuild):
    client, root = private_client
    b = dfbuild("FROM busybox\nCOPY tool /usr/local/bin/tool\nUSER nobody\nWORKDIR /tmp/w\n"
                "RUN id -u > me && cat /usr/local/bin/tool > copied && ls / > listing\n",
                {"tool": (b"#!/bin/sh\n", 0o4755)}, client=client)
    assert b.text("tmp/w/me") == "65534\n"
    assert b.text("tmp/w/copied") == "#!/bin/sh\n"
    assert "usr" in b.text("tmp/w/listing").split()
    assert b.mode("usr/local/bin/tool") == 0o4755
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    tops = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in root.iterdir() if p.is_dir()}
    assert set(tops.values()) == {0o700}, tops
    paths = [str(p) for p in root.rglob("*")]
    assert any(p.endswith("/usr/local/bin/tool") for p in paths)  # the setuid copy is there
    done = subprocess.run([sys.executable, "-c", PROBE], input="\n".join(paths), text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # ... and out of every other user's reach
