"""A small base image with a working ``python3 -m pip``, made from this machine's files.

``build_python_layout(outdir)`` writes an OCI image layout (tag ``latest``) of two layers:

1. the busybox layer of ``examples/busybox_layout.py`` (the same blob as the busybox image's);
2. Debian's ``/usr/bin/python3.11`` (and ``/usr/bin/python3`` → ``python3.11``), the shared
   libraries ``ldd`` lists for it and for the extension modules of ``lib-dynload`` (the dynamic
   loader included, symlinks such as ``/lib`` → ``usr/lib`` kept as on the host),
   ``/usr/lib/python3.11`` without ``test/``, ``idlelib/``, ``tkinter/``, ``turtledemo/``,
   ``__pycache__/``, the static ``config-3.11-*`` directory, Debian's ``EXTERNALLY-MANAGED``
   marker (a pip install into the image is no Debian system's business) and its
   ``sitecustomize.py`` link into ``/etc``; and pip (pure Python, with its ``dist-info``) copied
   from the interpreter running the tests into ``/usr/lib/python3/dist-packages``, which
   Debian's python3.11 has on ``sys.path``. ``pip install`` puts packages in
   ``/usr/local/lib/python3.11/dist-packages``, also on that path.

Entries are sorted, owned by root and share one fixed mtime. The config sets ``PATH``,
``PIP_DISABLE_PIP_VERSION_CHECK=1`` (pip asks no index about itself) and
``PIP_ROOT_USER_ACTION=ignore``.

``require_python_image()`` skips the calling test when ``/usr/bin/python3.11`` (Debian's
``python3.11``) or ``/bin/busybox`` is missing, and fails instead under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from support.busybox import busybox_layout

PYTHON = "/usr/bin/python3.11"
STDLIB = "/usr/lib/python3.11"
BUSYBOX = "/bin/busybox"
PIP_DEST = "/usr/lib/python3/dist-packages"
SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "__pycache__"}
SKIP_FILES = {"EXTERNALLY-MANAGED", "sitecustomize.py"}
ENV = (busybox_layout.PATH_ENV, "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore")
#: gzip level of the Python layer: 1 writes it several times faster than 9 for ~20 % more bytes
COMPRESSLEVEL = 1


def python_image_missing() -> str | None:
    """Why the Python image cannot be made here, or None."""
    if not os.access(PYTHON, os.X_OK):
        return f"{PYTHON} is missing (apt-get install python3.11)"
    if not os.path.isdir(STDLIB):
        return f"{STDLIB} is missing (apt-get install libpython3.11-stdlib)"
    if not os.access(BUSYBOX, os.X_OK):
        return f"{BUSYBOX} is missing (apt-get install busybox-static)"
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed for the interpreter running the tests"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the calling test, or fail it under ``CI=true``, where nothing may be missing."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: missing tools fail instead of skipping)")
    pytest.skip(reason)


def require_python_image() -> None:
    reason = python_image_missing()
    if reason:
        skip_or_fail(reason)


class _Layer:
    """The entries of one layer, by path (no leading slash)."""

    def __init__(self, below: set[str]):
        self.below = below  # paths the layers underneath have (their directories are reused)
        self.items: dict[str, tuple[tarfile.TarInfo, str | None]] = {}

    def _info(self, path: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.mode = stat.S_IMODE(st.st_mode)
        return info

    def directory(self, path: str, source: str | None = None) -> None:
        """``path`` (and its parents) as directories, unless the layers below have them; the
        mode is ``source``'s (default: the host's ``/path``, else 0755)."""
        if not path or path in self.items or path in self.below:
            return
        self.directory(os.path.dirname(path))
        info = tarfile.TarInfo(path + "/")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        with contextlib.suppress(FileNotFoundError):
            info.mode = stat.S_IMODE(os.stat(source or "/" + path).st_mode)
        self.items[path] = (info, None)

    def symlink(self, path: str, target: str) -> None:
        if path in self.below:
            raise ValueError(f"/{path} would replace the base image's entry with a symlink")
        self.directory(os.path.dirname(path))
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.items[path] = (info, None)

    def host_path(self, host: str, _depth: int = 0) -> None:
        """Copy the host file ``host`` (absolute) to the same path, keeping every symlink met
        on the way (``/lib`` → ``usr/lib``, ``libz.so.1`` → ``libz.so.1.2.13`` …) as a
        symlink."""
        if _depth > 40:
            raise ValueError(f"too many levels of symlinks at {host}")
        parts = host.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                target = os.readlink(prefix)
                self.symlink(prefix.lstrip("/"), target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
                self.host_path(os.path.join(resolved, *parts[i:]), _depth + 1)
                return
        st = os.stat(host)
        if stat.S_ISREG(st.st_mode):
            path = host.lstrip("/")
            self.directory(os.path.dirname(path))
            self.items[path] = (self._info(path, st), host)

    def tree(self, source: str, dest: str, skip_dirs: set[str] = frozenset(),
             skip_files: set[str] = frozenset()) -> None:
        """Copy the directory ``source`` to ``dest`` (both absolute): regular files, symlinks
        as they are, directories (none named in ``skip_dirs``)."""
        for folder, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
            relative = os.path.relpath(folder, source)
            target = os.path.normpath(os.path.join(dest, relative)).lstrip("/")
            self.directory(target, folder)
            for name in dirs + files:
                host = os.path.join(folder, name)
                path = f"{target}/{name}"
                if os.path.islink(host):
                    if name not in skip_files:
                        self.symlink(path, os.readlink(host))
                elif name in files and name not in skip_files:
                    st = os.stat(host)
                    if stat.S_ISREG(st.st_mode):
                        self.items[path] = (self._info(path, st), host)

    def entries(self) -> list[tuple[str, tarfile.TarInfo, str | None]]:
        result = []
        for path in sorted(self.items, key=lambda p: p.split("/")):
            info, content = self.items[path]
            info.mtime = busybox_layout.MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            result.append((path, info, content))
        return result


def shared_libraries(binaries: list[str]) -> list[str]:
    """The libraries (and the dynamic loader) ``ldd`` lists for ``binaries``, as it names them."""
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            words = line.split()
            if "=>" in words:
                words = words[words.index("=>") + 1:]
            if words and words[0].startswith("/"):
                found.add(words[0])
    return sorted(found)


def _pip_sources() -> tuple[str, str | None]:
    """(pip's package directory, its dist-info directory or None) of this interpreter."""
    spec = importlib.util.find_spec("pip")
    assert spec is not None and spec.origin
    info = getattr(importlib.metadata.distribution("pip"), "_path", None)
    return os.path.dirname(spec.origin), str(info) if info and os.path.isdir(info) else None


def _config_dirs() -> set[str]:
    return {name for name in os.listdir(STDLIB) if name.startswith("config-3.11")}


def python_layer_entries(below: set[str]) -> list[tuple[str, tarfile.TarInfo, str | None]]:
    """The entries of the Python layer over a base layer holding the paths ``below``."""
    layer = _Layer(below)
    layer.host_path(PYTHON)
    layer.symlink("usr/bin/python3", "python3.11")
    dynload = os.path.join(STDLIB, "lib-dynload")
    extensions = sorted(os.path.join(dynload, name) for name in os.listdir(dynload)
                        if name.endswith(".so"))
    for library in shared_libraries([PYTHON, *extensions]):
        layer.host_path(library)
    layer.tree(STDLIB, STDLIB, SKIP_DIRS | _config_dirs(), SKIP_FILES)
    package, info = _pip_sources()
    layer.tree(package, f"{PIP_DEST}/pip", {"__pycache__"})
    if info:
        layer.tree(info, f"{PIP_DEST}/{os.path.basename(info)}")
    return layer.entries()


def build_python_layout(outdir: str | Path, tag: str = "latest") -> Path:
    """Write the Python image's OCI layout at ``outdir`` and return its path."""
    outdir = str(outdir)
    blobs_dir = os.path.join(outdir, "blobs", "sha256")
    os.makedirs(blobs_dir, exist_ok=True)
    base = busybox_layout.busybox_layer(blobs_dir, BUSYBOX)
    below = {path for path, _info, _content in busybox_layout._entries(BUSYBOX)}
    digest, size, diff_id = busybox_layout.write_entries_layer(
        python_layer_entries(below), blobs_dir, compresslevel=COMPRESSLEVEL)
    python = busybox_layout.Layer(digest, size, diff_id,
                                  "pythonimage.py: Debian's python3.11 + pip of the test host")
    built = busybox_layout.write_image(blobs_dir, busybox_layout.host_platform(), [base, python],
                                       env=ENV)
    busybox_layout.tag_layout(outdir, {"mediaType": busybox_layout.OCI_MANIFEST,
                                       "digest": built.manifest_digest,
                                       "size": built.manifest_size,
                                       "platform": built.platform}, tag)
    return Path(outdir)
