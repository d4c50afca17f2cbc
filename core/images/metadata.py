"""``--metadata-file`` and ``--iidfile``: what the exporters answered, written for scripts."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any


def _decoded(value: Any) -> Any:
    """A base64-encoded JSON object (``containerimage.descriptor``) as the object, like
    ``buildctl --metadata-file``; anything else unchanged."""
    if not isinstance(value, str) or not value or value.startswith("sha256:"):
        return value
    try:
        raw = base64.b64decode(value, validate=True)
        parsed = json.loads(raw)
    except (binascii.Error, ValueError):
        return value
    return parsed if isinstance(parsed, dict) else value


def metadata(responses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The exporter responses merged (later outputs win), descriptors decoded."""
    out: dict[str, Any] = {}
    for response in responses:
        for key, value in response.items():
            out[key] = _decoded(value)
    return out


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_metadata_file(path: str, responses: Sequence[Mapping[str, Any]]) -> None:
    """Write the merged exporter responses as indented JSON."""
    _write(path, json.dumps(metadata(responses), indent=2, sort_keys=True).encode() + b"\n")


def write_iidfile(path: str, response: Mapping[str, Any]) -> None:
    """Write the image ID: the config digest, or the manifest digest when there is no config."""
    image_id = response.get("containerimage.config.digest") or response.get(
        "containerimage.digest")
    if not image_id:
        from pybk.core.errors import UsageError

        raise UsageError("--iidfile needs an image output (type=image, oci or docker)",
                         flag="--iidfile")
    _write(path, str(image_id).encode())
