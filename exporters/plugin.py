"""Registers the built-in exporters and ``pybk images``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pybk.core.markers import hookimpl

if TYPE_CHECKING:
    import argparse


@hookimpl
def pybk_register_exporters():
    from pybk.exporters.image import ImageExporter, RegistryExporter
    from pybk.exporters.local import LocalExporter, TarExporter
    from pybk.exporters.oci import DockerExporter, OCIExporter

    return [LocalExporter, TarExporter, ImageExporter, RegistryExporter, OCIExporter,
            DockerExporter]


@hookimpl
def pybk_add_commands(commands):
    commands.add("images", _images, help="the local image store: ls, tag, rm, inspect",
                 arguments=_images_arguments)


def _images_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="...")  # argparse.REMAINDER: everything after the name


def _images(ns: argparse.Namespace) -> int:
    from pybk.core.paths import default_root
    from pybk.exporters.cli_support import images_command

    return images_command(list(ns.args), ns.root or default_root())
