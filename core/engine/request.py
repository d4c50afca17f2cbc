"""What a build is asked to do: the typed request the engine runs.

``pybk build`` fills a :class:`BuildRequest` from its flags, checking each one
(:mod:`pybk.core.cli.buildopts`); the specs are also what :meth:`pybk.core.engine.client.Client.solve`
takes for outputs and remote caches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pybk.core.errors import UsageError
from pybk.core.model import Model, field


class OutputSpec(Model):
    """One ``--output``: exporter type and its attributes (BuildKit spellings)."""

    type: str
    attrs: Mapping[str, str] = field(factory=dict)
    #: hand the written tarball to ``docker load`` afterwards (``--load``)
    load: bool = False


class CacheSpec(Model):
    """One ``--cache-from`` / ``--cache-to`` entry."""

    type: str
    attrs: Mapping[str, str] = field(factory=dict)


class SecretSpec(Model):
    """One ``--secret``: where the secret's bytes come from (a file or an environment variable)."""

    id: str
    type: str  # "file" or "env"
    source: str  # a path for "file", a variable name for "env"

    def read(self) -> bytes:
        if self.type == "env":
            value = os.environ.get(self.source)
            if value is None:
                raise UsageError(f"secret {self.id!r}: environment variable {self.source} is not set",
                                 flag="--secret")
            return value.encode()
        try:
            with open(self.source, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(f"secret {self.id!r}: cannot read {self.source}: {exc.strerror}",
                             flag="--secret") from None


class SSHSpec(Model):
    """One ``--ssh``: an id and agent sockets or key files (empty = ``$SSH_AUTH_SOCK``);
    ``raw``: the socket forwarded as it is (not through the read-only relay)."""

    id: str
    paths: tuple[str, ...] = ()
    raw: bool = False


class ContextSpec(Model):
    """One ``--build-context name=value``; ``kind`` is local, docker-image, oci-layout, git,
    http or target."""

    name: str
    kind: str
    value: str


class ProvenanceSpec(Model):
    """``--provenance`` / ``--attest type=provenance``: BuildKit's parameters, validated."""

    mode: str = "min"
    version: str = "v0.2"
    builder_id: str = ""
    reproducible: bool = False
    inline_only: bool = False
    filename: str = "provenance.json"


class BuildRequest(Model):
    """Everything ``pybk build`` was asked to do, validated."""

    context: str
    file: str | None = None
    frontend: str | None = None
    frontend_opts: Mapping[str, str] = field(factory=dict)
    tags: tuple[str, ...] = ()
    target: str | None = None
    build_args: Mapping[str, str] = field(factory=dict)
    build_contexts: tuple[ContextSpec, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    ssh: tuple[SSHSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()
    platforms: tuple[str, ...] = ()
    progress: str = "auto"
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    entitlements: tuple[str, ...] = ()
    network: str = "default"
    add_hosts: tuple[tuple[str, str], ...] = ()
    #: ``--ulimit`` values (``name=soft[:hard]``), for every RUN
    ulimits: tuple[str, ...] = ()
    #: ``--cgroup-parent``: the cgroup every RUN container's cgroup is made under
    cgroup_parent: str = ""
    #: ``--resource`` values as frontend options (``memory=536870912``, ``cpuquota=50000``)
    resources: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(factory=dict)
    #: ``--annotation`` as exporter attrs (``annotation.K``, ``annotation-index.K`` …),
    #: already added to each image, oci and docker output
    annotations: Mapping[str, str] = field(factory=dict)
    metadata_file: str | None = None
    iidfile: str | None = None
    call: str = "build"
    #: ``--call NAME,format=json``: print the frontend's ``result.json`` instead of its text
    call_format: str = "text"
    llb: str | None = None
    print_llb: bool = False
    pull: bool = False
    quiet: bool = False
    provenance: ProvenanceSpec | None = None
    #: print each step's cache state and why it missed when the build ends
    explain_cache: bool = False
    #: the build record cache misses are explained against (default: the previous build of
    #: the same name, target and platforms)
    explain_cache_ref: str | None = None
