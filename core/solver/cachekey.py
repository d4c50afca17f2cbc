"""Cache keys: what makes two vertices interchangeable, as opposed to their digests.

A vertex's cache key is ``sha256`` over its *cache map* (the op with the fields BuildKit keeps
out of keys removed, plus the platform) and one dependency per input: the input's cache key,
or, for inputs that are only read through selectors (COPY sources, read-only bind mounts), the
content checksum of the selected paths. So a COPY whose source files did not change keeps its
key even when the stage it copies from was rebuilt, and an mtime-only touch busts nothing.

Keys are sha256 (not xxh3): they can be shared through remote caches.
"""

from __future__ import annotations

from typing import Any

from pybk.core.llb.ops import (
    SCRATCH,
    ExecOp,
    FileActionCopy,
    FileOp,
    MountType,
    Op,
    encode,
)
from pybk.core.model import Model
from pybk.core.serialize import canonical_dumps, sha256_digest

KEY_VERSION = "pybk.cachekey.v1"
#: a local directory with more entries than this is explained without naming its files
SOURCE_FILES_LIMIT = 4000


class Selector(Model):
    """Paths of an input a vertex reads; their content checksum replaces the input's key."""

    path: str = "/"
    wildcard: bool = False
    follow_links: bool = False
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()


def cache_map(op: Op) -> dict[str, Any]:
    """The op's JSON form minus fields that must not affect the key, plus the platform.

    ExecOp: mount selectors (covered by content checksums), proxy env and extra-host IPs are
    left out, as BuildKit does.
    """
    body = op.op
    if isinstance(body, ExecOp):
        encoded = encode(body)
        meta = encoded.get("meta", {})
        meta.pop("proxy_env", None)
        if "extra_hosts" in meta:
            meta["extra_hosts"] = [{"host": h.get("host", "")} for h in meta["extra_hosts"]]
        for m in encoded.get("mounts", []):
            m.pop("selector", None)
            m.pop("result_id", None)
    else:
        encoded = encode(body) if body is not None else {}
    return {"kind": op.kind, "op": encoded,
            "platform": encode(op.platform) if op.platform is not None else None}


def content_selectors(op: Op) -> dict[int, list[Selector]]:
    """Inputs whose content checksum (of these selectors) replaces their cache key."""
    body = op.op
    found: dict[int, list[Selector]] = {}
    excluded: set[int] = set()
    if isinstance(body, ExecOp):
        for m in body.mounts:
            if m.input == SCRATCH or m.mount_type != MountType.BIND:
                continue
            if not m.readonly or m.dest == "/":
                excluded.add(m.input)
                continue
            found.setdefault(m.input, []).append(Selector(path=m.selector or "/",
                                                          follow_links=True))
    elif isinstance(body, FileOp):
        n = len(op.inputs)
        for action in body.actions:
            if 0 <= action.input < n:
                excluded.add(action.input)
            a = action.action
            if isinstance(a, FileActionCopy) and 0 <= action.secondary_input < n:
                found.setdefault(action.secondary_input, []).append(Selector(
                    path=a.src, wildcard=a.allow_wildcard, follow_links=a.follow_symlink,
                    include_patterns=tuple(a.include_patterns),
                    exclude_patterns=tuple(a.exclude_patterns)))
            owner = getattr(a, "owner", None)
            for opt in (getattr(owner, "user", None), getattr(owner, "group", None)):
                named = getattr(opt, "by_name", None)
                if named is not None and 0 <= named.input < n:
                    excluded.add(named.input)
    return {i: sels for i, sels in found.items() if i not in excluded}


def compute_key(cmap: dict[str, Any], deps: list[str]) -> str:
    """The cache key of a vertex from its cache map and one dependency string per input."""
    return sha256_digest(canonical_dumps({"v": KEY_VERSION, "map": cmap, "deps": deps}))


def source_key(kind: str, identity: dict[str, Any]) -> str:
    """The cache key of a source whose identity is known (image digest, local content …)."""
    return sha256_digest(canonical_dumps({"v": KEY_VERSION, "source": kind, "id": identity}))


def key_inputs(cmap: dict[str, Any], deps: list[str], key: str) -> dict[str, Any]:
    """What a vertex's key was made of, compactly, to tell later why it changed: the key, a
    digest of its cache map, its dependencies, and an ExecOp's environment and arguments."""
    info: dict[str, Any] = {"key": key, "map": sha256_digest(canonical_dumps(cmap)),
                            "deps": deps}
    meta = cmap.get("op", {}).get("meta") if cmap.get("kind") == "exec" else None
    if isinstance(meta, dict):
        info["env"] = list(meta.get("env", ()))
        info["args"] = sha256_digest(canonical_dumps(meta.get("args", [])))
        mounts = cmap["op"].get("mounts", [])
        caches = [m for m in mounts if m.get("mount_type") == MountType.CACHE]
        if caches:  # the map without its cache mounts, and the cache mounts' options
            rest = {**cmap, "op": {**cmap["op"], "mounts": [m for m in mounts
                                                            if m not in caches]}}
            info["map_without_caches"] = sha256_digest(canonical_dumps(rest))
            info["caches"] = sha256_digest(canonical_dumps(caches))
    return info


def files_detail(memo: dict[str, tuple[bool, str]] | None) -> dict[str, Any]:
    """A synced local directory's per-file checksums (``{"files": {path: 16 hex digits}}``),
    from its checksum memo, to name the files that changed; empty beyond
    :data:`SOURCE_FILES_LIMIT` entries."""
    if memo is None or len(memo) > SOURCE_FILES_LIMIT:
        return {}
    return {"files": {rel: record[:16] for rel, (_, record) in memo.items()}}
