"""Context copies: the directories under ``locals/`` that ``local://name`` build contexts are
incrementally synced into, one per (name, shared key), each a named directory record held,
while synced and read, by a lock of the same name (prune skips a held one)."""

from __future__ import annotations

from pathlib import Path

from pybk.core.store import locks as lockmod
from pybk.core.store.records import Records, dir_name

#: a synced local directory's state file is the directory's path plus this
LOCAL_SYNC_STATE_SUFFIX = ".syncstate"


def local_dir(records: Records, name: str, shared_key: str) -> Path:
    """The directory a ``local://name`` context syncs into for ``shared_key``.

    Call it, sync and read the directory while holding :func:`local_lock`.
    """
    ref = f"locals/{name}-{shared_key}"
    # the sync keeps its state next to it (``DIR`` + LOCAL_SYNC_STATE_SUFFIX)
    record = records.named_dir(ref, f"locals/{dir_name(f'{name}-{shared_key}')}",
                               type="source.local", description=f"local source for {name}")
    return records.db.root / record.path  # type: ignore[operator]


def local_lock(locks: lockmod.Locks, name: str, shared_key: str) -> lockmod.FileLock:
    return locks.lock(f"locals/{name}-{shared_key}")
