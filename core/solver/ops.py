"""Running each kind of op on real snapshots: sources, exec, file, merge and diff.

:class:`Worker` holds what every build shares (store, snapshotter, executor, checksum cache);
:class:`BuildRunner` is one build's view of it (its session: local dirs, secrets, ssh sockets,
entitlements) and implements what the scheduler asks: keys of sources, content checksums,
cache lookups, execution and saving results.

Mount points live under ``<root>/mounts/<pid>-…`` so mounts left by a killed build are found
and taken down by the next one (:meth:`Worker.recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from pybk.core.errors import BuildError, InputError, SolveError
from pybk.core.interfaces import (
    ExecMount,
    Executor,
    Mount,
    ProcessSpec,
    SecretMount,
    SSHMount,
)
from pybk.core.llb.ops import (
    SCRATCH,
    SKIP_OUTPUT,
    CacheSharingOpt,
    DiffOp,
    ExecOp,
    FileActionCopy,
    FileActionMkDir,
    FileActionMkFile,
    FileActionRm,
    FileActionSymlink,
    FileOp,
    MergeOp,
    MountType,
    NetMode,
    SecurityMode,
    SourceOp,
)
from pybk.core.progress.events import STREAM_STDERR, STREAM_STDOUT, StepLogLimiter, VertexProgress
from pybk.core.serialize import sha256_digest
from pybk.core.solver.cachekey import Selector, source_key
from pybk.core.solver.results import SCRATCH_REF, Ref
from pybk.core.solver.scheduler import InFlight, OpRunner, VertexOutcome
from pybk.core.solver.vertex import Vertex

DEFAULT_SSH_DEST = "/run/buildkit/ssh_agent.0"
NETWORK_MODES = {NetMode.UNSET: "sandbox", NetMode.HOST: "host", NetMode.NONE: "none"}


@attrs.frozen
class Session:
    """What the client gives one build: its directories, secrets, agents and entitlements."""

    local_dirs: Mapping[str, str] = attrs.field(factory=dict)
    secrets: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)
    ssh: Mapping[str, str] = attrs.field(factory=dict)
    entitlements: frozenset[str] = frozenset()
    oci_layouts: Mapping[str, str] = attrs.field(factory=dict)


# ------------------------------------------------------------------------------------ refs


@contextlib.contextmanager
def read_ref(store: Any, ref: Ref) -> Iterator[str]:
    """A read-only directory with ``ref``'s filesystem while the context is open."""
    if ref.path is not None:
        yield ref.path
        return
    if ref.snapshot is None or store is None:
        import tempfile

        empty = tempfile.mkdtemp(prefix="pybk-scratch-")
        try:
            yield empty
        finally:
            shutil.rmtree(empty, ignore_errors=True)
        return
    record = store.get_record(ref.snapshot)
    if record is None:
        raise SolveError(f"result {ref.snapshot} is no longer in the store")
    with store.contents(record) as path:
        yield path


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids of a layer stack: ``chain(n) = sha256(chain(n-1) + " " + diff(n))``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


# ------------------------------------------------------------------------------------ worker


class Worker:
    """The parts of the engine shared by every build of one store."""

    def __init__(self, *, store: Any, executor: Executor, config: Any = None):
        self.store = store
        self.executor = executor
        self.config = config
        self._checksums: Any = None

    @property
    def checksums(self) -> Any:
        if self._checksums is None:
            from pybk.core.fs.contenthash import ChecksumCache

            self._checksums = ChecksumCache(os.path.join(self.store.root, "contenthash"))
        return self._checksums

    def runner(self, session: Session, registry: Any, lease: Any) -> BuildRunner:
        return BuildRunner(self, session, registry, lease)


