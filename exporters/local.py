"""``local`` and ``tar`` exporters: the result's filesystem as a directory or a tarball."""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tarfile
from collections.abc import Mapping
from typing import Any

import attrs

from pybk.core.converter import setting
from pybk.core.errors import UsageError
from pybk.core.interfaces import BuildResultView, Exporter, ExporterInstance, ExportResponse


@attrs.frozen
class LocalOptions:
    dest: str
    platform_split: bool | None = setting("platform-split", default=None)
    attestation_prefix: str = setting("attestation-prefix", default="")


@attrs.frozen
class TarOptions:
    dest: str = "-"
    platform_split: bool | None = setting("platform-split", default=None)
    attestation_prefix: str = setting("attestation-prefix", default="")


def _file_subjects(root: str) -> list[dict[str, Any]]:
    """In-toto subjects of an exported tree: each regular file, by path and sha256."""
    import hashlib

    subjects = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            subjects.append({"name": os.path.relpath(path, root),
                             "digest": {"sha256": digest.hexdigest()}})
    return subjects


def provenance_file(info: Mapping[str, Any], result: BuildResultView, root: str,
                    prefix: str) -> tuple[str, bytes] | None:
    """``(file name, statement)`` of the build's provenance about the files under ``root``,
    when one was asked for and not only for images (``inline-only``)."""
    import json

    provenance = info.get("provenance")
    if provenance is None or provenance.inline_only:
        return None
    statement = provenance.statement(result, _file_subjects(root))
    return prefix + provenance.spec.filename, json.dumps(statement, indent=2).encode() + b"\n"


def copy_tree(src: str, dest: str) -> int:
    """Copy a result tree keeping modes, owners (when root), symlinks and hardlinks; returns
    the number of entries written."""
    count = 0
    seen_inodes: dict[tuple[int, int], str] = {}
    as_root = os.geteuid() == 0
    os.makedirs(dest, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        target_dir = dest if rel == "." else os.path.join(dest, rel)
        for name in sorted(dirnames) + sorted(filenames):
            s = os.path.join(dirpath, name)
            d = os.path.join(target_dir, name)
            st = os.lstat(s)
            if os.path.lexists(d) and not (os.path.isdir(d) and not os.path.islink(d)):
                os.unlink(d)
            if os.path.islink(s):
                os.symlink(os.readlink(s), d)
            elif os.path.isdir(s):
                os.makedirs(d, exist_ok=True)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(d, st.st_mode & 0o7777)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                if not as_root:
                    continue  # device nodes need root; skipped like an unprivileged tar
                os.mknod(d, st.st_mode, st.st_rdev)
            elif stat.S_ISSOCK(st.st_mode):
                continue  # sockets cannot be exported (BuildKit skips them too)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen_inodes:
                os.link(seen_inodes[(st.st_dev, st.st_ino)], d)
                count += 1
                continue
            else:
                shutil.copy2(s, d, follow_symlinks=False)
                if st.st_nlink > 1:
                    seen_inodes[(st.st_dev, st.st_ino)] = d
            if as_root:
                os.lchown(d, st.st_uid, st.st_gid)
            if not os.path.islink(s):
                os.chmod(d, st.st_mode & 0o7777)
            count += 1
    for dirpath, _dirnames, _ in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        if rel != ".":
            st = os.lstat(dirpath)
            os.utime(os.path.join(dest, rel), ns=(st.st_atime_ns, st.st_mtime_ns))
    return count


def split_results(result: BuildResultView,
                  platform_split: bool | None) -> list[tuple[str, BuildResultView]]:
    """``(subdirectory, result)`` pairs to export: for a multi-platform result one per platform
    (``linux_amd64`` …) unless ``platform-split=false``, which puts them all at the top."""
    from pybk.core.engine.multiplatform import platform_results, split_name

    results = platform_results(result)
    if results is None:
        return [("", result)]
    split = platform_split is not False
    return [(split_name(platform) if split else "", one) for platform, one in results.items()]


class _LocalInstance(ExporterInstance):
    def __init__(self, options: LocalOptions):
        self.options = options

    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse:
        for subdir, one in split_results(result, self.options.platform_split):
            target = os.path.join(self.options.dest, subdir)
            with one.mount() as root:
                copy_tree(root, target)
                attestation = provenance_file(info, one, root, self.options.attestation_prefix)
            if attestation is not None:
                name, body = attestation
                with open(os.path.join(target, name), "wb") as f:
                    f.write(body)
        return ExportResponse({})


class LocalExporter(Exporter):
    """Writes the result's filesystem into a directory (dest=DIR)."""

    name = "local"
    Options = LocalOptions

    def resolve(self, options: LocalOptions) -> ExporterInstance:
        dest = options.dest
        parent = os.path.dirname(os.path.abspath(dest))
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise UsageError(f"dest {dest!r} exists and is not a directory", flag="--output")
        if not os.access(parent if not os.path.exists(dest) else dest, os.W_OK):
            raise UsageError(f"dest {dest!r} is not writable", flag="--output")
        return _LocalInstance(options)


class _TarInstance(ExporterInstance):
    def __init__(self, options: TarOptions):
        self.options = options

    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse:
        dest = self.options.dest
        out = sys.stdout.buffer if dest == "-" else open(dest + ".tmp", "wb")  # noqa: SIM115
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for subdir, one in split_results(result, self.options.platform_split):
                    with one.mount() as root:
                        if subdir:
                            tar.add(root, arcname=subdir, recursive=False)
                        for dirpath, dirnames, filenames in os.walk(root):
                            dirnames.sort()
                            for name in sorted(dirnames) + sorted(filenames):
                                path = os.path.join(dirpath, name)
                                arcname = os.path.join(subdir, os.path.relpath(path, root))
                                tar.add(path, arcname=arcname, recursive=False)
                        attestation = provenance_file(info, one, root,
                                                      self.options.attestation_prefix)
                    if attestation is not None:
                        name, body = attestation
                        member = tarfile.TarInfo(os.path.join(subdir, name))
                        member.size, member.mode = len(body), 0o644
                        tar.addfile(member, io.BytesIO(body))
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        if dest != "-":
            os.replace(dest + ".tmp", dest)
        return ExportResponse({})


class TarExporter(Exporter):
    """Writes the result's filesystem as a tarball (dest=FILE, or - for stdout)."""

    name = "tar"
    Options = TarOptions

    def resolve(self, options: TarOptions) -> ExporterInstance:
        if options.dest != "-":
            parent = os.path.dirname(os.path.abspath(options.dest))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                raise UsageError(f"dest {options.dest!r}: directory {parent} is not writable",
                                 flag="--output")
        elif sys.stdout.isatty():
            raise UsageError("refusing to write a tarball to a terminal; set dest=FILE",
                             flag="--output")
        return _TarInstance(options)
