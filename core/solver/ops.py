"""Running each kind of op on real snapshots: sources, exec, file, merge and diff.

:class:`Solver` holds what every build shares (store, executor, local image store, checksum
cache); :class:`BuildRunner` is one build's view of it (its session: local dirs, secrets, ssh
sockets, entitlements; the remote caches it imported) and implements what the scheduler asks:
keys of sources, content checksums, cache lookups, execution and saving results. Execs run in
:mod:`.execop`.

Mount points live under ``<root>/mounts/<pid>-…`` so mounts left by a killed build are found
and taken down by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pybk.core.errors import BuildError, InputError, SolveError
from pybk.core.images.ids import chain_ids
from pybk.core.interfaces import Executor, ImageLookup, LayerUnpacker, RemoteCacheLookup
from pybk.core.llb.ops import (
    SCRATCH,
    SKIP_OUTPUT,
    DiffOp,
    ExecOp,
    FileActionCopy,
    FileActionMkDir,
    FileActionMkFile,
    FileActionRm,
    FileActionSymlink,
    FileOp,
    MergeOp,
    NetMode,
    SecurityMode,
    SourceOp,
)
from pybk.core.model import Model, astuple, field
from pybk.core.progress.events import VertexProgress
from pybk.core.serialize import sha256_digest
from pybk.core.solver.active import ActiveSnapshot
from pybk.core.solver.cachekey import Selector, files_detail, source_key
from pybk.core.solver.results import SCRATCH_REF, Ref, read_ref
from pybk.core.solver.scheduler import InFlight, OpRunner, VertexOutcome
from pybk.core.solver.vertex import Vertex


class Session(Model):
    """What the client gives one build: its directories, secrets, agents and entitlements."""

    local_dirs: Mapping[str, str] = field(factory=dict)
    secrets: Mapping[str, bytes] = field(factory=dict, repr=False)
    ssh: Mapping[str, str] = field(factory=dict)
    entitlements: frozenset[str] = frozenset()
    oci_layouts: Mapping[str, str] = field(factory=dict)
    #: ``{(image reference, platform or None): ResolvedImage}`` the frontend resolved in this
    #: build; the solver uses them instead of asking the registry again (the frontend's LLB
    #: then stands for the image it saw, as BuildKit's pinned digests do)
    resolved_images: Mapping[tuple[str, str | None], Any] = field(factory=dict)


# ------------------------------------------------------------------------------------ solver


class Solver:
    """The parts of the engine shared by every build of one store: the store, the executor
    running ExecOps, the local image store (``FROM`` an image built here) and the checksum
    cache."""

    def __init__(self, *, store: Any, executor: Executor, config: Any = None,
                 images: ImageLookup | None = None):
        self.store = store
        self.executor = executor
        self.config = config
        self.images = images
        self._checksums: Any = None

    @property
    def checksums(self) -> Any:
        if self._checksums is None:
            from pybk.core.fs.contenthash import ChecksumCache

            self._checksums = ChecksumCache(os.path.join(self.store.root, "contenthash"))
        return self._checksums

    def runner(self, session: Session, registry: Any, lease: Any,
               remote: RemoteCacheLookup | None = None) -> BuildRunner:
        """One build's runner; ``remote``: the caches it imported (``--cache-from``)."""
        return BuildRunner(self, session, registry, lease, remote)


