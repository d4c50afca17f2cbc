"""The ``hello`` exporter: writes ``<greeting> from pybk-hello: <N> files`` to ``dest``."""

from __future__ import annotations

import os

import attrs

from pybk.core import Exporter, ExporterInstance, ExportResponse, hookimpl


@attrs.frozen
class HelloOptions:
    dest: str
    greeting: str = "hello"


class HelloInstance(ExporterInstance):
    def __init__(self, options: HelloOptions):
        self.options = options

    def export(self, result, info):
        with result.mount() as root:
            count = sum(len(files) for _, _, files in os.walk(root))
        with open(self.options.dest, "w") as f:
            f.write(f"{self.options.greeting} from pybk-hello: {count} files\n")
        return ExportResponse({"hello.files": count})


class HelloExporter(Exporter):
    """Writes a greeting and the number of files in the result."""

    name = "hello"
    Options = HelloOptions

    def resolve(self, options: HelloOptions) -> ExporterInstance:
        return HelloInstance(options)


@hookimpl
def pybk_register_exporters():
    return HelloExporter
