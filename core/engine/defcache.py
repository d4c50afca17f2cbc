"""On-disk cache of frontend results, so a rebuild with unchanged inputs skips the frontend.

A frontend class opts in with ``definition_cache = True``: its result must depend only on its
options, the files it reads through the bridge, and image configs it resolves. The entry's key
is the sha256 of pybk's version, a fingerprint of the frontend's and the LLB model's source
files, the frontend name, its options, the local and OCI-layout directories and the machine.
The entry records every file and directory listing the frontend read, with a digest of what it
saw (or that it was missing), and every image reference not pinned by digest that it resolved,
with the digest it resolved to; a lookup re-reads the files and re-resolves the references (a tag
may move: as BuildKit does on every build) and uses the entry only if all still match. Results
that used a nested solve are never stored. Entries live in ``<root>/defcache/`` as JSON, written atomically.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.interfaces import FrontendResult

__all__ = ["CachedFrontendResult", "RecordingBridge", "cache_key", "lookup", "store"]

_FORMAT = 1
#: entries kept; when more, the least recently written are removed down to ``_KEEP_AFTER_TRIM``
_MAX_ENTRIES = 256
_KEEP_AFTER_TRIM = 192


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


class RecordingBridge:
    """Wraps a frontend bridge; remembers what the frontend read and whether it stayed pure."""

    def __init__(self, bridge: Any):
        self._bridge = bridge
        self.files: list[list[Any]] = []  # [input, path, sha256 hex or None when missing]
        self.dirs: list[list[Any]] = []
        self.images: list[list[Any]] = []  # [ref, platform, digest it resolved to]
        self.warnings: list[str] = []
        self.cacheable = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bridge, name)

    def read_file(self, input_name: str, path: str, *, offset: int = 0,
                  length: int | None = None) -> bytes:
        if offset or length is not None:
            self.cacheable = False  # partial reads are not recorded
            return self._bridge.read_file(input_name, path, offset=offset, length=length)
        try:
            data = self._bridge.read_file(input_name, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self.files.append([input_name, path, None])
            raise
        self.files.append([input_name, path, _digest(data)])
        return data

    def read_dir(self, input_name: str, path: str) -> list[str]:
        try:
            names = self._bridge.read_dir(input_name, path)
        except (FileNotFoundError, NotADirectoryError):
            self.dirs.append([input_name, path, None])
            raise
        self.dirs.append([input_name, path, _digest("\0".join(names).encode())])
        return names

    def resolve_image_config(self, ref: str, platform: str | None = None) -> tuple[str, dict]:
        digest, config = self._bridge.resolve_image_config(ref, platform)
        if not ref.startswith("oci-layout://") and "@sha256:" not in ref:
            self.images.append([ref, platform, digest])
        return digest, config

    def solve(self, definition: Any) -> Any:
        self.cacheable = False
        return self._bridge.solve(definition)

    def warn(self, message: str, *, location: Any = None) -> None:
        self.warnings.append(message)
        self._bridge.warn(message, location=location)


def _code_fingerprint(frontend_cls: type) -> list[Any]:
    """(name, size, mtime) of the frontend's package files and of the LLB model's, so an
    upgrade or an edit of either never reuses an entry."""
    from pybk.core import __version__, llb

    dirs = {os.path.dirname(os.path.abspath(llb.__file__))}
    module = sys.modules.get(frontend_cls.__module__)
    if module is not None and getattr(module, "__file__", None):
        dirs.add(os.path.dirname(os.path.abspath(module.__file__)))
    out: list[Any] = [__version__]
    for directory in sorted(dirs):
        with os.scandir(directory) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if entry.name.endswith((".py", ".lark")) or entry.name == "grammar":
                    st = entry.stat()
                    out.append([entry.path, st.st_size, st.st_mtime_ns])
                if entry.name == "grammar" and entry.is_dir():
                    with os.scandir(entry.path) as grammar:
                        for g in sorted(grammar, key=lambda e: e.name):
                            gst = g.stat()
                            out.append([g.path, gst.st_size, gst.st_mtime_ns])
    return out


def cache_key(frontend_name: str, frontend_cls: type, opts: Mapping[str, str],
              local_dirs: Mapping[str, str], oci_layouts: Mapping[str, str],
              build_platforms: Sequence[str] = ()) -> str:
    """The entry name for one frontend invocation (``build_platforms``: the bridge's, the
    worker's platforms the frontend's defaults come from)."""
    from pybk.core.serialize import canonical_dumps

    material = {
        "format": _FORMAT,
        "code": _code_fingerprint(frontend_cls),
        "frontend": frontend_name,
        "opts": dict(opts),
        "locals": {name: str(value) for name, value in local_dirs.items()},
        "layouts": dict(oci_layouts),
        "machine": os.uname().machine,
        "build_platforms": list(build_platforms),
    }
    return hashlib.sha256(canonical_dumps(material)).hexdigest()


class CachedFrontendResult:
    """A hit: the frontend's result and the warnings it gave."""

    def __init__(self, result: FrontendResult, warnings: list[str]):
        self.result = result
        self.warnings = warnings


