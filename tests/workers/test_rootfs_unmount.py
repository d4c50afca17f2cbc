"""A finished step's root that is still busy after unmount's retries is detached instead of
failing the build; any other unmount error still fails it."""

from __future__ import annotations

import errno

import pytest

from pybk.workers import runc


def test_busy_rootfs_is_detached(monkeypatch):
    calls = []

    def unmount_all(target, *, lazy=False):
        calls.append((target, lazy))
        if not lazy:
            raise OSError(errno.EBUSY, f"unmount {target}: Device or resource busy", target)

    monkeypatch.setattr(runc, "unmount_all", unmount_all)
    runc._unmount_rootfs("/b/rootfs")
    assert calls == [("/b/rootfs", False), ("/b/rootfs", True)]


def test_other_unmount_errors_still_fail(monkeypatch):
    def unmount_all(target, *, lazy=False):
        raise OSError(errno.EPERM, f"unmount {target}: Operation not permitted", target)

    monkeypatch.setattr(runc, "unmount_all", unmount_all)
    with pytest.raises(OSError) as caught:
        runc._unmount_rootfs("/b/rootfs")
    assert caught.value.errno == errno.EPERM
