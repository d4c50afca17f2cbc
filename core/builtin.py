"""The core's own hook implementations: the fallback decisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pybk.core.markers import hookimpl


@hookimpl(trylast=True)
def pybk_select_worker(platform: str, workers: Sequence[Any]) -> Any:
    """The first available worker that lists ``platform`` (or lists none)."""
    for worker in workers:
        platforms = worker.platforms()
        if not platforms or platform in platforms:
            return worker
    return None
