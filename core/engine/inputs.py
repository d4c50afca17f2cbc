"""Where a build's client-side inputs come from.

A build reads what only its client has: the context and build-file directories, secrets, SSH
agents, environment facts (``SOURCE_DATE_EPOCH``), and it writes what the client asked for
afterwards (``--metadata-file``, ``--iidfile``, ``--load``). :class:`BuildInputs` takes them
from this process (its files, environment and sockets: the embedded command and pybkd's local
path, which runs as the client). A remote session (:mod:`pybk.core.remote.daemonside`) brings
its own, whose directories are :class:`ClientDir` objects the engine syncs from and reads
through the session: the daemon never opens a path the client names on its own disk.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ClientDir(Protocol):
    """A directory on the client's side of a session (a ``local://NAME`` source's value)."""

    #: identifies the directory among every client's (the store keeps one copy per key)
    key: str

    def sync(self, dest: str, *, include: Sequence[str], exclude: Sequence[str],
             follow: Sequence[str], state_file: str,
             on_copied: Callable[[str], None] | None = None) -> Any:
        """Make ``dest`` mirror the selected part of the directory, transferring only what
        changed since the copy recorded in ``state_file``; a
        :class:`pybk.core.fs.localsync.SyncStats`."""

    def read_file(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """A file's bytes (``FileNotFoundError`` … like :func:`open`)."""

    def read_dir(self, path: str) -> list[str]:
        """A directory's entry names, sorted."""


def host_path(value: Any) -> str | None:
    """The path of a directory of this process's disk; None for a :class:`ClientDir`."""
    return value if isinstance(value, (str, os.PathLike)) else None


class BuildInputs:
    """The client-side inputs of a build run in the client's own process (or as it)."""

    def local_dirs(self, dirs: dict[str, str]) -> dict[str, Any]:
        """The ``local://NAME`` sources' directories (given as the client's paths)."""
        return dirs

    def secrets(self, request: Any) -> Mapping[str, bytes]:
        return {s.id: s.read() for s in request.secrets}

    def ssh(self, request: Any) -> Mapping[str, str]:
        """``{ssh id: agent socket}``: the socket a ``--ssh`` names, or an agent this process
        serves over its key files (stopped by the mapping's ``close()``); a build without
        ``--ssh`` loads no agent code."""
        if not request.ssh:
            return {}
        from pybk.core.engine.sshagent import agent_sockets

        return agent_sockets(request.ssh)

    def environ(self, name: str) -> str | None:
        """A documented build input read from the client's environment
        (``SOURCE_DATE_EPOCH``)."""
        return os.environ.get(name)

    def progress(self, mode: str) -> Any:
        """What :meth:`pybk.core.engine.client.Client.solve` gets as ``progress``."""
        return mode

    def finish_outputs(self, request: Any, result: Any) -> None:
        """``--metadata-file``, ``--iidfile`` and ``--load``, after the exports."""
        finish_outputs(request, result)


def finish_outputs(request: Any, result: Any) -> None:
    """After the exports: ``--metadata-file``, ``--iidfile`` and ``--load``."""
    import subprocess

    responses = list(result.metadata.get("exporter.responses", ()))
    if request.metadata_file:
        from pybk.core.images.metadata import write_metadata_file

        with _written(request.metadata_file, "--metadata-file"):
            write_metadata_file(request.metadata_file, responses)
    if request.iidfile:
        from pybk.core.images.metadata import write_iidfile

        merged: dict[str, Any] = {}
        for response in responses:
            merged.update(response)
        with _written(request.iidfile, "--iidfile"):
            write_iidfile(request.iidfile, merged)
    for output in request.outputs:
        if output.load:
            try:
                done = subprocess.run(["docker", "load", "-i", output.attrs["dest"]],
                                      capture_output=True, text=True)
            finally:
                os.unlink(output.attrs["dest"])
            if done.returncode != 0:
                from pybk.core.errors import BuildError

                raise BuildError(f"docker load failed: {done.stderr.strip()}")
            print(done.stdout.strip(), file=sys.stderr)


LOCAL = BuildInputs()


@contextlib.contextmanager
def _written(path: str, flag: str) -> Iterator[None]:
    """A file the build's outcome is written to: failing to write it is a usage error that
    says the build itself succeeded."""
    try:
        yield
    except OSError as exc:
        from pybk.core.errors import UsageError

        raise UsageError(f"the build succeeded, but {path} could not be written: "
                         f"{exc.strerror or exc}", flag=flag) from None
