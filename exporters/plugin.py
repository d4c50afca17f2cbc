"""Registers the built-in exporters."""

from __future__ import annotations

from pybk.core.markers import hookimpl


@hookimpl
def pybk_register_exporters():
    from pybk.exporters.local import LocalExporter, TarExporter

    return [LocalExporter, TarExporter]
