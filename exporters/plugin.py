"""Registers the built-in exporters."""

from __future__ import annotations

from pybk.core.markers import hookimpl


@hookimpl
def pybk_register_exporters():
    from pybk.exporters.image import ImageExporter, RegistryExporter
    from pybk.exporters.local import LocalExporter, TarExporter
    from pybk.exporters.oci import DockerExporter, OCIExporter

    return [LocalExporter, TarExporter, ImageExporter, RegistryExporter, OCIExporter,
            DockerExporter]
