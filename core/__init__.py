"""pybk.core — the small core: hooks, plugin manager, LLB, solver, store, config, CLI.

What plugin authors import lives here: ``hookimpl``, the plugin interfaces and the errors.
Attributes are loaded lazily (the hook markers too: importing ``pybk.core.cli.entry`` must not
import pluggy) so ``pybk --version`` and the daemon client stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "hookimpl": "pybk.core.markers",
    "hookspec": "pybk.core.markers",
    "Plugin": "pybk.core.interfaces",
    "Frontend": "pybk.core.interfaces",
    "FrontendRequest": "pybk.core.interfaces",
    "FrontendResult": "pybk.core.interfaces",
    "FrontendBridge": "pybk.core.interfaces",
    "Exporter": "pybk.core.interfaces",
    "ExporterInstance": "pybk.core.interfaces",
    "ExportResponse": "pybk.core.interfaces",
    "CacheBackend": "pybk.core.interfaces",
    "CacheExporter": "pybk.core.interfaces",
    "CacheImporter": "pybk.core.interfaces",
    "Worker": "pybk.core.interfaces",
    "NoOptions": "pybk.core.interfaces",
    "PybkError": "pybk.core.errors",
    "UsageError": "pybk.core.errors",
    "ConfigError": "pybk.core.errors",
    "InputError": "pybk.core.errors",
    "BuildError": "pybk.core.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pybk.core' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
