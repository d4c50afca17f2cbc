"""Identifiers of image layers: chain ids (what a layer stack is known by, whatever its
compression)."""

from __future__ import annotations

from pybk.core.serialize import sha256_digest


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids of a layer stack: ``chain(n) = sha256(chain(n-1) + " " + diff(n))``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out
