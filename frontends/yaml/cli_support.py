"""Command-line helpers of the YAML frontend (``pybk debug yaml-schema``)."""

from __future__ import annotations


def yaml_schema_command() -> str:
    """The JSON Schema of ``yaml.v0`` pipelines (for editors), as indented JSON text."""
    import json

    from pybk.frontends.yaml.schema import json_schema

    return json.dumps(json_schema(), indent=2) + "\n"
