"""The plugin manager: loads built-ins from plugins.toml, then the ``pybk`` entry-point group.

Environment:

- ``PYBK_DISABLE_PLUGIN_AUTOLOAD=1`` — skip entry-point plugins (built-ins still load).
- ``PYBK_DISABLED_PLUGINS=a,b`` — block plugins by registration name (not essential ones).
- ``PYBK_PLUGINS=x,y`` — load only these entry-point plugins.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any, Generic, TypeVar

import pluggy

from pybk.core import hookspecs
from pybk.core.didyoumean import did_you_mean
from pybk.core.errors import (
    DuplicatePluginError,
    PluginLoadError,
    PluginValidationError,
    UnknownPluginError,
)
from pybk.core.interfaces import CacheBackend, Exporter, Frontend, Plugin, Worker
from pybk.core.model import Model, has

ENTRY_POINT_GROUP = "pybk"
BUILTIN_DIST = "pybk"

T = TypeVar("T", bound=Plugin)


class BuiltinPlugin(Model):
    """One ``[[plugin]]`` entry of plugins.toml."""

    name: str
    module: str
    essential: bool = False


def plugins_toml_path() -> Path:
    """plugins.toml sits next to the core package (works for wheels and editable installs)."""
    import pybk.core

    return Path(pybk.core.__file__).resolve().parent.parent / "plugins.toml"


def read_builtin_plugins(path: Path | None = None) -> list[BuiltinPlugin]:
    path = path or plugins_toml_path()
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = data.get("plugin", [])
    unknown = set(data) - {"plugin"}
    if unknown or not isinstance(entries, list):
        raise PluginLoadError(f"{path}: expected only [[plugin]] tables, found {sorted(unknown)}")
    plugins = []
    for i, entry in enumerate(entries):
        extra = set(entry) - {"name", "module", "essential"}
        if extra or "name" not in entry or "module" not in entry:
            raise PluginLoadError(f"{path}: plugin[{i}] needs name and module only, got {sorted(entry)}")
        plugins.append(BuiltinPlugin(entry["name"], entry["module"], bool(entry.get("essential"))))
    return plugins


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _normalized_dist_name(dirname: str) -> str:
    """``Foo.Bar-1.0.dist-info`` -> ``foo_bar`` (importlib.metadata's normalisation)."""
    stem = dirname.rsplit(".", 1)[0]
    return re.sub(r"[-_.]+", "_", stem.partition("-")[0]).lower()


def find_entry_points(group: str) -> list[Any]:
    """``importlib.metadata.entry_points(group=group)``, same order and first-on-sys.path
    wins, but only distributions whose ``entry_points.txt`` names the group are parsed (the
    standard call reads every installed distribution's metadata: ~15 ms per process)."""
    marker = f"[{group}]".encode()
    seen: set[str] = set()
    found: list[Any] = []
    for base in sys.path:
        directory = base or "."
        if not isinstance(directory, str):
            continue
        if os.path.isfile(directory):  # a zip on sys.path: rare, let the standard code read it
            from importlib import metadata

            dists = list(metadata.distributions(path=[directory]))
        else:
            try:
                with os.scandir(directory) as it:
                    names = [e.name for e in it if e.name.endswith((".dist-info", ".egg-info"))]
            except OSError:
                continue
            dists = []
            for name in names:
                normalized = _normalized_dist_name(name)
                if normalized in seen:
                    continue
                seen.add(normalized)
                try:
                    with open(os.path.join(directory, name, "entry_points.txt"), "rb") as f:
                        if marker not in f.read():
                            continue
                except OSError:
                    continue
                from importlib import metadata

                dists.append(metadata.PathDistribution(Path(directory, name)))
        for dist in dists:
            found.extend(dist.entry_points.select(group=group))
    return found


class PluginInfo(Model):
    """What ``pybk plugins`` shows for one registered class."""

    name: str
    kind: str
    plugin: str
    distribution: str
    version: str
    description: str


class Registry(Generic[T]):
    """name → class for one kind of plugin; rejects duplicates, explains unknown names."""

    def __init__(self, kind: str, base: type[T]):
        self.kind = kind
        self.base = base
        self._classes: dict[str, type[T]] = {}
        self._owners: dict[str, tuple[str, str]] = {}

    def add(self, cls: type[T], *, plugin: str, distribution: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginValidationError(
                f"{self.kind} class {cls.__qualname__} from plugin {plugin!r} has no 'name'"
            )
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginValidationError(
                f"{self.kind} {name!r} from plugin {plugin!r} is not a {self.base.__name__} subclass"
            )
        if not has(cls.Options):
            raise PluginValidationError(
                f"{self.kind} {name!r} from plugin {plugin!r}: Options must be an attrs class"
            )
        if name in self._classes:
            other_plugin, other_dist = self._owners[name]
            raise DuplicatePluginError(
                f"{self.kind} name {name!r} is registered twice: by "
                f"{self._classes[name].__qualname__} (plugin {other_plugin!r}, {other_dist}) and by "
                f"{cls.__qualname__} (plugin {plugin!r}, {distribution})"
            )
        self._classes[name] = cls
        self._owners[name] = (plugin, distribution)

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            choices = sorted(self._classes)
            hint = did_you_mean(name, choices, loose=True, quote="'") or " (is the plugin installed?)"
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}{hint}; available: {', '.join(choices) or 'none'}"
            ) from None

    def owner(self, name: str) -> tuple[str, str]:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[type[T]]:
        return iter(self._classes.values())


_KINDS: tuple[tuple[str, str, type[Plugin]], ...] = (
    ("frontend", "pybk_register_frontends", Frontend),
    ("worker", "pybk_register_workers", Worker),
    ("exporter", "pybk_register_exporters", Exporter),
    ("cache backend", "pybk_register_cache_backends", CacheBackend),
)


