"""A new mutable record (an active snapshot) an op writes into, then commits or discards."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pybk.core.interfaces import Mount
from pybk.core.solver.results import Ref


class ActiveSnapshot:
    """A new mutable record (an active snapshot) on ``parent``; committed or discarded."""

    def __init__(self, runner: Any, parent: Ref, stack: contextlib.ExitStack,
                 description: str = ""):
        self.store = runner.store
        self.record = self.store.new_record(parent.snapshot, lease=runner.lease,
                                            description=description)
        self.committed: str | None = None
        self.path: str | None = None
        self._parent = parent
        self._stack = stack
        stack.callback(self._discard)

    @property
    def mounts(self) -> list[Mount]:
        return self.store.mounts(self.record)

    def mount(self) -> str:
        """Mount the snapshot (read-write) and return the directory."""
        if self.path is None:
            from pybk.core.store.mounts import mount_all

            target = self.store.process_tmp(f"mnt-{os.urandom(6).hex()}")
            target.mkdir()
            mount_all(self.mounts, str(target))
            self.path = str(target)
            self._stack.callback(self.unmount)
            if self._parent.path is not None:
                from pybk.core.store.trees import copy_contents

                copy_contents(self._parent.path, self.path)
        return self.path

    def unmount(self) -> None:
        if self.path is not None:
            from pybk.core.store.mounts import unmount_all

            unmount_all(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
            self.path = None

    def commit(self) -> Ref:
        if self.committed is None:
            self.unmount()
            self.committed = self.store.commit(self.record).id
        return Ref(snapshot=self.committed)

    def _discard(self) -> None:
        if self.committed is None:
            self.unmount()
            with contextlib.suppress(Exception):
                self.store.discard(self.record)
