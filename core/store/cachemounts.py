"""Cache mounts: the directories behind ``RUN --mount=type=cache``, under ``cachemounts/``.

Each is a named directory record (``cachemount-<id>#<slot>``), shared between builds according
to its sharing mode and held, while in use, by a lock of the same name (prune skips a held one).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from pybk.core.errors import UsageError
from pybk.core.fs.rootpath import resolve_in_root
from pybk.core.interfaces import Mount
from pybk.core.store.records import Record, Records, dir_name
from pybk.core.store.trees import copy_contents

CACHE_SHARING = ("shared", "private", "locked")


def cache_mount_path(records: Records, cache_id: str) -> Path:
    """The directory of cache mount ``cache_id`` (its shared copy; it may not exist)."""
    return records.db.root / "cachemounts" / dir_name(cache_id)


def cache_mount_lock_name(cache_id: str) -> str:
    """The lock its users hold (shared, or exclusive for ``sharing=locked``)."""
    return f"cachemount-{cache_id}#0"


async def cache_mount(records: Records, cache_id: str, sharing: str = "shared", *,
                      seed: Record | None = None, seed_path: str = "/",
                      fill: Callable[[Path], None] | None = None,
                      ) -> tuple[list[Mount], Callable[[], None]]:
    """Mounts for ``RUN --mount=type=cache,id=…,sharing=…`` and the callback releasing them.

    ``shared``: every user gets the same directory at once; ``locked``: the same directory,
    one user at a time (others wait); ``private``: a directory no one else uses meanwhile
    (the shared one when free, else another copy, reused when free). ``seed``: a committed
    record whose directory ``seed_path`` (``source=``) fills a newly created cache directory,
    its own mode and owner included (``from=``). ``fill``: fills a newly created cache
    directory instead of ``seed`` (an imported cache mount).
    """
    if sharing not in CACHE_SHARING:
        raise UsageError(f"invalid cache sharing {sharing!r} (choose {', '.join(CACHE_SHARING)})")
    locks = records.db.locks
    slot = 0
    if sharing == "private":
        while (lock := locks.try_lock(f"cachemount-{cache_id}#{slot}")) is None:
            slot += 1
    else:
        lock = locks.lock(cache_mount_lock_name(cache_id), shared=sharing == "shared")
        await lock.acquire_async()
    try:
        def seed_from(target: Path) -> None:
            with records.contents(seed) as src:  # type: ignore[arg-type]
                top = resolve_in_root(src, seed_path)
                if os.path.isdir(top):
                    copy_contents(top, str(target))
                    st = os.stat(top)
                    os.chown(target, st.st_uid, st.st_gid)
                    os.chmod(target, st.st_mode & 0o7777)

        name = dir_name(cache_id) + (f".{slot}" if slot else "")
        record = await asyncio.to_thread(
            records.named_dir, f"cachemount-{cache_id}#{slot}", f"cachemounts/{name}",
            type="exec.cachemount", description=f"cached mount {cache_id}",
            seed=fill if fill is not None else seed_from if seed is not None else None)
    except BaseException:
        lock.release()
        raise
    return [Mount("bind", str(records.db.root / record.path), ("rbind", "rw"))], lock.release  # type: ignore[operator]
