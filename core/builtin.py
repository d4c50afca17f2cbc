"""The core's own hook implementations: the fallback decisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pybk.core.markers import hookimpl


def _normalized(platform: str) -> str:
    from pybk.core.errors import InputError
    from pybk.core.platform import parse_platform

    try:
        return str(parse_platform(platform))
    except InputError:
        return platform


@hookimpl(trylast=True)
def pybk_select_worker(platform: str, workers: Sequence[Any]) -> Any:
    """The first worker that lists ``platform`` (or lists none), compared normalised
    (``linux/x86_64`` is ``linux/amd64``); None when none does, and the engine then builds on
    the first worker."""
    wanted = _normalized(platform)
    for worker in workers:
        platforms = worker.platforms()
        if not platforms or wanted in {_normalized(p) for p in platforms}:
            return worker
    return None
