"""The engine's workers: made from the configuration through the plugin registry, and chosen.

Every registered worker class (``pybk_register_workers``) is asked for an instance with
``from_config(config, root=...)``; a class the configuration disables answers None (the ``oci``
worker with ``[worker.oci] enabled = false``). A build runs on the worker the
``pybk_select_worker`` hook picks for its platform; when no implementation picks one (none
lists the platform), the first worker builds (emulated platforms run on the host's worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pybk.core.errors import PluginValidationError, UsageError


def load_workers(config: Any, root: str, pm: Any = None) -> list[Any]:
    """One instance of each enabled worker class, in registration order (built-ins first).

    :raises UsageError: no worker is left (every one is disabled).
    """
    if pm is None:
        from pybk.core.plugins import get_plugin_manager

        pm = get_plugin_manager()
    registry = pm.workers()
    workers = []
    for cls in registry:
        plugin_name, _ = registry.owner(cls.name)
        with pm.annotate_errors(plugin_name):
            worker = cls.from_config(config, root=root)
        if worker is not None:
            workers.append(worker)
    if not workers:
        names = registry.names()
        raise UsageError("no worker to build with: "
                         + (f"every worker is disabled ({', '.join(names)}; e.g. "
                            "[worker.oci] enabled = false)" if names
                            else "no worker plugin is installed"))
    return workers


def select_worker(workers: Sequence[Any], platform: str | None = None, pm: Any = None) -> Any:
    """The worker that builds for ``platform`` (default: the host's): the
    ``pybk_select_worker`` hook's answer, else the first worker."""
    if pm is None:
        from pybk.core.plugins import get_plugin_manager

        pm = get_plugin_manager()
    if platform is None:
        from pybk.core.platform import host_platform

        platform = str(host_platform())
    chosen = pm.hook.pybk_select_worker(platform=platform, workers=list(workers))
    if chosen is None:
        return workers[0]
    if not any(chosen is worker for worker in workers):
        raise PluginValidationError("pybk_select_worker answered a worker that is not one of "
                                    f"those offered: {chosen!r}")
    return chosen


def close_workers(workers: Sequence[Any]) -> None:
    """Close each worker; the first failure is raised after all were closed."""
    error: BaseException | None = None
    for worker in workers:
        try:
            worker.close()
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error
