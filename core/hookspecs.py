"""Every hook pybk calls. Hooks are for discovery and events; behaviour lives in classes.

Hooks are called by keyword. Registration hooks take no arguments and return a class or a
list of classes; decision hooks stop at the first non-None answer (built-ins answer last);
notification hooks return nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pybk.core.markers import hookspec

if TYPE_CHECKING:
    from pluggy import PluginManager

    from pybk.core.interfaces import CacheBackend, Exporter, Frontend, Worker

# -- initialisation ----------------------------------------------------------------------------


@hookspec(historic=True)
def pybk_addhooks(pluginmanager: PluginManager) -> None:
    """Add new hookspecs to the plugin manager.

    :param pluginmanager: the :class:`pybk.core.plugins.PybkPluginManager`; call
        ``pluginmanager.add_hookspecs(module)``.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec(historic=True)
def pybk_configure(config: Any) -> None:
    """Called once the configuration is loaded, before any build starts.

    :param config: the loaded :class:`pybk.core.config.schema.Config`.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_unconfigure(config: Any) -> None:
    """Called at shutdown, in reverse order of registration.

    :param config: the :class:`pybk.core.config.schema.Config` given to ``pybk_configure``.
    :returns: nothing.

    .. versionadded:: 0.1
    """


# -- registration ------------------------------------------------------------------------------


@hookspec
def pybk_register_frontends() -> type[Frontend] | Sequence[type[Frontend]]:
    """Contribute frontend classes (``name`` like ``dockerfile.v0``).

    :returns: a class or a list of classes.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_register_workers() -> type[Worker] | Sequence[type[Worker]]:
    """Contribute worker classes (``name`` like ``oci``).

    The engine makes one instance of each with ``from_config(config, root=...)`` (None: the
    configuration disables it) and builds on the one ``pybk_select_worker`` chooses; see
    :class:`pybk.core.interfaces.Worker`.

    :returns: a class or a list of classes.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_register_exporters() -> type[Exporter] | Sequence[type[Exporter]]:
    """Contribute exporter classes (``name`` like ``image``, ``local``, ``tar``).

    :returns: a class or a list of classes.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_register_cache_backends() -> type[CacheBackend] | Sequence[type[CacheBackend]]:
    """Contribute remote cache backend classes (``name`` like ``s3``, ``gha``).

    :returns: a class or a list of classes.

    .. versionadded:: 0.1
    """


# -- command line ------------------------------------------------------------------------------


@hookspec
def pybk_add_commands(commands: Any) -> None:
    """Add commands to the ``pybk`` command line.

    Called, in plugin load order, only when the command line may involve a plugin's command
    (one the core does not have, or a help listing every command), never for ``pybk build``.
    Keep it cheap: add names and arguments here, import what a command needs in its ``run``.

    :param commands: the command table; ``commands.add(name, run, help=…, arguments=None,
        parent=None)`` adds ``pybk NAME`` (``parent="debug"``: ``pybk debug NAME``). ``run``
        is called with the parsed :class:`argparse.Namespace` (global options included:
        ``root``, None for the default store, ``config``, ``debug``) and returns the exit code;
        ``arguments``, if given, is called with the command's
        :class:`argparse.ArgumentParser` to add its arguments.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_warm_up(config: Any) -> None:
    """Prepare what every command would otherwise build again (parsers, tables).

    Called once in a process that serves many commands (``pybkd``), before it serves any; the
    processes it forks for each command inherit what was built.

    :param config: the loaded :class:`pybk.core.config.schema.Config`.
    :returns: nothing.

    .. versionadded:: 0.1
    """


# -- decisions ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def pybk_select_frontend(filename: str, directives: Mapping[str, str]) -> str | None:
    """Choose the frontend for a build file when none was named with ``--frontend``.

    Stops at first non-None result; return None to let other plugins decide.

    :param filename: the build file's name (``Dockerfile``, ``pipeline.yaml``).
    :param directives: parser directives found at the top of the file (``syntax`` …).
    :returns: a registered frontend name, or None.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def pybk_select_worker(platform: str, workers: Sequence[Worker]) -> Worker | None:
    """Choose the worker that runs a build for ``platform``.

    Stops at first non-None result; return None to let other plugins decide. The built-in
    answer is the first worker listing the platform; when nobody answers, the first worker
    builds. The engine asks once per client, for the host's platform (the platforms of a
    multi-platform build run on that worker, emulated when needed).

    :param platform: the target platform, e.g. ``linux/amd64``.
    :param workers: the enabled worker instances, in registration order (built-ins first).
    :returns: one of ``workers``, or None.

    .. versionadded:: 0.1
    """


# -- notifications -----------------------------------------------------------------------------


@hookspec
def pybk_build_started(request: Any) -> None:
    """A build is about to solve.

    :param request: the :class:`pybk.core.engine.request.BuildRequest` of a ``pybk build``, or
        None for a solve started from the Python API.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_progress(event: Any) -> None:
    """A progress event (vertex started/cached/completed, status, log) was emitted.

    :param event: a :mod:`pybk.core.progress.events` event.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def pybk_build_finished(request: Any, result: Any, error: BaseException | None) -> None:
    """A build ended, successfully (``error`` is None) or not.

    :param request: the :class:`pybk.core.engine.request.BuildRequest`, or None (Python API).
    :param result: the solve result, or None on failure.
    :param error: the exception that ended the build, or None.
    :returns: nothing.

    .. versionadded:: 0.1
    """
