"""Canonical bytes: orjson with sorted keys. What digests and cache keys are computed over."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_dumps(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace."""
    return orjson.dumps(obj, option=_CANONICAL)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def sha256_digest(data: bytes) -> str:
    """OCI digest form ``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