class _Active:
    """A new mutable record (an active snapshot) on ``parent``; committed or discarded."""

    def __init__(self, runner: BuildRunner, parent: Ref, stack: contextlib.ExitStack,
                 description: str = ""):
        self.store = runner.store
        self.record = self.store.new_record(parent.snapshot, lease=runner.lease,
                                            description=description)
        self.committed: str | None = None
        self.path: str | None = None
        self._parent = parent
        self._stack = stack
        stack.callback(self._discard)

    @property
    def mounts(self) -> list[Mount]:
        return self.store.mounts(self.record)

    def mount(self) -> str:
        """Mount the snapshot (read-write) and return the directory."""
        if self.path is None:
            from pybk.core.store.mounts import mount_all

            target = self.store.process_tmp(f"mnt-{uuid.uuid4().hex[:12]}")
            target.mkdir()
            mount_all(self.mounts, str(target))
            self.path = str(target)
            self._stack.callback(self.unmount)
            if self._parent.path is not None:
                from pybk.core.store.trees import copy_contents

                copy_contents(self._parent.path, self.path)
        return self.path

    def unmount(self) -> None:
        if self.path is not None:
            from pybk.core.store.mounts import unmount_all

            unmount_all(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
            self.path = None

    def commit(self) -> Ref:
        if self.committed is None:
            self.unmount()
            self.committed = self.store.commit(self.record).id
        return Ref(snapshot=self.committed)

    def _discard(self) -> None:
        if self.committed is None:
            self.unmount()
            with contextlib.suppress(Exception):
                self.store.discard(self.record)


class BuildRunner(OpRunner):
    """One build's access to the worker."""

    def __init__(self, worker: Worker, session: Session, registry: Any, lease: Any):
        self.w = worker
        self.session = session
        self.registry = registry
        self.lease = lease
        self.store = worker.store
        self.local_stats: dict[str, Any] = {}
        #: checksum of each synced local directory's whole tree (the directory cannot change
        #: during the build: its lock is held until :meth:`release`)
        self._local_sums: dict[str, str] = {}
        self._images: dict[str, Any] = {}
        self._held: list[Any] = []
        #: per (name, shared key) of a local source: the filters of the source that synced the
        #: shared copy, a gate, and each filter's sync result
        self._local_filters: dict[tuple[str, str], bytes] = {}
        self._local_gates: dict[tuple[str, str], asyncio.Lock] = {}
        self._local_done: dict[tuple[str, str, bytes], tuple[str, VertexOutcome]] = {}
        #: imported remote caches (:class:`pybk.core.remotecache.importer.RemoteCache`), if any
        self.remote: Any = None

    def release(self) -> None:
        """Let go of the locks this build holds (local directories)."""
        held, self._held = self._held, []
        self._local_sums.clear()
        self._local_filters.clear()
        self._local_done.clear()
        for lock in held:
            lock.release()

    # -- cache records -------------------------------------------------------------------

    def load_cached(self, key: str, vertex: Vertex) -> VertexOutcome | None:
        refs: dict[int, Ref] = {}
        for index in sorted(vertex.op.output_indices()):
            record = self.store.get_cache(key, index)
            if record is None:
                return None
            self.lease.add(record)
            refs[index] = Ref(snapshot=record.id)
        return VertexOutcome(refs=refs, cached=True, extra=self._extra(vertex))

    async def load_remote(self, key: str, vertex: Vertex,
                          vp: VertexProgress) -> VertexOutcome | None:
        if self.remote is None:
            return None
        outcome = await self.remote.load(self, key, vertex, vp)
        if outcome is not None:
            for ref in outcome.refs.values():
                self.lease.add(ref.snapshot)
        return outcome

    def unpack_blob(self, blob_path: str, media_type: str, parent: str | None) -> str:
        """Apply a layer blob onto ``parent`` (None: empty); returns the new record id."""
        return self._apply_layer(blob_path, media_type, parent)

    def resolved_images(self, digests: Iterable[str]) -> dict[str, str]:
        """``{vertex digest: manifest digest}`` of the image sources among ``digests`` that
        this build resolved (for provenance)."""
        return {d: self._images[d].manifest_digest for d in digests if d in self._images}

    def _extra(self, vertex: Vertex) -> dict[str, Any]:
        image = self._images.get(vertex.digest)
        if image is None:
            return {}
        return {"image_config": image.config, "manifest_digest": image.manifest_digest}

    def save(self, key: str, vertex: Vertex, outcome: VertexOutcome) -> None:
        refs = outcome.refs
        if any(r.snapshot is None for r in refs.values()):
            return  # scratch or plain-directory results are not cache records
        for index, ref in refs.items():
            self.store.put_cache(key, ref.snapshot, index)

    async def checksum(self, ref: Ref, selectors: list[Selector]) -> str:
        whole = self._local_sums.get(ref.path) if ref.path is not None else None
        if whole is not None and all(_whole_tree(s) for s in selectors):
            return whole if len(selectors) == 1 else sha256_digest(
                json.dumps([whole] * len(selectors)).encode())

        def compute() -> str:
            with read_ref(self.store, ref) as path:
                sums = [self.w.checksums.checksum(
                    path, s.path, wildcard=s.wildcard, follow_symlinks=s.follow_links,
                    include_patterns=s.include_patterns, exclude_patterns=s.exclude_patterns)
                    for s in selectors]
            return sums[0] if len(sums) == 1 else sha256_digest(json.dumps(sums).encode())

        return await asyncio.to_thread(compute)

    # -- sources -------------------------------------------------------------------------

    async def source_key(self, vertex: Vertex,
                         vp: VertexProgress) -> tuple[str, VertexOutcome | None]:
        src = vertex.op.op
        assert isinstance(src, SourceOp)
        scheme, _, rest = src.identifier.partition("://")
        if scheme == "docker-image":
            return await self._image_key(vertex, src, rest, vp), None
        if scheme == "local":
            return await self._local(vertex, src, rest, vp)
        if scheme in ("git", "http", "https", "oci-layout"):
            return await self._fetched_source(vertex, src, scheme, vp)
        raise InputError(f"unsupported source {src.identifier!r}")

    async def execute(self, vertex: Vertex, key: str, inputs: list[Ref],
                      vp: VertexProgress) -> VertexOutcome:
        body = vertex.op.op
        if isinstance(body, SourceOp):
            return await self._image_pull(vertex, body, vp)
        if isinstance(body, ExecOp):
            return await self._exec(vertex, body, inputs, vp)
        if isinstance(body, FileOp):
            return await asyncio.to_thread(self._file, vertex, body, inputs)
        if isinstance(body, MergeOp):
            return await asyncio.to_thread(self._merge, body, inputs)
        if isinstance(body, DiffOp):
            return await asyncio.to_thread(self._diff, body, inputs)
        raise SolveError(f"{vertex.name}: {vertex.op.kind} ops are not supported",
                         vertex=vertex.digest)

    # docker-image ---------------------------------------------------------------------

    async def _resolve_image(self, vertex: Vertex, src: SourceOp, ref: str) -> Any:
        platform = vertex.op.platform
        plat = str(platform) if platform is not None else None

        mode = src.attrs.get("image.resolvemode") or "default"
        if mode != "pull":
            local = await asyncio.to_thread(self._stored_image, ref, plat)
            if local is not None:
                return local
            if mode == "local":
                raise BuildError(f"{ref}: no such image in the local image store "
                                 "(resolve mode local)")

        async def resolve() -> Any:
            return await self.registry.resolve(ref, plat)

        image, _ = await InFlight.run(f"resolve:{ref}:{plat}", resolve)
        return image

    def _stored_image(self, ref: str, platform: str | None) -> Any:
        """``ref`` from the local image store (``pybk.core.images.store``), or None."""
        from pybk.core.images import store as imagestore
        from pybk.core.registry.client import Descriptor

        img = imagestore.lookup(self.store.root, ref, platform=platform)
        if img is None:
            return None
        return _LayoutImage(ref=ref, manifest_digest=img.digest, config=img.config,
                            layers=[Descriptor.from_dict(d) for d in img.layers], layout=img)

    async def _image_key(self, vertex: Vertex, src: SourceOp, ref: str,
                         vp: VertexProgress) -> str:
        image = await self._resolve_image(vertex, src, ref)
        vp.status(f"resolve {ref}", done=True)
        self._images[vertex.digest] = image
        return self._image_key_of(src, image.config)

    @staticmethod
    def _image_key_of(src: SourceOp, config: Mapping[str, Any]) -> str:
        diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
        limit = src.attrs.get("image.layerlimit") or src.attrs.get("oci.layerlimit")
        if limit:
            diff_ids = diff_ids[: int(limit)]
        return source_key("image", {"chain": chain_ids(diff_ids)[-1:] or [""],
                                    "layers": len(diff_ids)})

    async def _image_pull(self, vertex: Vertex, src: SourceOp,
                          vp: VertexProgress) -> VertexOutcome:
        image = self._images[vertex.digest]
        diff_ids = list(image.config.get("rootfs", {}).get("diff_ids", []))
        layers = list(image.layers)
        limit = src.attrs.get("image.layerlimit") or src.attrs.get("oci.layerlimit")
        if limit:
            diff_ids, layers = diff_ids[: int(limit)], layers[: int(limit)]
        if len(diff_ids) != len(layers):
            raise BuildError(f"image {image.ref}: config lists {len(diff_ids)} layers, "
                             f"manifest {len(layers)}")
        parent: str | None = None
        for layer, diff_id, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
            parent = await self._unpack_layer(image, layer, chain, parent, vp, diff_id)
        return VertexOutcome(refs={0: Ref(snapshot=parent)}, cached=False,
                             extra={"image_config": image.config,
                                    "manifest_digest": image.manifest_digest})

    async def _unpack_layer(self, image: Any, layer: Any, chain: str, parent: str | None,
                            vp: VertexProgress, diff_id: str = "") -> str:
        record_key = "layer:" + chain

        def existing() -> str | None:
            record = self.store.get_cache(record_key)
            if record is None:
                return None
            self.lease.add(record)
            return record.id

        found = existing()
        if found is not None:
            return found

        async def unpack() -> str:
            async with self.store.build_lock(record_key):
                again = existing()
                if again is not None:
                    return again

                def progress(cur: int, total: int) -> None:
                    vp.status(layer.digest, current=cur, total=total, done=cur >= total)

                if isinstance(image, _LayoutImage):
                    path = image.layout.blob_path(layer.digest)
                else:
                    path = await self.registry.fetch_blob(image.ref, layer, progress)
                vp.status(f"extracting {layer.digest}")
                where = (f"{image.ref}@{layer.digest}" if not isinstance(image, _LayoutImage)
                         else f"oci-layout {image.ref} {layer.digest}")
                snap = await asyncio.to_thread(self._apply_layer, str(path), layer.media_type,
                                               parent, f"pulled from {where}")
                vp.status(f"extracting {layer.digest}", done=True)
                if isinstance(image, _LayoutImage):
                    await asyncio.to_thread(self._keep_blob, str(path), layer.digest)
                self.store.set_layer_blob(snap, {
                    "mediaType": layer.media_type, "digest": layer.digest, "size": layer.size,
                    "diffID": diff_id,
                    "source": "" if isinstance(image, _LayoutImage) else image.ref.repository})
                self.store.put_cache(record_key, snap)
                return snap

        snap, _ = await InFlight.run(record_key, unpack)
        return snap

    def _keep_blob(self, blob_path: str, digest: str) -> None:
        """Copy a layout's layer blob into the content store so exports can reuse it."""
        from pybk.core.store.content import ContentStore

        content = ContentStore(self.store.root)
        if content.has(digest):
            return
        with open(blob_path, "rb") as src, content.writer(expected_digest=digest) as w:
            w.copy_from(src)

    def _apply_layer(self, blob_path: str, media_type: str, parent: str | None,
                     description: str = "") -> str:
        from pybk.core.fs.archive import apply_layer

        with contextlib.ExitStack() as stack:
            active = _Active(self, Ref(snapshot=parent), stack, description)
            apply_layer(blob_path, active.mount(), media_type=media_type)
            return active.commit().snapshot  # type: ignore[return-value]

    # local ------------------------------------------------------------------------------

    async def _local(self, vertex: Vertex, src: SourceOp, name: str,
                     vp: VertexProgress) -> tuple[str, VertexOutcome]:
        from pybk.core.fs.localsync import sync_local
        from pybk.core.store.localdirs import LOCAL_SYNC_STATE_SUFFIX

        client_dir = self.session.local_dirs.get(name)
        if client_dir is None:
            given = ", ".join(sorted(self.session.local_dirs)) or "none"
            raise InputError(f"local directory {name!r} was not given (given: {given})")
        attrs_ = src.attrs
        include = _json_list(attrs_.get("local.includepattern"))
        exclude = _json_list(attrs_.get("local.excludepatterns"))
        follow = _json_list(attrs_.get("local.followpaths"))
        shared = attrs_.get("local.sharedkeyhint") or os.path.abspath(client_dir)
        shared = sha256_digest(f"{shared}\0{os.path.abspath(client_dir)}".encode())[7:23]
        vp.start()
        # one build may read a directory through differently filtered sources: the first syncs
        # into the shared copy, each other filter into a copy of its own (a copy is read, under
        # this build's lock, until the build ends); a filter seen before is not synced again
        filters = json.dumps([include, exclude, follow]).encode()
        async with self._local_gates.setdefault((name, shared), asyncio.Lock()):
            done = self._local_done.get((name, shared, filters))
            if done is not None:
                return done
            claimed = self._local_filters.setdefault((name, shared), filters)
            copy_key = shared if claimed == filters else f"{shared}-{sha256_digest(filters)[7:15]}"
            lock = self.store.local_lock(name, copy_key)
            await lock.acquire_async()
            self._held.append(lock)
            dest = str(self.store.local_dir(name, copy_key))
            stats = await asyncio.to_thread(
                sync_local, client_dir, dest, include_patterns=include, exclude_patterns=exclude,
                follow_paths=follow, state_file=dest.rstrip("/") + LOCAL_SYNC_STATE_SUFFIX)
            self.local_stats[name] = stats
            vp.status(f"transferring {name}: {stats.copied} files copied, "
                      f"{stats.removed} removed", done=True)
            checksum = await asyncio.to_thread(self.w.checksums.checksum, dest, "/")
            self._local_sums[dest] = checksum
            done = self._local_done[(name, shared, filters)] = (
                source_key("local", {"checksum": checksum}),
                VertexOutcome(refs={0: Ref(path=dest)}, cached=False))
            return done

    async def _fetched_source(self, vertex: Vertex, src: SourceOp, scheme: str,
                              vp: VertexProgress) -> tuple[str, VertexOutcome | None]:
        if scheme == "oci-layout":
            return await self._oci_layout(vertex, src, vp), None
        from pybk.core.solver import sources

        vp.start()
        stack = contextlib.ExitStack()
        work = str(self.store.process_tmp(f"fetch-{uuid.uuid4().hex[:12]}"))
        stack.callback(shutil.rmtree, work, True)
        with stack:
            a = src.attrs
            if scheme == "git":
                remote, ref, subdir = _parse_git(src.identifier, a)
                keep = a.get("git.keepgitdir") == "true"
                commit = await asyncio.to_thread(
                    sources.fetch_git, remote, ref, work, keep_git_dir=keep, subdir=subdir,
                    checksum=a.get("git.checksum") or None,
                    cache_dir=os.path.join(self.store.root, "git"))
                identity = {"commit": commit, "subdir": subdir or "", "keep": keep}
            else:
                headers = {k[len("http.header."):]: v for k, v in a.items()
                           if k.startswith("http.header.")}
                digest, _ = await asyncio.to_thread(
                    sources.fetch_http, src.identifier, work, checksum=a.get("http.checksum"),
                    filename=a.get("http.filename"), perm=_perm(a.get("http.perm")),
                    uid=_int(a.get("http.uid")), gid=_int(a.get("http.gid")),
                    etag_cache=os.path.join(self.store.root, "http"), headers=headers)
                identity = {"digest": digest, "name": a.get("http.filename", ""),
                            "perm": a.get("http.perm", ""), "uid": a.get("http.uid", ""),
                            "gid": a.get("http.gid", ""), "url": src.identifier}
            vp.status(f"fetched {identity.get('commit') or identity.get('digest')}", done=True)
            key = source_key(scheme, identity)
            cached = None if vertex.ignore_cache else self.load_cached(key, vertex)
            if cached is not None:
                return key, cached
            outcome = await asyncio.to_thread(self._snapshot_dir, work)
        self.save(key, vertex, outcome)
        return key, outcome

    async def _oci_layout(self, vertex: Vertex, src: SourceOp, vp: VertexProgress) -> str:
        from pybk.core.registry.client import Descriptor
        from pybk.core.solver import sources

        store_id = src.attrs.get("oci.store", "")
        layout = self.session.oci_layouts.get(store_id)
        if layout is None:
            given = ", ".join(sorted(self.session.oci_layouts)) or "none"
            raise InputError(f"OCI layout {store_id!r} was not given (given: {given})")
        ref = src.identifier[len("oci-layout://"):]
        wanted = ref.rsplit("@", 1)[1] if "@" in ref else ref.rsplit(":", 1)[-1]
        plat = str(vertex.op.platform) if vertex.op.platform is not None else None
        img = await asyncio.to_thread(sources.read_oci_layout, layout, wanted, platform=plat)
        self._images[vertex.digest] = _LayoutImage(
            ref=ref, manifest_digest=img.digest, config=img.config,
            layers=[Descriptor.from_dict(d) for d in img.layers], layout=img)
        return self._image_key_of(src, img.config)

    def _snapshot_dir(self, path: str) -> VertexOutcome:
        return VertexOutcome(refs={0: Ref(snapshot=self._materialize(Ref(path=path)))},
                             cached=False)

    # exec -------------------------------------------------------------------------------

    def check_entitlements(self, vertex: Vertex, op: ExecOp) -> None:
        """The step's host network or insecure mode was asked for (``--allow``); the client
        checks every exec of a graph when it is loaded, before any step runs or is found in
        the cache (as BuildKit)."""
        if op.network == NetMode.HOST and "network.host" not in self.session.entitlements:
            raise SolveError(f"{vertex.name}: network mode host requires the 'network.host' "
                             "entitlement (--allow network.host)", vertex=vertex.digest)
        if (op.security == SecurityMode.INSECURE
                and "security.insecure" not in self.session.entitlements):
            raise SolveError(f"{vertex.name}: security mode insecure requires the "
                             "'security.insecure' entitlement (--allow security.insecure)",
                             vertex=vertex.digest)

    async def _exec(self, vertex: Vertex, op: ExecOp, inputs: list[Ref],
                    vp: VertexProgress) -> VertexOutcome:
        if vertex.op.platform is not None:
            from pybk.core.engine.multiplatform import check_executable

            check_executable(vertex.op.platform)
        meta = op.meta
        assert meta is not None
        env = list(meta.env)
        if meta.proxy_env is not None:
            # like BuildKit: both spellings, and never part of the cache key
            for name in ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"):
                value = getattr(meta.proxy_env, name)
                if value:
                    env += [f"{name.upper()}={value}", f"{name}={value}"]
        for se in op.secretenv:
            data = self.session.secrets.get(se.id)
            if data is None:
                if se.optional:
                    continue
                raise SolveError(f"secret {se.id} not found", vertex=vertex.digest)
            env.append(f"{se.name or se.id}={data.decode('utf-8', 'replace')}")
        process = ProcessSpec(
            args=tuple(meta.args), env=tuple(env), cwd=meta.cwd or "/", user=meta.user,
            hostname=meta.hostname or "pybk", network=NETWORK_MODES[op.network],
            security="insecure" if op.security == SecurityMode.INSECURE else "sandbox",
            extra_hosts=tuple((h.host, h.ip) for h in meta.extra_hosts),
            valid_exit_codes=tuple(meta.valid_exit_codes) or (0,))

        def ref_of(index: int) -> Ref:
            return SCRATCH_REF if index == SCRATCH else inputs[index]

        async with contextlib.AsyncExitStack() as astack:
            stack = astack.enter_context(contextlib.ExitStack())
            root: list[Mount] | None = None
            outputs: dict[int, _Active] = {}
            mounts: list[ExecMount] = []
            secrets: list[SecretMount] = []
            agents: list[SSHMount] = []
            for m in op.mounts:
                if m.mount_type == MountType.BIND:
                    src = ref_of(m.input)
                    described = f"mount {m.dest} from exec {' '.join(meta.args)}"
                    if m.dest == "/":
                        active = _Active(self, src, stack, described)
                        if src.path is not None:
                            await asyncio.to_thread(active.mount)
                            active.unmount()
                        root = active.mounts
                        if m.output != SKIP_OUTPUT:
                            outputs[m.output] = active
                        continue
                    if m.readonly and m.output == SKIP_OUTPUT:
                        path = stack.enter_context(read_ref(self.store, src))
                    else:
                        active = _Active(self, src, stack, described)
                        path = await asyncio.to_thread(active.mount)
                        if m.output != SKIP_OUTPUT:
                            outputs[m.output] = active
                    source = os.path.join(path, m.selector.lstrip("/")) if m.selector else path
                    opts = ("rbind", "ro") if m.readonly else ("rbind", "rw")
                    mounts.append(ExecMount(m.dest, (Mount("bind", source, opts),), m.readonly))
                elif m.mount_type == MountType.CACHE:
                    mounts.append(await self._cache_mount(vertex, m, ref_of(m.input), astack))
                elif m.mount_type == MountType.TMPFS:
                    opts = ("nosuid", "nodev", "mode=1777")
                    if m.tmpfs_opt is not None and m.tmpfs_opt.size:
                        opts += (f"size={m.tmpfs_opt.size}",)
                    mounts.append(ExecMount(m.dest, (Mount("tmpfs", "tmpfs", opts),)))
                elif m.mount_type == MountType.SECRET:
                    so = m.secret_opt
                    sid = so.id if so is not None else ""
                    data = self.session.secrets.get(sid)
                    if data is None:
                        if so is not None and so.optional:
                            continue
                        raise SolveError(f"secret {sid} not found", vertex=vertex.digest)
                    secrets.append(SecretMount(m.dest, data, uid=so.uid if so else 0,
                                               gid=so.gid if so else 0,
                                               mode=(so.mode if so and so.mode else 0o400)))
                elif m.mount_type == MountType.SSH:
                    so = m.ssh_opt
                    sid = (so.id if so is not None else "") or "default"
                    sock = self.session.ssh.get(sid)
                    if sock is None:
                        if so is not None and so.optional:
                            continue
                        raise SolveError(f"no SSH key {sid!r} forwarded from the client "
                                         "(--ssh)", vertex=vertex.digest)
                    agents.append(SSHMount(m.dest or DEFAULT_SSH_DEST, sock,
                                           uid=so.uid if so else 0, gid=so.gid if so else 0,
                                           mode=(so.mode if so and so.mode else 0o600)))
            if root is None:
                raise SolveError(f"{vertex.name}: no root mount", vertex=vertex.digest)
            out = StepLogLimiter(vp, STREAM_STDOUT)
            err = StepLogLimiter(vp, STREAM_STDERR)
            code = await self.w.executor.run(process, root, mounts, secrets=secrets, ssh=agents,
                                             stdout=out.write, stderr=err.write)
            if code not in process.valid_exit_codes:
                from pybk.core.errors import exit_error

                raise exit_error(process, code)
            refs = {i: await asyncio.to_thread(a.commit) for i, a in sorted(outputs.items())}
            return VertexOutcome(refs=refs, cached=False)

    async def _cache_mount(self, vertex: Vertex, m: Any, seed: Ref,
                           stack: contextlib.AsyncExitStack) -> ExecMount:
        co = m.cache_opt
        cid = (co.id if co is not None and co.id else m.dest)
        sharing = {CacheSharingOpt.SHARED: "shared", CacheSharingOpt.PRIVATE: "private",
                   CacheSharingOpt.LOCKED: "locked"}[co.sharing if co else CacheSharingOpt.SHARED]
        seed_record = None
        if not seed.is_scratch:
            seed_record = self.store.get_record(self._materialize(seed))
        mounts, release = await self.store.cache_mount(cid, sharing, seed=seed_record,
                                                       seed_path=m.selector or "/")
        stack.callback(release)
        if m.readonly:
            mounts = [attrs.evolve(x, options=tuple(o for o in x.options if o != "rw") + ("ro",))
                      for x in mounts]
        return ExecMount(m.dest, tuple(mounts), m.readonly)

    # file -------------------------------------------------------------------------------

    def _file(self, vertex: Vertex, op: FileOp, inputs: list[Ref]) -> VertexOutcome:
        from pybk.core.fs import fileop

        n = len(inputs)
        uses: dict[int, int] = {}
        for a in op.actions:
            for idx in (a.input, a.secondary_input):
                uses[idx] = uses.get(idx, 0) + 1
        with contextlib.ExitStack() as stack:
            results: dict[int, _Active] = {}
            reads: dict[int, str] = {}

            def readable(index: int) -> str:
                if index >= n:
                    return results[index - n].mount()
                if index not in reads:
                    ref = SCRATCH_REF if index == SCRATCH else inputs[index]
                    reads[index] = stack.enter_context(read_ref(self.store, ref))
                return reads[index]

            for k, action in enumerate(op.actions):
                base = action.input
                if base >= n and uses.get(base, 0) == 1 and op.actions[base - n].output == SKIP_OUTPUT:
                    active = results.pop(base - n)  # continue in place
                else:
                    parent = (SCRATCH_REF if base == SCRATCH else
                              inputs[base] if base < n else results[base - n].commit())
                    active = _Active(self, parent, stack, vertex.name)
                root = active.mount()
                body = action.action
                owner_root = root
                owner = getattr(body, "owner", None)
                if owner is not None:
                    named = [getattr(o, "by_name", None) for o in (owner.user, owner.group) if o]
                    named = [x for x in named if x is not None]
                    if named and named[0].input != base:
                        owner_root = readable(named[0].input)
                if isinstance(body, FileActionCopy):
                    src_root = readable(action.secondary_input)
                    layer = self._link_layer(op, k, inputs, active)
                    links = fileop.LinkPlan(root) if layer is not None else None
                    fileop.copy(src_root, body.src, root, body.dest, body, owner_root=owner_root,
                                links=links)
                    if links is not None and links.pending:
                        links.ensure_parents(layer)
                        active.unmount()  # the layer is linked into only while unmounted
                        links.apply(layer)
                        self.store.mark_linked(active.record, src_root)
                elif isinstance(body, FileActionMkFile):
                    fileop.mkfile(root, body.path, body.mode, body.data, body.owner,
                                  _ts(body.timestamp), owner_root=owner_root)
                elif isinstance(body, FileActionMkDir):
                    fileop.mkdir(root, body.path, body.mode, body.make_parents, body.owner,
                                 _ts(body.timestamp), owner_root=owner_root)
                elif isinstance(body, FileActionRm):
                    fileop.rm(root, body.path, body.allow_not_found, body.allow_wildcard)
                elif isinstance(body, FileActionSymlink):
                    fileop.symlink(root, body.oldpath, body.newpath, body.owner,
                                   _ts(body.timestamp), owner_root=owner_root)
                results[k] = active
            refs = {a.output: results[k].commit() for k, a in enumerate(op.actions)
                    if a.output != SKIP_OUTPUT}
            return VertexOutcome(refs=refs, cached=False)

    def _link_layer(self, op: FileOp, k: int, inputs: list[Ref], active: _Active) -> str | None:
        """The layer directory action ``k`` (a copy) may hard-link source files into, or None.

        Only files of a local context synced in this build: the sync replaces a changed file
        by a new one and the directory is locked until the build ends, so a linked file never
        changes. Only when no later action of ``op`` continues writing in this snapshot (it
        could write a linked file in place; a later step gets its own overlay layer, where a
        write copies the file up) and no layer below already links files of that context (one
        view would show a file under two names, seen as hard links by exports and copies).
        Not onto scratch: such layers are made to be merged (``COPY --link``), and a merge
        whose layers link one context is copied into a single directory.
        """
        src = op.actions[k].secondary_input
        if not (0 <= src < len(inputs)) or inputs[src].path not in self._local_sums:
            return None
        parent = active._parent
        if parent.path is not None or parent.snapshot is None:
            return None
        n = len(inputs)
        if any(a.input == n + k for a in op.actions[k + 1:]) and \
                op.actions[k].output == SKIP_OUTPUT:
            return None
        layer = self.store.own_layer(active.record)
        if layer is None or os.stat(layer).st_dev != os.stat(inputs[src].path).st_dev:
            return None
        if inputs[src].path in self.store.linked_sources(parent.snapshot):
            return None
        return layer

    # merge / diff -----------------------------------------------------------------------

    def _materialize(self, ref: Ref) -> str | None:
        """The record of ``ref``; a plain directory is copied into a new one first."""
        if ref.path is None:
            return ref.snapshot
        with contextlib.ExitStack() as stack:
            active = _Active(self, ref, stack)
            active.mount()
            return active.commit().snapshot

    def _merge(self, op: MergeOp, inputs: list[Ref]) -> VertexOutcome:
        keys = [self._materialize(inputs[mi.input]) for mi in op.inputs]
        keys = [k for k in keys if k is not None]
        if not keys:
            return VertexOutcome(refs={0: SCRATCH_REF}, cached=False)
        record = self.store.merge(keys, description="merge", lease=self.lease)
        return VertexOutcome(refs={0: Ref(snapshot=record.id)}, cached=False)

    def _diff(self, op: DiffOp, inputs: list[Ref]) -> VertexOutcome:
        def side(d: Any) -> str | None:
            if d is None or d.input == SCRATCH:
                return None
            return self._materialize(inputs[d.input])

        lower, upper = side(op.lower), side(op.upper)
        if upper is None:
            return VertexOutcome(refs={0: SCRATCH_REF}, cached=False)
        record = self.store.diff(lower, upper, description="diff", lease=self.lease)
        return VertexOutcome(refs={0: Ref(snapshot=record.id)}, cached=False)


@attrs.frozen(eq=False)
class _LayoutImage:
    """An image read from a client's OCI layout, shaped like a resolved registry image."""

    ref: str
    manifest_digest: str
    config: dict[str, Any]
    layers: list[Any]
    layout: Any


def _parse_git(identifier: str, attrs_: Mapping[str, str]) -> tuple[str, str | None, str | None]:
    """``(remote URL, ref, subdir)`` of ``git://host/path#ref:subdir`` (``git.fullurl`` wins)."""
    rest = identifier[len("git://"):]
    rest, _, fragment = rest.partition("#")
    remote = attrs_.get("git.fullurl") or f"https://{rest}"
    ref, _, subdir = fragment.partition(":")
    return remote, ref or None, subdir or None


def _whole_tree(selector: Selector) -> bool:
    """Whether a selector reads a whole tree as ``checksum(root, "/")`` does."""
    return (selector.path.strip("/") in ("", ".") and not selector.include_patterns
            and not selector.exclude_patterns)


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _perm(value: str | None) -> int | None:
    """``http.perm``: BuildKit writes octal with a leading 0 (``0644``); plain is decimal."""
    if not value:
        return None
    return int(value, 8) if value.startswith("0") else int(value)


def _ts(value: int) -> int | None:
    return None if value == -1 else value


def _json_list(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        raise InputError(f"invalid JSON list in local source attribute: {raw!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"expected a JSON list of strings, got {raw!r}")
    return value
