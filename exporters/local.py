"""``local`` and ``tar`` exporters: the result's filesystem as a directory or a tarball."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from collections.abc import Mapping
from typing import Any

from pybk.core.converter import setting
from pybk.core.errors import UsageError
from pybk.core.fs.copytree import copy_tree
from pybk.core.fs.files import output_file
from pybk.core.interfaces import BuildResultView, Exporter, ExporterInstance, ExportResponse
from pybk.core.model import Model


class LocalOptions(Model):
    dest: str
    #: recreate the result's device nodes (owner-only modes); off: they are skipped
    devices: bool = False
    platform_split: bool | None = setting("platform-split", default=None)
    attestation_prefix: str = setting("attestation-prefix", default="")


class TarOptions(Model):
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


def split_results(result: BuildResultView,
                  platform_split: bool | None) -> list[tuple[str, BuildResultView]]:
    """``(subdirectory, result)`` pairs to export: for a multi-platform result one per platform
    (``linux_amd64`` …) unless ``platform-split=false``, which puts them all at the top."""
    results = result.platform_results()
    if results is None:
        return [("", result)]
    split = platform_split is not False
    return [(split_name(platform) if split else "", one) for platform, one in results.items()]


def split_name(platform: str) -> str:
    """The subdirectory of a platform in a split export: ``linux/arm64/v8`` → ``linux_arm64_v8``."""
    return platform.replace("/", "_")


def _warn_skipped(info: Mapping[str, Any], target: str, skipped: list[str]) -> None:
    """Tell on stderr, and as a progress warning, which device nodes a local export left out."""
    shown = ", ".join("/" + p for p in skipped[:5]) + (" …" if len(skipped) > 5 else "")
    message = (f"{len(skipped)} device node(s) not exported to {target} ({shown}); "
               "set devices=true (as root) to recreate them")
    print(f"WARNING: {message}", file=sys.stderr)
    progress = info.get("progress")
    if progress is None:
        return
    vertex = progress.vertex(f"export-local-devices:{target}", "exporting to local directory")
    vertex.start()
    vertex.warn(message, detail=["/" + p for p in skipped])
    vertex.done()


class _LocalInstance(ExporterInstance):
    def __init__(self, options: LocalOptions):
        self.options = options

    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse:
        for subdir, one in split_results(result, self.options.platform_split):
            target = os.path.join(self.options.dest, subdir)
            skipped: list[str] = []
            with one.mount() as root:
                # as BuildKit's client writes it: every file is the calling user's
                copy_tree(root, target, devices=self.options.devices, skipped=skipped,
                          owner=(os.getuid(), os.getgid()))
                attestation = provenance_file(info, one, root, self.options.attestation_prefix)
            if skipped:
                _warn_skipped(info, target, skipped)
            if attestation is not None:
                name, body = attestation
                with open(os.path.join(target, name), "wb") as f:
                    f.write(body)
        return ExportResponse({})


def _check_writable_dir(dest: str) -> None:
    """UsageError unless directories can be made in ``dest`` or its nearest existing ancestor
    (tried, as ``access`` says yes to root for ``/proc``)."""
    import tempfile

    existing = os.path.abspath(dest)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"dest {dest!r}: {existing} is not a directory", flag="--output")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pybk-probe-", dir=existing))
    except OSError as exc:
        raise UsageError(f"dest {dest!r} is not writable: cannot create directories in "
                         f"{existing} ({exc.strerror or exc})", flag="--output") from None


class LocalExporter(Exporter):
    """Writes the result's filesystem into a directory (dest=DIR)."""

    name = "local"
    Options = LocalOptions

    def resolve(self, options: LocalOptions) -> ExporterInstance:
        dest = options.dest
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise UsageError(f"dest {dest!r} exists and is not a directory", flag="--output")
        _check_writable_dir(dest)
        return _LocalInstance(options)


class _TarInstance(ExporterInstance):
    def __init__(self, options: TarOptions):
        self.options = options

    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse:
        dest = self.options.dest
        if dest == "-":
            self._write(result, info, sys.stdout.buffer)
        else:
            with output_file(dest) as out:
                self._write(result, info, out)
        return ExportResponse({})

    def _write(self, result: BuildResultView, info: Mapping[str, Any], out: Any) -> None:
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