class BuildRunner(OpRunner, LayerUnpacker):
    """One build's access to the solver; unpacks layers for the remote caches it imports."""

    def __init__(self, solver: Solver, session: Session, registry: Any, lease: Any,
                 remote: RemoteCacheLookup | None = None):
        self.w = solver
        self.session = session
        self.registry = registry
        self.lease = lease
        self.store = solver.store
        self.remote = remote
        self._content: Any = None
        self.local_stats: dict[str, Any] = {}
        #: checksum of each synced local directory's whole tree (the directory cannot change
        #: during the build: its lock is held until :meth:`release`)
        self._local_sums: dict[str, str] = {}
        #: the record of every entry of each synced local directory, from the same walk
        #: (:meth:`ChecksumCache.known` answers a COPY's selectors from it)
        self._local_memos: dict[str, dict[str, tuple[bool, str]]] = {}
        #: per source vertex: its local directory's copy, or what a git or HTTP source fetched
        self._source_of: dict[str, Any] = {}
        self._images: dict[str, Any] = {}
        self._held: list[Any] = []
        #: per (name, shared key) of a local source: the filters of the source that synced the
        #: shared copy, a gate, and each filter's sync result
        self._local_filters: dict[tuple[str, str], bytes] = {}
        self._local_gates: dict[tuple[str, str], asyncio.Lock] = {}
        self._local_done: dict[tuple[str, str, bytes], tuple[str, VertexOutcome]] = {}
        #: image layers unpacking ahead of need (see :meth:`_unpack_ahead`)
        self._ahead: list[asyncio.Task[Any]] = []
        #: called with the vertex and its inputs when that vertex is about to run
        self.on_execute: dict[str, Callable[[Vertex, list[Ref]], None]] = {}

    def release(self) -> None:
        """Let go of the locks this build holds (local directories)."""
        for task in self._ahead:
            task.cancel()
        self._ahead.clear()
        held, self._held = self._held, []
        self._local_sums.clear()
        self._local_memos.clear()
        self._local_filters.clear()
        self._local_done.clear()
        for lock in held:
            lock.release()

    # -- cache records -------------------------------------------------------------------

    def load_cached(self, key: str, vertex: Vertex) -> VertexOutcome | None:
        refs: dict[int, Ref] = {}
        for index in sorted(vertex.op.output_indices()):
            # found and leased at once: a record gone meanwhile is a miss (the step runs)
            record = self.store.get_cache(key, index, lease=self.lease)
            if record is None:
                return None
            refs[index] = Ref(snapshot=record.id)
        return VertexOutcome(refs=refs, cached=True, extra=self._extra(vertex))

    async def load_remote(self, key: str, vertex: Vertex,
                          vp: VertexProgress) -> VertexOutcome | None:
        if self.remote is None:
            return None
        snapshots = await self.remote.load(key, sorted(vertex.op.output_indices()), self, vp)
        if snapshots is None:
            return None
        for index, snap in snapshots.items():
            self.store.put_cache(key, snap, index)
            self.lease.add(snap)
        return VertexOutcome(refs={i: Ref(snapshot=s) for i, s in snapshots.items()},
                             cached=True)

    # -- layers --------------------------------------------------------------------------

    @property
    def content(self) -> Any:
        if self._content is None:
            from pybk.core.store.content import ContentStore

            self._content = ContentStore(self.store.root)
        return self._content

    def has_layer(self, chain_id: str) -> bool:
        return self.store.get_cache("layer:" + chain_id) is not None

    async def unpack_layer(self, chain_id: str, parent: str | None, *,
                           descriptor: Mapping[str, Any],
                           fetch: Callable[[], Awaitable[str]], description: str = "",
                           progress: VertexProgress | None = None,
                           check: Callable[[str], Awaitable[None]] | None = None) -> str:
        """The layer's snapshot, unpacked once (under the store's build lock, shared with
        concurrent builds) and recorded as ``layer:<chain id>``. ``check`` (given the blob's
        path) runs while the layer is unpacked; nothing is recorded unless it passes."""
        record_key = "layer:" + chain_id

        def existing() -> str | None:
            record = self.store.get_cache(record_key, lease=self.lease)
            return record.id if record is not None else None

        found = existing()
        if found is not None:
            return found

        async def unpack() -> str:
            async with self.store.build_lock(record_key):
                again = existing()
                if again is not None:
                    return again
                path = await fetch()
                digest = descriptor["digest"]
                if progress is not None:
                    progress.status(f"extracting {digest}")
                applying = asyncio.to_thread(self._apply_layer, path,
                                             descriptor["mediaType"], parent, description,
                                             digest, descriptor.get("diffID") or None)
                if check is None:
                    snap = await applying
                else:  # both finish (a failed unpack is discarded) before either error counts
                    snap, checked = await asyncio.gather(applying, check(path),
                                                         return_exceptions=True)
                    for outcome in (snap, checked):
                        if isinstance(outcome, BaseException):
                            raise outcome
                if progress is not None:
                    progress.status(f"extracting {digest}", done=True)
                self.store.set_layer_blob(snap, dict(descriptor))
                self.store.put_cache(record_key, snap)
                return snap

        snap, _ = await InFlight.run(record_key, unpack)
        self.lease.add(snap)
        return snap

    def resolved_images(self, digests: Iterable[str]) -> dict[str, str]:
        """``{vertex digest: manifest digest}`` of the image sources among ``digests`` that
        this build resolved (for provenance)."""
        return {d: self._images[d].manifest_digest for d in digests if d in self._images}

    def source_detail(self, vertex: Vertex) -> dict[str, Any]:
        if vertex.digest in self._images:
            return {"image": self._images[vertex.digest].manifest_digest}
        found = self._source_of.get(vertex.digest, "")
        return ({"fetched": found} if isinstance(found, dict)
                else files_detail(self._local_memos.get(found)))

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
        memo = self._local_memos.get(ref.path) if ref.path is not None else None
        if memo is not None:  # a synced context, unchanged since it was summed
            known = [self.w.checksums.known(
                memo, s.path, wildcard=s.wildcard, follow_symlinks=s.follow_links,
                include_patterns=s.include_patterns, exclude_patterns=s.exclude_patterns)
                for s in selectors]
            if None not in known:
                return known[0] if len(known) == 1 else sha256_digest(  # type: ignore[return-value]
                    json.dumps(known).encode())

        def compute() -> str:
            with read_ref(self.store, ref) as path:
                sums = [self.w.checksums.checksum(
                    path, s.path, wildcard=s.wildcard, follow_symlinks=s.follow_links,
                    include_patterns=s.include_patterns, exclude_patterns=s.exclude_patterns)
                    for s in selectors]
            return sums[0] if len(sums) == 1 else sha256_digest(json.dumps(sums).encode())

        def remembered() -> str:
            """A committed snapshot never changes: its checksums are kept with it (as BuildKit
            keeps a content-hash cache per snapshot), so a rebuild does not mount it again."""
            record = self.store.get_record(ref.snapshot) if ref.snapshot is not None else None
            if record is None or record.mutable:
                return compute()
            from pybk.core.fs.contenthash import CHECKSUM_FORMAT

            what = json.dumps([CHECKSUM_FORMAT, [astuple(s) for s in selectors]])
            selection = sha256_digest(what.encode())[7:]
            found = self.store.record_checksum(record.id, selection)
            if found is not None:
                return found
            checksum = compute()
            self.store.set_record_checksum(record.id, selection, checksum)
            return checksum

        return await asyncio.to_thread(remembered if ref.path is None else compute)

    # -- sources -------------------------------------------------------------------------

    async def source_key(self, vertex: Vertex,
                         vp: VertexProgress) -> tuple[str, VertexOutcome | None]:
        src = vertex.op.op
        assert isinstance(src, SourceOp)
        scheme, _, rest = src.identifier.partition("://")
        if scheme == "docker-image":
            return await self._image_key(vertex, src, rest, vp), None
        if scheme == "local":
            key, outcome = await self._local(vertex, src, rest, vp)
            self._source_of[vertex.digest] = outcome.refs[0].path or ""
            return key, outcome
        if scheme in ("git", "http", "https", "oci-layout"):
            return await self._fetched_source(vertex, src, scheme, vp)
        raise InputError(f"unsupported source {src.identifier!r}")

    async def execute(self, vertex: Vertex, key: str, inputs: list[Ref],
                      vp: VertexProgress) -> VertexOutcome:
        hook = self.on_execute.get(vertex.digest)
        if hook is not None:
            hook(vertex, inputs)
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

        # default and local (BuildKit's prefer-local): the local image store, then the
        # registry; pull: the registry only
        mode = src.attrs.get("image.resolvemode") or "default"
        if mode != "pull":
            local = await asyncio.to_thread(self._stored_image, ref, plat)
            if local is not None:
                return local

        async def resolve() -> Any:
            known = self.session.resolved_images.get((ref, plat))
            if known is not None:
                return known
            return await self.registry.resolve(ref, plat)

        image, _ = await InFlight.run(f"resolve:{ref}:{plat}", resolve)
        return image

    def _stored_image(self, ref: str, platform: str | None) -> Any:
        """``ref`` from the local image store, or None."""
        from pybk.core.registry.client import Descriptor

        img = self.w.images.lookup(ref, platform) if self.w.images is not None else None
        if img is None:
            return None
        return _LayoutImage(ref=ref, manifest_digest=img.digest, config=img.config,
                            layers=[Descriptor.from_dict(d) for d in img.layers], layout=img)

    async def _image_key(self, vertex: Vertex, src: SourceOp, ref: str,
                         vp: VertexProgress) -> str:
        image = await self._resolve_image(vertex, src, ref)
        vp.status(f"resolve {ref}", done=True)
        self._images[vertex.digest] = image
        self._unpack_ahead(vertex, src, image, vp)
        return self._image_key_of(src, image.config)

    def _unpack_ahead(self, vertex: Vertex, src: SourceOp, image: Any,
                      vp: VertexProgress) -> None:
        """Start pulling and unpacking an image whose layers are not in the store yet, while
        the rest of the build's keys are computed (a local context synced and summed): nothing
        built on an image can be cached without its layers, so a build that needs the image at
        all needs them. The step itself, when it runs, finds the layers unpacked or joins the
        unpacking in progress (:meth:`unpack_layer`); a failure here is left for it to meet."""
        chains = chain_ids(list(image.config.get("rootfs", {}).get("diff_ids", [])))
        if not chains or self.has_layer(chains[-1]):
            return
        task = asyncio.ensure_future(self._image_pull(vertex, src, vp))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._ahead.append(task)

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
        for diff_id in diff_ids:
            if not isinstance(diff_id, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", diff_id):
                raise BuildError(f"image {image.ref}: invalid diff id {diff_id!r} in its config")
        parent: str | None = None
        for layer, diff_id, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
            parent = await self._pull_layer(image, layer, chain, parent, vp, diff_id)
        return VertexOutcome(refs={0: Ref(snapshot=parent)}, cached=False,
                             extra={"image_config": image.config,
                                    "manifest_digest": image.manifest_digest})

    async def _pull_layer(self, image: Any, layer: Any, chain: str, parent: str | None,
                          vp: VertexProgress, diff_id: str = "") -> str:
        """One layer of an image source: its blob fetched from the registry, or read from
        the OCI layout (and kept in the content store), then unpacked."""
        layout = isinstance(image, _LayoutImage)

        async def fetch() -> str:
            if layout:
                return str(image.layout.blob_path(layer.digest))

            def progress(cur: int, total: int) -> None:
                vp.status(layer.digest, current=cur, total=total, done=cur >= total)

            return str(await self.registry.fetch_blob(image.ref, layer, progress))

        async def keep(path: str) -> None:
            await asyncio.to_thread(self._keep_blob, path, layer.digest)

        where = (f"oci-layout {image.ref} {layer.digest}" if layout
                 else f"{image.ref}@{layer.digest}")
        return await self.unpack_layer(
            chain, parent, fetch=fetch, check=keep if layout else None,
            description=f"pulled from {where}", progress=vp,
            descriptor={"mediaType": layer.media_type, "digest": layer.digest,
                        "size": layer.size, "diffID": diff_id,
                        "source": "" if layout else image.ref.repository})

    def _keep_blob(self, blob_path: str, digest: str) -> None:
        """Copy a layout's layer blob into the content store so exports can reuse it."""
        content = self.content
        if content.has(digest):
            return
        with open(blob_path, "rb") as src, content.writer(expected_digest=digest) as w:
            w.copy_from(src)

    def _apply_layer(self, blob_path: str, media_type: str, parent: str | None,
                     description: str = "", digest: str | None = None,
                     diff_id: str | None = None) -> str:
        """Unpack a blob on ``parent`` and commit it; the blob's ``digest`` and ``diff_id`` are
        checked while unpacking: on a mismatch the snapshot is discarded, never committed."""
        from pybk.core.fs.archive import apply_layer

        with contextlib.ExitStack() as stack:
            active = ActiveSnapshot(self, Ref(snapshot=parent), stack, description)
            apply_layer(blob_path, active.mount(), media_type=media_type, digest=digest,
                        diff_id=diff_id)
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
        where = (os.path.abspath(client_dir) if isinstance(client_dir, str)
                 else f"client:{client_dir.key}")
        shared = attrs_.get("local.sharedkeyhint") or where
        shared = sha256_digest(f"{shared}\0{where}".encode())[7:23]
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
            # each file copied is hashed meanwhile in another thread (the sync mostly waits
            # on the kernel): the checksum below then reads nothing
            priming = ThreadPoolExecutor(1, thread_name_prefix="pybk-checksum")
            try:
                state_file = dest.rstrip("/") + LOCAL_SYNC_STATE_SUFFIX
                on_copied = lambda rel: priming.submit(self.w.checksums.prime, dest, rel)  # noqa: E731
                if isinstance(client_dir, str):
                    stats = await asyncio.to_thread(
                        sync_local, client_dir, dest, include_patterns=include,
                        exclude_patterns=exclude, follow_paths=follow, state_file=state_file,
                        on_copied=on_copied)
                else:  # a directory of a remote client, synced through its session
                    stats = await asyncio.to_thread(
                        client_dir.sync, dest, include=include, exclude=exclude,
                        follow=follow, state_file=state_file, on_copied=on_copied)
            finally:
                await asyncio.to_thread(priming.shutdown)
            self.local_stats[name] = stats
            received = "" if isinstance(client_dir, str) else (
                f", {stats.bytes_copied} bytes received")
            vp.status(f"transferring {name}: {stats.copied} files copied, "
                      f"{stats.removed} removed{received}",
                      current=stats.bytes_copied if received else 0, done=True)
            if isinstance(client_dir, str) and name != "dockerfile":
                from pybk.core.fs.localsync import transfer_report

                lines = await asyncio.to_thread(transfer_report, client_dir, include, exclude,
                                                follow, stats)
                vp.log(1, "".join(f"{line}\n" for line in lines).encode())
            memo: dict[str, tuple[bool, str]] = {}
            checksum = await asyncio.to_thread(self.w.checksums.checksum, dest, "/", memo=memo)
            self._local_sums[dest] = checksum
            self._local_memos[dest] = memo
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
        work = str(self.store.process_tmp(f"fetch-{os.urandom(6).hex()}"))
        stack.callback(shutil.rmtree, work, True)
        with stack:
            a = src.attrs
            if scheme == "git":
                remote, ref, subdir = _parse_git(src.identifier, a)
                _, identity = await asyncio.to_thread(
                    sources.git_source, remote, ref, subdir, work, a, self.session.secrets,
                    self.session.ssh, os.path.join(self.store.root, "git"))
            else:
                headers = {k[len("http.header."):]: v for k, v in a.items()
                           if k.startswith("http.header.")}
                auth = await asyncio.to_thread(sources.http_auth, src.identifier, a,
                                               self.session.secrets)
                digest, _ = await asyncio.to_thread(
                    sources.fetch_http, src.identifier, work, checksum=a.get("http.checksum"),
                    auth=auth,
                    filename=a.get("http.filename"), perm=_perm(a.get("http.perm")),
                    uid=_int(a.get("http.uid")), gid=_int(a.get("http.gid")),
                    etag_cache=os.path.join(self.store.root, "http"), headers=headers)
                identity = {"digest": digest, "name": a.get("http.filename", ""),
                            "perm": a.get("http.perm", ""), "uid": a.get("http.uid", ""),
                            "gid": a.get("http.gid", ""), "url": src.identifier}
            vp.status(f"fetched {identity.get('commit') or identity.get('digest')}", done=True)
            key = source_key(scheme, identity)
            self._source_of[vertex.digest] = {k: identity[k] for k in ("commit", "digest")
                                              if identity.get(k)}
            cached = None if vertex.ignore_cache else self.load_cached(key, vertex)
            if cached is not None:
                return key, cached
            outcome = await asyncio.to_thread(self._snapshot_dir, work)
        self.save(key, vertex, outcome)
        return key, outcome

    async def _oci_layout(self, vertex: Vertex, src: SourceOp, vp: VertexProgress) -> str:
        from pybk.core.images.layout import read_oci_layout
        from pybk.core.registry.client import Descriptor

        store_id = src.attrs.get("oci.store", "")
        layout = self.session.oci_layouts.get(store_id)
        if layout is None:
            given = ", ".join(sorted(self.session.oci_layouts)) or "none"
            raise InputError(f"OCI layout {store_id!r} was not given (given: {given})")
        ref = src.identifier[len("oci-layout://"):]
        wanted = ref.rsplit("@", 1)[1] if "@" in ref else ref.rsplit(":", 1)[-1]
        plat = str(vertex.op.platform) if vertex.op.platform is not None else None
        img = await asyncio.to_thread(read_oci_layout, layout, wanted, platform=plat)
        self._images[vertex.digest] = _LayoutImage(
            ref=ref, manifest_digest=img.digest, config=img.config,
            layers=[Descriptor.from_dict(d) for d in img.layers], layout=img)
        return self._image_key_of(src, img.config)

    def _snapshot_dir(self, path: str) -> VertexOutcome:
        return VertexOutcome(refs={0: Ref(snapshot=self.materialize(Ref(path=path)))},
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
        from pybk.core.solver.execop import run_exec

        return await run_exec(self, vertex, op, inputs, vp)

    # file -------------------------------------------------------------------------------

    def _file(self, vertex: Vertex, op: FileOp, inputs: list[Ref]) -> VertexOutcome:
        from pybk.core.fs import fileop

        n = len(inputs)
        uses: dict[int, int] = {}
        for a in op.actions:
            for idx in (a.input, a.secondary_input):
                uses[idx] = uses.get(idx, 0) + 1
        with contextlib.ExitStack() as stack:
            results: dict[int, ActiveSnapshot] = {}
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
                    active = ActiveSnapshot(self, parent, stack, vertex.name)
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

    def _link_layer(self, op: FileOp, k: int, inputs: list[Ref], active: ActiveSnapshot) -> str | None:
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

    def materialize(self, ref: Ref) -> str | None:
        """The record of ``ref``; a plain directory is copied into a new one first."""
        if ref.path is None:
            return ref.snapshot
        with contextlib.ExitStack() as stack:
            active = ActiveSnapshot(self, ref, stack)
            active.mount()
            return active.commit().snapshot

    def _merge(self, op: MergeOp, inputs: list[Ref]) -> VertexOutcome:
        keys = [self.materialize(inputs[mi.input]) for mi in op.inputs]
        keys = [k for k in keys if k is not None]
        if not keys:
            return VertexOutcome(refs={0: SCRATCH_REF}, cached=False)
        record = self.store.merge(keys, description="merge", lease=self.lease)
        return VertexOutcome(refs={0: Ref(snapshot=record.id)}, cached=False)

    def _diff(self, op: DiffOp, inputs: list[Ref]) -> VertexOutcome:
        def side(d: Any) -> str | None:
            if d is None or d.input == SCRATCH:
                return None
            return self.materialize(inputs[d.input])

        lower, upper = side(op.lower), side(op.upper)
        if upper is None:
            return VertexOutcome(refs={0: SCRATCH_REF}, cached=False)
        record = self.store.diff(lower, upper, description="diff", lease=self.lease)
        return VertexOutcome(refs={0: Ref(snapshot=record.id)}, cached=False)


class _LayoutImage(Model, eq=False):
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
