"""An ordinary user of the test's own, to run pybk as (needs root; removed afterwards).

:class:`TestUser` makes ``pybkt<pid><n>`` with a home directory and, when asked, a subordinate
uid/gid range (``usermod --add-subuids``; ``useradd`` is told to allocate none itself), lets it
reach this interpreter (an ACL entry ``u:USER:x`` on each ancestor directory that others
cannot enter, such as ``/root``), and takes all of it away again: the user, its home, its
ranges and its ACL entries (only its own: other entries stay).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence

#: the size of the range a user with subordinate ids gets
RANGE = 65536


def missing_tools() -> list[str]:
    return [t for t in ("useradd", "userdel", "usermod", "setfacl", "setpriv")
            if shutil.which(t) is None]


def _closed_ancestors(paths: Sequence[str]) -> list[str]:
    """Directories above ``paths`` that others cannot enter."""
    found: list[str] = []
    for path in paths:
        parts = os.path.realpath(path).split(os.sep)
        for i in range(2, len(parts)):
            directory = os.sep.join(parts[:i]) or os.sep
            mode = os.stat(directory).st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH and directory not in found:
                found.append(directory)
    return found


class TestUser:
    """A user that exists inside the ``with`` block (``name``, ``uid``, ``gid``, ``home``;
    ``subids``: the ``(start, count)`` of its subordinate ranges, or None)."""

    __test__ = False  # not a test class
    _count = 0

    def __init__(self, *, subids: bool):
        TestUser._count += 1
        self.name = f"pybkt{os.getpid() % 100000}{TestUser._count}"
        self.subids = ((1_000_000 + (os.getpid() % 1000) * 4 * RANGE
                        + TestUser._count * RANGE, RANGE) if subids else None)
        self.uid = self.gid = -1
        self.home = ""
        self._acl: list[str] = []

    def __enter__(self) -> TestUser:
        try:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh",
                            "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", self.name],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(self.name)
            self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, entry.pw_dir
            if self.subids is not None:
                first, count = self.subids
                span = f"{first}-{first + count - 1}"
                subprocess.run(["usermod", "--add-subuids", span, "--add-subgids", span,
                                self.name], check=True, capture_output=True)
            for directory in _closed_ancestors([sys.executable, __file__]):
                subprocess.run(["setfacl", "-m", f"u:{self.name}:x", directory], check=True,
                               capture_output=True)
                self._acl.append(directory)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for directory in self._acl:
            subprocess.run(["setfacl", "-x", f"u:{self.name}", directory], capture_output=True)
        self._acl.clear()
        if self.subids is not None and self.uid >= 0:
            first, count = self.subids
            span = f"{first}-{first + count - 1}"
            subprocess.run(["usermod", "--del-subuids", span, "--del-subgids", span,
                            self.name], capture_output=True)
        subprocess.run(["userdel", "--remove", self.name], capture_output=True)

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment of the user's (``HOME``, ``USER``, ``PATH``, this
        ``PYTHONPATH``), plus ``extra``."""
        base = {"HOME": self.home, "USER": self.name, "LOGNAME": self.name,
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "LANG": "C.UTF-8"}
        if os.environ.get("CI"):
            base["CI"] = os.environ["CI"]
        return {**base, **extra}

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """``argv`` as this user (no supplementary groups), in its home directory."""
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
             *argv], env=env if env is not None else self.env(), cwd=self.home,
            capture_output=True, text=True, timeout=timeout)