class PybkPluginManager(pluggy.PluginManager):
    """pluggy manager with pybk's loading order, block list and registries."""

    def __init__(self) -> None:
        super().__init__("pybk")
        self.add_hookspecs(hookspecs)
        self.essential: set[str] = set()
        self._dists: dict[str, tuple[str, str]] = {}
        self.registries: dict[str, Registry[Any]] = {}

    # -- loading ---------------------------------------------------------------------------

    def load_builtins(self, path: Path | None = None) -> None:
        from pybk.core import __version__

        for entry in read_builtin_plugins(path):
            if entry.essential:
                self.essential.add(entry.name)
            if self.is_blocked(entry.name):
                continue
            try:
                module = import_module(entry.module)
            except Exception as exc:
                raise PluginLoadError(
                    f"cannot import built-in plugin {entry.name!r} ({entry.module}): {exc}"
                ) from exc
            self._dists[entry.name] = (BUILTIN_DIST, __version__)
            self._register_checked(module, entry.name)

    def load_entrypoints(self) -> None:
        if os.environ.get("PYBK_DISABLE_PLUGIN_AUTOLOAD"):
            return
        only = set(_env_list("PYBK_PLUGINS"))
        for ep in find_entry_points(ENTRY_POINT_GROUP):
            if (only and ep.name not in only) or self.is_blocked(ep.name):
                continue
            if self.get_plugin(ep.name) is not None:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"cannot load plugin {ep.name!r} from distribution {dist} {version}: {exc}"
                ) from exc
            self._dists[ep.name] = (dist, version)
            self._register_checked(plugin, ep.name)

    def _register_checked(self, plugin: object, name: str) -> None:
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise self.validation_error(exc, name) from exc

    def validation_error(self, exc: pluggy.PluginValidationError,
                         name: str | None = None) -> PluginLoadError:
        """pluggy's validation error (unknown hook, bad argument) as a one-line PluginLoadError."""
        name = name or self.get_name(exc.plugin) or "?"
        dist, version = self.distribution(name)
        detail = " ".join(str(exc).split())
        return PluginLoadError(f"plugin {name!r} ({dist} {version}) is invalid: {detail}")

    def block(self, name: str) -> None:
        if name in self.essential:
            raise PluginLoadError(f"plugin {name!r} is essential and cannot be disabled")
        self.set_blocked(name)

    def distribution(self, plugin_name: str) -> tuple[str, str]:
        return self._dists.get(plugin_name, ("?", "?"))

    @contextlib.contextmanager
    def annotate_errors(self, plugin_name: str) -> Iterator[None]:
        """Add a note naming the plugin and its distribution to any exception from its code."""
        try:
            yield
        except BaseException as exc:
            dist, version = self.distribution(plugin_name)
            exc.add_note(f"in plugin {plugin_name!r} ({dist} {version})")
            raise

    def build_registries(self) -> None:
        """Build every registry now (each is otherwise built on first use)."""
        for kind, _, _ in _KINDS:
            self.registry(kind)

    def registry(self, kind: str) -> Registry[Any]:
        """The registry of ``kind``, built on first use: a build imports only the plugin
        classes of the kinds it needs (no exporter module for a build without outputs)."""
        registry = self.registries.get(kind)
        if registry is not None:
            return registry
        hook_name, base = next((h, b) for k, h, b in _KINDS if k == kind)
        registry = Registry(kind, base)
        for impl in getattr(self.hook, hook_name).get_hookimpls():
            with self.annotate_errors(impl.plugin_name):
                contributed = impl.function()
            if contributed is None:
                continue
            classes = contributed if isinstance(contributed, list | tuple) else [contributed]
            dist, _ = self.distribution(impl.plugin_name)
            for cls in classes:
                registry.add(cls, plugin=impl.plugin_name, distribution=dist)
        self.registries[kind] = registry
        return registry

    # -- lookups ---------------------------------------------------------------------------

    def frontends(self) -> Registry[Frontend]:
        return self.registry("frontend")

    def workers(self) -> Registry[Worker]:
        return self.registry("worker")

    def exporters(self) -> Registry[Exporter]:
        return self.registry("exporter")

    def cache_backends(self) -> Registry[CacheBackend]:
        return self.registry("cache backend")

    def describe(self) -> list[PluginInfo]:
        """Every registered class, for ``pybk plugins``."""
        rows = []
        self.build_registries()
        for kind, registry in self.registries.items():
            for name in registry.names():
                plugin, dist = registry.owner(name)
                _, version = self.distribution(plugin)
                rows.append(PluginInfo(name, kind, plugin, dist, version,
                                       registry.get(name).describe()))
        return rows


def create_plugin_manager(builtins_path: Path | None = None) -> PybkPluginManager:
    """Load built-ins, entry points, check hook names; registries are built on first use."""
    pm = PybkPluginManager()
    blocked = _env_list("PYBK_DISABLED_PLUGINS")
    # essential names are only known after reading plugins.toml; read it first
    for entry in read_builtin_plugins(builtins_path):
        if entry.essential:
            pm.essential.add(entry.name)
    for name in blocked:
        pm.block(name)
    pm.load_builtins(builtins_path)
    pm.load_entrypoints()
    pm.hook.pybk_addhooks.call_historic(kwargs={"pluginmanager": pm})
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise pm.validation_error(exc) from exc
    return pm


_PM: PybkPluginManager | None = None


def get_plugin_manager() -> PybkPluginManager:
    """The process-wide plugin manager, created on first use."""
    global _PM
    if _PM is None:
        _PM = create_plugin_manager()
    return _PM


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after installing a plugin)."""
    global _PM
    _PM = None
