"""A tiny busybox root filesystem for tests, built from Debian's busybox-static (no registry).

Layout: /bin/busybox plus every applet as a relative symlink, /etc/passwd and /etc/group with
root, nobody and tester (1000:1000, also a member of ``staff`` 50 and ``builders`` 2000), and the
usual empty directories an image has (/dev, /proc, /sys, /tmp, /root, /home/tester).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
tester:x:1000:1000:tester:/home/tester:/bin/sh
"""

GROUP = """\
root:x:0:
staff:x:50:tester
nogroup:x:65534:
tester:x:1000:
builders:x:2000:nobody,tester
"""


def busybox_available() -> bool:
    return os.access(BUSYBOX, os.X_OK)


@functools.cache
def busybox_applets() -> tuple[str, ...]:
    """Relative install paths of every applet (``bin/ls``, ``usr/bin/env`` …)."""
    out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True)
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def make_busybox_rootfs(dest: str | os.PathLike[str]) -> Path:
    """Create the rootfs at ``dest`` (created if missing) and return its path."""
    root = Path(dest)
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "root",
                "home/tester", "var", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    os.chown(root / "home/tester", 1000, 1000)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in busybox_applets():
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    return root
