"""The busybox base image of the tests: built by examples/busybox_layout.py, pushed with pybk.

``build_busybox_layout(dir)`` writes the OCI layout; ``push_oci_layout(layout, ref)`` pushes one
tag of a layout through pybk's own registry client; ``skopeo_inspect`` reads a registry image
with an independent client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "busybox_layout.py"
REF_NAME = "org.opencontainers.image.ref.name"


def _load_example() -> Any:
    name = "pybk_examples_busybox_layout"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


busybox_layout = _load_example()


def build_busybox_layout(outdir: str | Path, tag: str = "latest",
                         others: dict[str, str] | None = None) -> Path:
    """Write the busybox OCI layout at ``outdir`` (tag ``tag``; an image index with ``others``,
    ``{architecture: busybox binary}``) and return its path."""
    busybox_layout.build_layout(str(outdir), tag, others=others)
    return Path(outdir)


def layout_manifest(layout: str | Path, tag: str = "latest") -> tuple[dict, bytes]:
    """``(index entry, manifest bytes)`` of ``tag`` in an OCI layout."""
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if (entry.get("annotations") or {}).get(REF_NAME) == tag:
            return entry, (layout / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]).read_bytes()
    raise KeyError(f"{layout} has no tag {tag!r}")


async def push_oci_layout_async(client: Any, layout: str | Path, ref: str, *, tag: str = "latest") -> str:
    """Push ``tag`` of ``layout`` to ``ref`` with a pybk RegistryClient; returns the manifest digest."""

    layout = Path(layout)
    entry, manifest_bytes = layout_manifest(layout, tag)
    manifest = json.loads(manifest_bytes)
    blobs = layout / "blobs" / "sha256"
    # an index: each of its manifests by digest first
    for child in manifest.get("manifests", []):
        data = (blobs / child["digest"].split(":", 1)[1]).read_bytes()
        await _push_manifest_blobs(client, ref, json.loads(data), blobs)
        await client.push_manifest(ref, data, child["mediaType"], by_digest=True)
    await _push_manifest_blobs(client, ref, manifest, blobs)
    return await client.push_manifest(ref, manifest_bytes, entry["mediaType"])


async def _push_manifest_blobs(client: Any, ref: str, manifest: dict, blobs: Path) -> None:
    from pybk.core.registry.client import Descriptor

    for desc in [*([manifest["config"]] if "config" in manifest else []),
                 *manifest.get("layers", [])]:
        descriptor = Descriptor.from_dict(desc)
        await client.push_blob(ref, descriptor, blobs / descriptor.digest.split(":", 1)[1])


def push_oci_layout(layout: str | Path, ref: str, *, tag: str = "latest", **client_options: Any) -> str:
    """Synchronous ``push_oci_layout_async`` with a fresh client."""
    from pybk.core.registry.client import RegistryClient

    async def run() -> str:
        async with RegistryClient(**client_options) as client:
            return await push_oci_layout_async(client, layout, ref, tag=tag)

    return asyncio.run(run())


def skopeo_inspect(ref: str, *, raw: bool = False, creds: tuple[str, str] | None = None) -> dict:
    """``skopeo inspect`` of ``docker://ref`` over plain HTTP."""
    cmd = ["skopeo", "inspect", "--tls-verify=false"]
    if raw:
        cmd.append("--raw")
    if creds:
        cmd += ["--creds", f"{creds[0]}:{creds[1]}"]
    proc = subprocess.run([*cmd, f"docker://{ref}"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo inspect {ref} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)
