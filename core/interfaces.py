"""The contracts between the core and its plugins, and between the engine's parts.

Plugin classes (``Frontend``, ``Worker``, ``Exporter``, ``CacheBackend``) each declare ``name``
(BuildKit's spelling) and ``Options`` (an attrs class the core structures from CLI CSV attrs or
TOML). Hooks only *discover* these classes; the core calls their methods directly, so it always
knows which plugin it is calling.

The engine contracts (``Mount``, ``Snapshotter``, ``Executor`` …) follow containerd's shapes so the
solver, the snapshotters and the OCI worker can be written and tested apart.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from pybk.core.model import Model, field

# --------------------------------------------------------------------------------------------
# Plugin base: name + Options
# --------------------------------------------------------------------------------------------


class NoOptions(Model):
    """Options of a plugin that takes none."""


class Plugin:
    """Common base of every pluggable class."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    @classmethod
    def describe(cls) -> str:
        """One line for ``pybk plugins``: the first line of the docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# --------------------------------------------------------------------------------------------
# Frontends
# --------------------------------------------------------------------------------------------


class FrontendRequest(Model):
    """What a frontend is asked to build: its options (BuildKit's frontend attrs) and inputs."""

    opts: Mapping[str, str] = field(factory=dict)
    #: named inputs (``context``, ``dockerfile``, named build contexts) as LLB states
    inputs: Mapping[str, Any] = field(factory=dict)


class FrontendResult(Model):
    """A frontend's answer: the LLB definition and the image config metadata."""

    definition: Any  # pybk.core.llb.Definition
    image_config: Mapping[str, Any] | None = None
    metadata: Mapping[str, bytes] = field(factory=dict)


class FrontendContainer(abc.ABC):
    """A container on an image's filesystem in which a frontend runs one process (BuildKit's
    gateway ``NewContainer`` and ``StartProcess``); made by :meth:`FrontendBridge.new_container`.

    The process gets a writable layer on the image (discarded afterwards) and nothing else
    mounted. Its stdout, stderr and exit reach the callbacks given to :meth:`start`, called on a
    thread of the engine's; its stderr also goes to the build's progress.
    """

    #: the image's config (``config.Entrypoint``, ``config.Env``, ``config.Labels`` …)
    image_config: Mapping[str, Any]

    @abc.abstractmethod
    def start(self, process: ProcessSpec, *, stdout: OutputCallback, stderr: OutputCallback,
              exited: Callable[[int | None, BaseException | None], None]) -> None:
        """Run ``process`` (once per container), returning as soon as it runs.

        ``exited(code, None)`` follows its exit, ``exited(None, error)`` a failure to run it,
        ``exited(None, None)`` a :meth:`kill`. A process on the ``host`` network or in
        ``insecure`` security mode needs the bridge's ``network.host`` / ``security.insecure``
        entitlement.
        """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the process's stdin (dropped once it exited)."""

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """End the process's stdin."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the process if it still runs; returns once it is gone."""


class FrontendBridge(abc.ABC):
    """What a frontend may ask of the engine; the only way it reads inputs or runs anything."""

    #: the entitlements the build was granted (``network.host`` …); the engine's configuration
    #: grants them, so a bridge carries only granted ones
    entitlements: frozenset[str] = frozenset()
    #: the engine's configuration, where a frontend finds its own settings (e.g.
    #: ``[frontend."gateway.v0"]``); None without one
    config: Any = None

    @abc.abstractmethod
    def read_file(self, input_name: str, path: str, *, offset: int = 0,
                  length: int | None = None) -> bytes: ...

    @abc.abstractmethod
    def read_dir(self, input_name: str, path: str) -> list[str]: ...

    @abc.abstractmethod
    def solve(self, definition: Any) -> Any:
        """Solve a sub-graph and return a reference to its result."""

    @abc.abstractmethod
    def resolve_image_config(self, ref: str, platform: str | None = None) -> tuple[str, dict]:
        """Return ``(digest, config)`` of an image."""

    @abc.abstractmethod
    def warn(self, message: str, *, location: Any = None) -> None: ...

    def build_platforms(self) -> list[str]:
        """The platforms of the worker the build runs on, preferred first (BuildKit's
        ``BuildOpts().Workers[0].Platforms``): the first is ``BUILDPLATFORM`` and the target
        platform when none is asked for. The default: the host's."""
        from pybk.core.platform import host_platform

        return [str(host_platform())]

    def new_container(self, image: Any, *,
                      name: str) -> contextlib.AbstractContextManager[FrontendContainer]:
        """A container on the filesystem of ``image`` (an LLB state or definition of an image,
        solved with the build's progress), for a frontend that is itself a program; the
        progress shows its process as ``[frontend] <name>``.

        Leaving the ``with`` block stops the process and releases the container; an exception
        leaving it marks the progress line failed with its first line.

        :raises UnsupportedOperation: the bridge cannot run containers (no engine behind it).
        """
        raise UnsupportedOperation("this bridge cannot run containers")

    def solve_frontend(self, name: str, opts: Mapping[str, str]) -> FrontendResult:
        """Run the registered frontend ``name`` (e.g. ``dockerfile.v0``) with ``opts`` on this
        bridge and return its result: how a frontend hands part of its work to another.

        :raises UnknownPluginError: no frontend is registered as ``name``.
        :raises UnsupportedOperation: the bridge has no plugin registry behind it.
        """
        raise UnsupportedOperation("this bridge cannot run other frontends")


class Frontend(Plugin, abc.ABC):
    """Turns a human-readable build description into LLB."""

    @classmethod
    def forward(cls, directives: Mapping[str, str], opts: Mapping[str, str], registry: Any,
                config: Any) -> tuple[str, dict[str, str]] | None:
        """Hand the build to another frontend before solving: ``(name, opts)``, or None to
        build it here. (The Dockerfile frontend follows ``# syntax=`` this way.)"""
        return None

    @abc.abstractmethod
    def solve(self, request: FrontendRequest, bridge: FrontendBridge) -> FrontendResult: ...


# --------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------


class ExportResponse(Model):
    """Exporter output: response keys (``containerimage.digest`` …) and an optional finaliser."""

    response: Mapping[str, Any] = field(factory=dict)
    finalize: Callable[[], None] | None = None


class BuildResultView:
    """What exporters see of a build result: its filesystem and image config. (Not an ABC:
    the engine's results are model classes, whose metaclass is not ABCMeta.)"""

    image_config: Mapping[str, Any] | None = None

    def mount(self) -> contextlib.AbstractContextManager[str]:
        """A context manager yielding a read-only directory holding the result's filesystem."""
        raise NotImplementedError

    def platform_results(self) -> Mapping[str, BuildResultView] | None:
        """``{platform: result}`` of a multi-platform result (in the requested order); None
        for a single one."""
        return None


class ExporterInstance(abc.ABC):
    """An exporter with validated options; ``export`` does the slow work."""

    @abc.abstractmethod
    def export(self, result: BuildResultView, info: Mapping[str, Any]) -> ExportResponse: ...

    def layer_spec(self, info: Mapping[str, Any]) -> Any:
        """How ``export`` will write image layers (a :class:`pybk.core.images.layers.LayerSpec`),
        so the engine may write those of the result's lower layers while the last step still
        runs; None (the default) for an exporter writing no layers."""
        return None


class Exporter(Plugin, abc.ABC):
    """Writes a build result somewhere (image store, directory, tarball, registry).

    ``resolve`` validates options early (before any build work); ``export`` runs after the solve.
    """

    @abc.abstractmethod
    def resolve(self, options: Any) -> ExporterInstance: ...


# --------------------------------------------------------------------------------------------
# Cache backends
# --------------------------------------------------------------------------------------------


class UnsupportedOperation(Exception):
    """A backend does not offer this direction (e.g. ``inline`` has no importer)."""


class CacheStore(abc.ABC):
    """One remote cache location: where a backend's bytes go.

    The engine exports a build's cache as layer blobs plus a cache config (BuildKit's
    ``application/vnd.buildkit.cacheconfig.v0``) and imports by reading the configs back,
    fetching a blob only when a record is used. ``layer`` arguments are
    :class:`pybk.core.remotecache.config.CacheLayer`; ``plan`` is a
    :class:`pybk.core.remotecache.store.ExportPlan` (the config, the content store holding the
    blobs, the build's facts).
    """

    #: blobs uploaded at once
    parallelism: int = 4

    @abc.abstractmethod
    def has_blob(self, digest: str) -> bool: ...

    @abc.abstractmethod
    def put_blob(self, layer: Any, path: str) -> None: ...

    @abc.abstractmethod
    def fetch_blob(self, layer: Any, content: Any) -> None:
        """Copy the blob into ``content`` (the digest is verified on the way)."""

    @abc.abstractmethod
    def write_config(self, plan: Any) -> dict[str, Any]:
        """Write the config (after the blobs); returns exporter response keys."""

    @abc.abstractmethod
    def read_configs(self) -> list[Any]:
        """Every config this location holds (one per name or scope); [] when there is none."""

    def export(self, plan: Any) -> dict[str, Any]:
        """Upload the blobs the store lacks (in parallel), then the config."""
        from concurrent.futures import ThreadPoolExecutor

        def upload(layer: Any) -> int:
            if self.has_blob(layer.blob):
                return 0
            self.put_blob(layer, str(plan.content.path(layer.blob)))
            return 1

        blobs = plan.blobs()
        if blobs:
            with ThreadPoolExecutor(max_workers=max(1, min(self.parallelism, len(blobs)))) as pool:
                uploaded = sum(pool.map(upload, blobs))
        else:
            uploaded = 0
        response = self.write_config(plan)
        return {**response, "cache.blobs.uploaded": uploaded, "cache.blobs.total": len(blobs)}


#: makes the store of a cache from the build's facts (``registry_hosts`` …)
OpenStore = Callable[[Mapping[str, Any]], CacheStore]


class CacheExporter(Model):
    """A ``--cache-to`` as its backend resolved it: where the cache goes and how it is written.

    ``open`` is None for a cache written by the image exporter itself (``inline``).
    """

    backend: str
    where: str
    open: OpenStore | None
    mode: str = "min"
    ignore_error: bool = False
    #: how layer blobs are compressed (:class:`pybk.core.images.layers.LayerSpec`)
    layers: Any = None
    #: export the build's cache mounts too (``cache-mounts=true``); only these ids when given
    cache_mounts: bool = False
    cache_mount_ids: tuple[str, ...] = ()


class CacheImporter(Model):
    """A ``--cache-from`` as its backend resolved it: where the cache is read from."""

    backend: str
    where: str
    open: OpenStore
    #: restore the cache mounts it holds (``cache-mounts=true``); only these ids when given
    cache_mounts: bool = False
    cache_mount_ids: tuple[str, ...] = ()


class CacheBackend(Plugin):
    """A remote build cache in BuildKit's format: turns its options into where the cache's
    bytes go (a :class:`CacheStore` maker); the engine does the exporting and importing."""

    def resolve_exporter(self, options: Any) -> CacheExporter:
        raise UnsupportedOperation(f"cache backend {self.name!r} cannot export")

    def resolve_importer(self, options: Any) -> CacheImporter:
        raise UnsupportedOperation(f"cache backend {self.name!r} cannot import")


# --------------------------------------------------------------------------------------------
# What the solver is given: the local image store and the imported remote caches
# --------------------------------------------------------------------------------------------


class ImageLookup(abc.ABC):
    """The local image store as the solver reads it (``FROM`` an image built here)."""

    @abc.abstractmethod
    def lookup(self, ref: str, platform: str | None = None) -> Any:
        """``ref`` as an :class:`pybk.core.images.layout.OCILayoutImage`, or None."""


class LayerUnpacker(abc.ABC):
    """What an imported remote cache asks of the solver: layer snapshots, each unpacked once.

    A layer is known by the chain id of its stack (OCI's ``chain(n)``); its snapshot is shared
    by every image and cache that has the same stack.
    """

    #: the content store blobs are fetched into (:class:`pybk.core.store.content.ContentStore`)
    content: Any

    @abc.abstractmethod
    def has_layer(self, chain_id: str) -> bool: ...

    @abc.abstractmethod
    async def unpack_layer(self, chain_id: str, parent: str | None, *,
                           descriptor: Mapping[str, Any],
                           fetch: Callable[[], Awaitable[str]], description: str = "",
                           progress: Any = None,
                           check: Callable[[str], Awaitable[None]] | None = None) -> str:
        """The snapshot (record id) of the layer ``chain_id`` on ``parent``: found, or
        ``fetch()`` (the blob's path) applied, its ``descriptor`` (media type, digest, size,
        ``diffID``, ``source``) recorded. ``check(path)`` runs while the layer is applied;
        nothing is recorded unless it passes."""


class RemoteCacheLookup(abc.ABC):
    """The imported remote caches of one build, as the solver sees them."""

    @abc.abstractmethod
    async def load(self, key: str, outputs: Sequence[int], layers: LayerUnpacker,
                   progress: Any) -> dict[int, str] | None:
        """The snapshot (record id) of each output of the vertex with cache key ``key``, its
        layers unpacked through ``layers``; None when a cache lacks any of them."""

    async def cache_mount(self, cache_id: str, content: Any,
                          progress: Any) -> Callable[[Any], None] | None:
        """The imported contents of cache mount ``cache_id``, fetched into ``content``, as a
        function filling a new cache directory with them; None when no import holds it."""
        return None


# --------------------------------------------------------------------------------------------
# Engine contracts: mounts, snapshots, execution
# --------------------------------------------------------------------------------------------


class Mount(Model):
    """One mount as the OCI runtime spec (and mount(2)) understands it.

    ``type`` is ``bind``, ``overlay`` or ``tmpfs``; ``options`` e.g. ``("rbind", "ro")`` or
    ``("lowerdir=a:b", "upperdir=u", "workdir=w")``.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()


class Snapshotter(abc.ABC):
    """containerd-shaped snapshotter: committed snapshots are immutable and may be parents.

    Keys are opaque strings chosen by the caller. ``prepare`` makes an active (writable)
    snapshot on top of a committed parent (or empty), ``view`` a read-only one; ``commit`` turns
    an active snapshot into a committed one under a new name.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def prepare(self, key: str, parent: str | None = None) -> list[Mount]: ...

    @abc.abstractmethod
    def view(self, key: str, parent: str | None = None) -> list[Mount]: ...

    @abc.abstractmethod
    def mounts(self, key: str) -> list[Mount]: ...

    @abc.abstractmethod
    def commit(self, name: str, key: str) -> None: ...

    @abc.abstractmethod
    def remove(self, key: str) -> None: ...

    @abc.abstractmethod
    def usage(self, key: str) -> int:
        """Bytes used by this snapshot alone (not its parents)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...


class ExecMount(Model):
    """A mount inside the container at ``dest`` made of snapshot (or tmpfs/bind) mounts."""

    dest: str
    mounts: tuple[Mount, ...]
    readonly: bool = False


class SecretMount(Model):
    """A secret file placed at ``dest`` on a tmpfs; its bytes never touch a snapshot or disk."""

    dest: str
    data: bytes = field(repr=False)
    uid: int = 0
    gid: int = 0
    mode: int = 0o400


class SSHMount(Model):
    """An SSH agent socket forwarded to ``dest`` inside the container."""

    dest: str
    socket: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o600


class ProcessSpec(Model):
    """What to run: BuildKit's ExecOp Meta plus network and security modes."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""  # "", "name", "uid", "uid:gid", "name:group"; resolved against the rootfs
    hostname: str = "pybk"
    network: str = "sandbox"  # "sandbox" (the worker's default network), "host", "none"
    security: str = "sandbox"  # "sandbox" or "insecure" (privileged)
    extra_hosts: tuple[tuple[str, str], ...] = ()
    valid_exit_codes: tuple[int, ...] = (0,)
    #: ``ulimit`` entries: (name as in ``ulimit``/``--ulimit``, soft, hard); -1 is unlimited
    ulimits: tuple[tuple[str, int, int], ...] = ()
    #: the cgroup the container's cgroup is made under (empty: the worker's default)
    cgroup_parent: str = ""
    #: per-step cgroup limits the client asked for, as (name, value) pairs with the names of
    #: :class:`pybk.core.llb.ops.LinuxResources` (``memory``, ``cpu_quota``, ...)
    resources: tuple[tuple[str, int | str], ...] = ()


OutputCallback = Callable[[bytes], None]


#: what a process reads on stdin: bytes, or an async iterable of chunks written as they come
StdinSource = bytes | AsyncIterable[bytes]


class Executor(abc.ABC):
    """Runs one process in a container on the given root and mounts; returns its exit code.

    ``stdin`` is None for build steps (their stdin is empty); a gateway frontend's process is
    given its conversation with the engine there.
    """

    @abc.abstractmethod
    def run(
        self,
        process: ProcessSpec,
        root: Sequence[Mount],
        mounts: Sequence[ExecMount] = (),
        *,
        secrets: Sequence[SecretMount] = (),
        ssh: Sequence[SSHMount] = (),
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        stdin: StdinSource | None = None,
    ) -> Awaitable[int]: ...


#: the prefix of BuildKit's worker label keys (``org.mobyproject.buildkit.worker.executor`` …)
WORKER_LABEL_PREFIX = "org.mobyproject.buildkit.worker."


def new_worker_id() -> str:
    """A random worker id as BuildKit makes them: 25 lowercase base-36 characters."""
    import secrets

    entropy = bytearray(secrets.token_bytes(17))
    entropy[0] |= 0x80  # a fixed leading digit, so the id needs no padding
    value, digits = int.from_bytes(entropy, "big"), []
    while value:
        value, digit = divmod(value, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
    return "".join(reversed(digits))[1:26]


class Worker(Plugin, abc.ABC):
    """Where build steps run: an executor and a snapshotter for a set of platforms.

    BuildKit's worker, as a plugin class. The engine makes one instance of each registered
    class with :meth:`from_config` (a class answers None when the configuration disables it),
    asks the ``pybk_select_worker`` hook which one builds for the target platform, opens the
    store with :meth:`snapshotter` as its snapshotter factory and runs ExecOps on
    :meth:`executor`. Every enabled worker is listed by ``pybk debug workers`` with its
    :attr:`id`, :meth:`platforms`, :meth:`labels` and :meth:`gc_policy`.

    Lifetime: :meth:`close` when the client that made the worker closes (what one build
    process holds); :meth:`serve` before ``pybkd`` starts serving and :meth:`shutdown` when it
    stops (what the daemon keeps between builds, e.g. pooled network namespaces).

    :param options: an instance of the class's ``Options`` (default: ``Options()``).
    :param root: the store directory this worker builds in (default: the default store).
    """

    def __init__(self, options: Any = None, *, root: Any = None):
        from pybk.core.paths import default_root

        self.options = options if options is not None else type(self).Options()
        self.root = os.fspath(root) if root is not None else default_root()
        self._id: str | None = None

    @classmethod
    def from_config(cls, config: Any, *, root: str) -> Worker | None:
        """The worker the configuration (a :class:`pybk.core.config.schema.Config`) asks for
        on the store ``root``, or None when it disables this worker. The default: one with
        default options."""
        return cls(root=root)

    @property
    def id(self) -> str:
        """Stable per store and worker name: made once, kept in ``ROOT/workers/NAME/workerid``
        (BuildKit keeps its worker id in the worker's state directory the same way)."""
        if self._id is None:
            directory = os.path.join(self.root, "workers", self.name)
            path = os.path.join(directory, "workerid")
            try:
                with open(path, encoding="ascii") as f:
                    self._id = f.read().strip()
            except FileNotFoundError:
                os.makedirs(directory, exist_ok=True)
                os.chmod(os.path.dirname(directory), 0o700)  # ROOT/workers: the store's
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="ascii") as f:
                    f.write(new_worker_id())
                os.chmod(tmp, 0o400)
                try:
                    os.link(tmp, path, follow_symlinks=False)  # the first writer wins; every reader sees its id
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
                with open(path, encoding="ascii") as f:
                    self._id = f.read().strip()
        return self._id

    def platforms(self) -> list[str]:
        """The platforms this worker builds for, ``os/arch[/variant]``, preferred first (the
        default: the host's)."""
        from pybk.core.platform import host_platform

        return [str(host_platform())]

    def labels(self) -> dict[str, str]:
        """BuildKit's worker labels: ``org.mobyproject.buildkit.worker.executor`` (the class
        name) and ``.hostname`` by default; subclasses add theirs (``.snapshotter``,
        ``.network`` …) and the configuration's ``labels``."""
        import socket

        return {WORKER_LABEL_PREFIX + "executor": self.name,
                WORKER_LABEL_PREFIX + "hostname": socket.gethostname()}

    def gc_policy(self, disk_total: int | None) -> list[Any]:
        """The garbage collector's passes for this worker's records, in order (each a
        :class:`pybk.core.config.gc.PruneRule`); ``disk_total`` is the size of the disk
        holding the store. The default: none (no automatic GC)."""
        return []

    @abc.abstractmethod
    def executor(self) -> Executor:
        """The executor of this worker's ExecOps (made on first use, kept until
        :meth:`close`)."""

    @abc.abstractmethod
    def snapshotter(self, store: Any) -> Snapshotter:
        """The snapshotter new records of ``store`` (a :class:`pybk.core.store.store.Store`)
        use; the engine passes this method to ``Store.open(snapshotter=...)``, which calls it
        once."""

    def close(self) -> None:
        """Release what this process holds (the executor and its resources)."""

    def serve(self) -> None:
        """``pybkd`` is about to serve builds: keep what they give back (pooled resources) for
        the next ones, until :meth:`shutdown`."""

    def shutdown(self) -> None:
        """``pybkd`` stops: release what it kept between builds (the default: :meth:`close`)."""
        self.close()
