"""From a plugin name (and its attributes) to a plugin instance, one way for every caller.

``--output type=local,dest=out`` becomes the ``local`` exporter's instance: the class is looked up
in the plugin registry, the attributes are structured into its ``Options``
(:func:`pybk.core.converter.structure_options`, which names the flag in every problem) and the
plugin validates them; anything the plugin's code raises carries a note naming the plugin and its
distribution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from pybk.core.errors import UsageError

#: what :func:`resolve` makes, by kind: (registry, the plugin method given the options)
USES: Mapping[str, tuple[str, str]] = {
    "exporter": ("exporter", "resolve"),
    "cache importer": ("cache backend", "resolve_importer"),
    "cache exporter": ("cache backend", "resolve_exporter"),
}


def _manager(pm: Any) -> Any:
    if pm is not None:
        return pm
    from pybk.core.plugins import get_plugin_manager

    return get_plugin_manager()


def plugin_class(kind: str, name: str, *, pm: Any = None) -> type:
    """The class registered as ``name`` in the ``kind`` registry (``frontend``, ``exporter`` …);
    an unknown name raises :class:`~pybk.core.errors.UnknownPluginError` with a suggestion."""
    return _manager(pm).registry(kind).get(name)


@contextlib.contextmanager
def plugin_errors(kind: str, name: str, *, pm: Any = None) -> Iterator[None]:
    """Note the plugin that registered ``name`` (and its distribution) on any exception raised
    in the block."""
    pm = _manager(pm)
    plugin_name, _ = pm.registry(kind).owner(name)
    with pm.annotate_errors(plugin_name):
        yield


def split_spec(spec: Any) -> tuple[str, dict[str, str]]:
    """``(type, attributes)`` of a spec: a mapping with ``type`` or an object with ``type`` and
    ``attrs`` (:class:`pybk.core.engine.request.OutputSpec`, ``CacheSpec``)."""
    if isinstance(spec, Mapping):
        attrs_in = {str(k): str(v) for k, v in spec.items()}
        return attrs_in.pop("type", ""), attrs_in
    return spec.type, dict(spec.attrs)


def resolve(kind: str, spec: Any, *, where: str, pm: Any = None) -> Any:
    """The plugin instance ``spec`` asks for.

    :param kind: ``exporter`` (an exporter instance, from ``Exporter.resolve``), ``cache
        importer`` or ``cache exporter`` (from ``CacheBackend.resolve_importer`` /
        ``resolve_exporter``).
    :param spec: a mapping with ``type`` and the attributes, or an object with ``type`` and
        ``attrs``.
    :param where: the flag the spec came from (``--output``, ``--cache-from`` …), named in
        every error.
    :param pm: the plugin manager (default: the process-wide one).
    :returns: what the plugin's method returned.
    :raises pybk.core.errors.UsageError: an unknown type, a bad attribute, or an operation the
        plugin does not support.
    """
    from pybk.core.converter import structure_options
    from pybk.core.interfaces import UnsupportedOperation

    registry_kind, method = USES[kind]
    name, attrs_in = split_spec(spec)
    pm = _manager(pm)
    registry = pm.registry(registry_kind)
    if registry_kind == "exporter" and not name:
        raise UsageError("an output needs a type (e.g. type=local,dest=DIR)", flag=where)
    if registry_kind == "cache backend" and name not in registry:
        raise UsageError(f"unknown cache type {name!r} (known: {', '.join(registry.names())})",
                         flag=where)
    cls = registry.get(name)
    options = structure_options(cls.Options, attrs_in, where=where)
    with pm.annotate_errors(registry.owner(name)[0]):
        instance = cls()
        try:
            return getattr(instance, method)(options)
        except UnsupportedOperation as exc:
            hint = (" (import an inline cache with type=registry,ref=IMAGE)"
                    if name == "inline" else "")
            raise UsageError(f"{exc}{hint}", flag=where) from None


def warm_up_options(pm: Any = None) -> None:
    """Structure empty attributes into every exporter's and cache backend's ``Options``, so the
    converter has imported what it needs and generated its code for each class: a process that
    forks a child per command (``pybkd``) does it once instead of in every child."""
    from pybk.core.converter import structure_options

    pm = _manager(pm)
    for registry_kind in ("exporter", "cache backend"):
        registry = pm.registry(registry_kind)
        for name in registry.names():
            with contextlib.suppress(Exception):  # required attributes missing: still warmed
                structure_options(registry.get(name).Options, {}, where="--output")
