"""What a remote command's process builds with: the client's inputs through its session.

pybkd's gRPC listener (:mod:`pybk.core.remote.listener`) relays each ``Session`` stream to the
daemon over a private unix socket; the daemon forks, like for a local connection, and the
child runs :func:`pybk.core.cli.remoteserve.serve_session`. The client's first frame says what
to run:

- ``build``: a :class:`pybk.core.engine.request.BuildRequest` the client validated, with the
  client's absolute paths. The build runs with :class:`RemoteInputs`: its directories are
  synced through the session, its secrets and SSH agents served by the client, its ``local``,
  ``tar``, ``oci`` and ``docker`` outputs written here privately and streamed back for the
  client to write as its user, ``--metadata-file``/``--iidfile`` written by the client.
- ``argv``: any other command (``du``, ``prune``, ``plugins``, ``debug workers`` …), run with
  the daemon's store and configuration; its standard output and error stream back.

Whatever the client asks, the daemon's configuration decides (``insecure-entitlements``
included) and the daemon's environment is the command's: only the documented build inputs
come from the client (``SOURCE_DATE_EPOCH``).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
from collections.abc import Mapping
from typing import Any

import orjson

from pybk.core.engine.inputs import BuildInputs
from pybk.core.errors import UsageError
from pybk.core.remote.frames import CHUNK
from pybk.core.remote.session import Session, SessionDir, SessionSecrets, SSHForwarder

#: output types written on the client (the others stay in the daemon's store or registry)
CLIENT_OUTPUTS = ("local", "tar", "oci", "docker")
#: environment variables the client may pass: the documented build inputs
CLIENT_ENV = ("SOURCE_DATE_EPOCH",)


class RemoteInputs(BuildInputs):
    """A build's client-side inputs, from the session."""

    def __init__(self, session: Session, work: str, *, client_key: str,
                 env: Mapping[str, str], count: Any = None):
        self.session = session
        self.work = work
        self.client_key = client_key
        self.env = {k: v for k, v in env.items() if k in CLIENT_ENV}
        self.count = count
        self.returned: list[tuple[int, Any, str]] = []
        self._ssh: SSHForwarder | None = None

    def local_dirs(self, dirs: dict[str, str]) -> dict[str, Any]:
        return {name: SessionDir(self.session, path, f"{self.client_key}:{path}", self.count)
                for name, path in dirs.items()}

    def secrets(self, request: Any) -> Mapping[str, bytes]:
        return SessionSecrets(self.session, [s.id for s in request.secrets])

    def ssh(self, request: Any) -> Mapping[str, str]:
        if not request.ssh:
            return {}
        if self._ssh is None:
            self._ssh = SSHForwarder(self.session, self.work)
        return {spec.id: self._ssh.socket_for(spec.id) for spec in request.ssh}

    def environ(self, name: str) -> str | None:
        return self.env.get(name)

    def progress(self, mode: str) -> Any:
        def send(status: Any) -> None:
            self.session.send({"t": "progress"}, orjson.dumps(status.to_json()))

        return send

    # -- outputs ---------------------------------------------------------------------------

    def rewrite(self, request: Any) -> Any:
        """``request`` with each client-side output's destination moved into this session's
        private directory (streamed back by :meth:`finish_outputs`)."""
        from pybk.core.model import evolve

        for spec in (*request.cache_from, *request.cache_to):
            if spec.type == "local":
                raise UsageError("a type=local cache is a directory of the client; through a "
                                 "remote daemon use a registry, s3, azblob or gha cache",
                                 flag="--cache-from" if spec in request.cache_from
                                 else "--cache-to")
        for ctx in request.build_contexts:
            if ctx.kind == "oci-layout":
                raise UsageError("an oci-layout build context is not supported through a "
                                 "remote daemon yet; push it to a registry and name it "
                                 "docker-image://", flag="--build-context")
        outputs = []
        for index, spec in enumerate(request.outputs):
            dest = spec.attrs.get("dest")
            if spec.type in CLIENT_OUTPUTS and dest:
                here = os.path.join(self.work, f"output-{index}")
                self.returned.append((index, spec, dest))
                spec = evolve(spec, attrs={**spec.attrs, "dest": here}, load=False)
            elif spec.type in CLIENT_OUTPUTS:
                here = os.path.join(self.work, f"output-{index}")
                self.returned.append((index, spec, "-"))
                spec = evolve(spec, attrs={**spec.attrs, "dest": here})
            outputs.append(spec)
        return evolve(request, outputs=tuple(outputs), metadata_file=None, iidfile=None)

    def finish_outputs(self, request: Any, result: Any) -> None:
        for index, spec, _dest in self.returned:
            here = os.path.join(self.work, f"output-{index}")
            try:
                if spec.type == "local":
                    _send_tree(self.session, index, here)
                else:
                    _send_file(self.session, index, here)
            finally:
                if os.path.isdir(here):
                    shutil.rmtree(here, ignore_errors=True)
                else:
                    _unlink(here)
        responses = list(result.metadata.get("exporter.responses", ()))
        self.session.send({"t": "responses"}, orjson.dumps(responses, default=str))

    def close(self) -> None:
        if self._ssh is not None:
            self._ssh.close()


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _FrameWriter(io.RawIOBase):
    """A file object whose writes become ``output`` frames (for ``tarfile``'s stream mode)."""

    def __init__(self, session: Session, index: int):
        self.session = session
        self.index = index
        self.sent = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        for start in range(0, len(data), CHUNK):
            self.session.send({"t": "output", "index": self.index}, data[start:start + CHUNK])
        self.sent += len(data)
        return len(data)


def _send_tree(session: Session, index: int, directory: str) -> None:
    """The local exporter's directory, as a tar stream the client unpacks."""
    session.send({"t": "output-begin", "index": index, "format": "tar-dir"})
    writer = _FrameWriter(session, index)
    buffered = io.BufferedWriter(writer, buffer_size=CHUNK)
    with tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name)
    buffered.flush()
    session.send({"t": "output-end", "index": index})


def _send_file(session: Session, index: int, path: str) -> None:
    session.send({"t": "output-begin", "index": index, "format": "file"})
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            session.send({"t": "output", "index": index}, data)
    session.send({"t": "output-end", "index": index})