def _entry_path(root: str | os.PathLike[str], key: str) -> str:
    return os.path.join(os.fspath(root), "defcache", key + ".json")


def _still_valid(entry: Mapping[str, Any], bridge: Any) -> bool:
    for input_name, path, digest in entry["files"]:
        try:
            seen = _digest(bridge.read_file(input_name, path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            seen = None
        except OSError:
            return False
        if seen != digest:
            return False
    for input_name, path, digest in entry["dirs"]:
        try:
            seen = _digest("\0".join(bridge.read_dir(input_name, path)).encode())
        except (FileNotFoundError, NotADirectoryError):
            seen = None
        except OSError:
            return False
        if seen != digest:
            return False
    for ref, wanted, digest in entry.get("images", []):
        try:
            seen, _ = bridge.resolve_image_config(ref, wanted)
        except Exception:
            return False  # the frontend will resolve it again and report what is wrong
        if seen != digest:
            return False
    return True


def lookup(root: str | os.PathLike[str], key: str, bridge: Any) -> CachedFrontendResult | None:
    """The stored result for ``key`` if every file the frontend read is unchanged and every
    image tag it resolved still resolves to the same digest, else None."""
    import orjson

    from pybk.core.errors import PybkError
    from pybk.core.llb import Definition

    path = _entry_path(root, key)
    try:
        with open(path, "rb") as f:
            entry = orjson.loads(f.read())
        if entry.get("format") != _FORMAT or not _still_valid(entry, bridge):
            return None
        definition = Definition.from_bytes(entry["definition"])
        metadata = {k: base64.b64decode(v) for k, v in entry["metadata"].items()}
        result = FrontendResult(definition=definition, image_config=entry["image_config"],
                                metadata=metadata)
        warnings = [str(w) for w in entry["warnings"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, PybkError):
        return None  # a missing or corrupt entry is a miss, never a failed build
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept longest by the trim
    return CachedFrontendResult(result, warnings)


def store(root: str | os.PathLike[str], key: str, result: FrontendResult,
          recorder: RecordingBridge) -> bool:
    """Save ``result`` under ``key`` if the frontend run was cacheable; True when saved."""
    import orjson

    if not recorder.cacheable:
        return False
    entry = {
        "format": _FORMAT,
        "files": recorder.files,
        "dirs": recorder.dirs,
        "images": recorder.images,
        "warnings": recorder.warnings,
        "definition": result.definition.to_bytes().decode(),
        "image_config": dict(result.image_config) if result.image_config is not None else None,
        "metadata": {k: base64.b64encode(bytes(v)).decode() for k, v in
                     (result.metadata or {}).items()},
    }
    try:
        data = orjson.dumps(entry)
    except TypeError:
        return False  # something that does not round-trip through JSON: do not cache
    path = _entry_path(root, key)
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    _trim(directory)
    return True


def _trim(directory: str) -> None:
    """Keep the directory bounded: drop the least recently written entries."""
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if e.name.endswith(".json")]
        if len(entries) <= _MAX_ENTRIES:
            return
        entries.sort(key=lambda e: e.stat().st_mtime_ns)
        for old in entries[: len(entries) - _KEEP_AFTER_TRIM]:
            with contextlib.suppress(OSError):
                os.unlink(old.path)
    except OSError:
        return
