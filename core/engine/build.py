"""``pybk build`` of a build file: choose the frontend, let it make LLB, solve, export.

The frontend sees the build only through :class:`LocalBridge` (files of the named locals,
image configs, nested solves) and BuildKit's frontend options (``filename``, ``target``,
``build-arg:K``, ``context:NAME`` …), so an out-of-process frontend gets exactly the same view.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pybk.core import daemonstate
from pybk.core.directives import scan_directives
from pybk.core.engine.inputs import LOCAL, BuildInputs, host_path
from pybk.core.engine.request import BuildRequest, CacheSpec
from pybk.core.engine.resolve import plugin_class, plugin_errors
from pybk.core.errors import BuildError, PybkError, SolveError, UsageError
from pybk.core.interfaces import (
    FrontendBridge,
    FrontendRequest,
    FrontendResult,
    UnsupportedOperation,
)

#: work a build leaves for after the client has its answer: set (to a list) by a process that
#: answers first and exits after (pybkd's per-connection child); None runs it before returning
_AFTER_ANSWER: list[Any] | None = None


def _counted(run: Callable[..., int]) -> Callable[..., int]:
    """Count each call of ``run`` as a build for pybkd's metrics
    (:func:`pybk.core.daemonstate.count_build`): succeeded when it returns 0; one refused with
    exit code 2 (usage, configuration, an entitlement not granted) did not build and is left
    out."""
    @functools.wraps(run)
    def counted(*args: Any, **kwargs: Any) -> int:
        start, code = time.monotonic(), 1
        try:
            code = run(*args, **kwargs)
        except PybkError as exc:
            code = exc.exit_code
            raise
        finally:
            if code != 2:
                daemonstate.count_build(time.monotonic() - start, succeeded=code == 0)
        return code

    return counted


def answer_first() -> None:
    """In this process, let builds leave what does not change their answer (the automatic GC,
    closing the store) for :func:`run_after_answer`, called once the client has its exit code.
    BuildKit's GC, likewise, runs after the solve has returned."""
    global _AFTER_ANSWER
    _AFTER_ANSWER = []


def run_after_answer() -> None:
    """Run what builds left for after the answer (see :func:`answer_first`)."""
    while _AFTER_ANSWER:
        _AFTER_ANSWER.pop(0)()


def _finish(client: Any, *, collect: bool) -> None:
    """The automatic GC (after a build that succeeded) and closing the client: after the
    answer when this process answers first, else now."""
    def finish() -> None:
        try:
            if collect:
                client.collect_garbage()
        finally:
            client.close()

    if _AFTER_ANSWER is not None and collect:
        _AFTER_ANSWER.append(finish)
    else:
        finish()


def _safe_join(root: str, path: str) -> str:
    """``path`` inside ``root``; ``..`` and absolute paths cannot leave it (symlinks are
    resolved within the root)."""
    from pybk.core.fs.rootpath import resolve_in_root

    return resolve_in_root(root, path)


def read_input_file(root: Any, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
    """A file of a local input: a directory of this process's disk (``path`` confined to it)
    or a :class:`~pybk.core.engine.inputs.ClientDir` read through its session."""
    if host_path(root) is None:
        return root.read_file(path, offset=offset, length=length)
    with open(_safe_join(root, path), "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


class LocalBridge(FrontendBridge):
    """The frontend's view of a build running in this process."""

    def __init__(self, *, local_dirs: Mapping[str, str], oci_layouts: Mapping[str, str],
                 config: Any, client: Any = None, entitlements: Any = (),
                 progress: Any = None, image_resolve_mode: str | None = None):
        from pybk.core.config.schema import check_entitlements

        self.local_dirs = dict(local_dirs)
        self.oci_layouts = dict(oci_layouts)
        self.config = config
        self.client = client
        #: the build's entitlements, granted by the engine's configuration (see
        #: :func:`pybk.core.config.schema.check_entitlements`), and ``--progress`` (for the
        #: containers of frontends)
        self.entitlements = check_entitlements(
            entitlements, client.config if client is not None else config)
        self.progress = progress
        self.warnings: list[str] = []
        #: registry images resolved so far, for the solve of this build (``resolved_images``)
        self.resolved_images: dict[tuple[str, str | None], Any] = {}
        #: the build's ``image-resolve-mode`` (``--pull``: ``pull``): except with ``pull``, an
        #: image of that name in the local image store comes first, as for the image sources
        self.image_resolve_mode = image_resolve_mode or "default"

    def read_file(self, input_name: str, path: str, *, offset: int = 0,
                  length: int | None = None) -> bytes:
        root = self.local_dirs.get(input_name)
        if root is None:
            raise FileNotFoundError(f"no local input named {input_name!r}")
        return read_input_file(root, path, offset=offset, length=length)

    def read_dir(self, input_name: str, path: str) -> list[str]:
        root = self.local_dirs.get(input_name)
        if root is None:
            raise FileNotFoundError(f"no local input named {input_name!r}")
        if host_path(root) is None:
            return root.read_dir(path)
        return sorted(os.listdir(_safe_join(root, path)))

    def resolve_image_config(self, ref: str, platform: str | None = None) -> tuple[str, dict]:
        """``(manifest digest, image config)`` of a registry image or ``oci-layout://ID@DIGEST``."""
        if ref.startswith("oci-layout://"):
            from pybk.core.images.layout import read_oci_layout

            store_id, _, digest = ref[len("oci-layout://"):].partition("@")
            layout = self.oci_layouts.get(store_id)
            if layout is None:
                raise UsageError(f"no OCI layout named {store_id!r}", flag="--build-context")
            image = read_oci_layout(layout, digest or "latest", platform=platform)
            return image.digest, dict(image.config)
        if self.image_resolve_mode != "pull":
            local = self._stored_image(ref, platform)
            if local is not None:
                return local
        import asyncio

        from pybk.core.registry.client import RegistryClient
        from pybk.core.store.content import ContentStore

        async def resolve() -> tuple[str, dict]:
            store_root = self.client.root if self.client is not None else None
            content = ContentStore(store_root) if store_root else None
            async with RegistryClient(dict(self.config.registry), content) as registry:
                resolved = await registry.resolve(ref, platform)
                self.resolved_images[(ref, platform)] = resolved
                return resolved.manifest_digest, dict(resolved.config)

        return asyncio.run(resolve())

    def build_platforms(self) -> list[str]:
        """The selected worker's platforms (``[worker.oci] platforms``, else the host's)."""
        if self.client is None:
            return super().build_platforms()
        try:
            return list(self.client.selected_worker().platforms()) or super().build_platforms()
        except PybkError:  # no worker to build with: the build says so when it solves
            return super().build_platforms()

    def _stored_image(self, ref: str, platform: str | None) -> tuple[str, dict] | None:
        """``(digest, config)`` of ``ref`` in the local image store (for ``platform``), or
        None (not there, or not for that platform: the registry is asked)."""
        if self.client is None:
            return None
        from pybk.core.images.store import LocalImages

        try:
            image = LocalImages(self.client.root).lookup(ref, platform)
        except PybkError:
            return None
        return None if image is None else (image.digest, dict(image.config))

    def solve(self, definition: Any) -> Any:
        if self.client is None:
            raise UsageError("this bridge has no engine to solve with")
        return self.client.solve(definition, local_dirs=self.local_dirs,
                                 oci_layouts=self.oci_layouts, progress=None)

    def warn(self, message: str, *, location: Any = None) -> None:
        self.warnings.append(message)

    def new_container(self, image: Any, *, name: str) -> Any:
        if self.client is None:
            raise UnsupportedOperation("this bridge has no engine to run containers")
        from pybk.core.engine.frontendrun import open_container

        return open_container(self.client, image, name=name, progress=self.progress,
                              entitlements=self.entitlements)

    def solve_frontend(self, name: str, opts: Mapping[str, str]) -> FrontendResult:
        from pybk.core.engine.resolve import plugin_class, plugin_errors

        frontend_cls = plugin_class("frontend", name)
        with plugin_errors("frontend", name):
            return frontend_cls().solve(FrontendRequest(opts=dict(opts)), self)


def _layout_digest(layout: str, ref: str) -> str:
    """The digest in an OCI layout's index.json for ``ref`` (a tag, a digest, or empty = the
    only or ``latest`` image): an image index's own digest, so each platform of the build picks
    its manifest from it."""
    from pybk.core.images.layout import layout_descriptor

    try:
        if ref:
            return layout_descriptor(layout, ref)["digest"]
        try:
            return layout_descriptor(layout, "latest")["digest"]
        except Exception:
            import json

            with open(os.path.join(layout, "index.json")) as f:
                manifests = json.load(f).get("manifests") or []
            if len(manifests) != 1:
                raise
            return manifests[0]["digest"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"oci-layout {layout}: {exc}", flag="--build-context") from None


def source_excerpt(definition: Any, vertex: str | None, context: int = 2) -> str | None:
    """``Dockerfile:N`` and the lines around it for a failed vertex, from the definition's
    source map (None when the vertex has no location)."""
    found = source_location(definition, vertex, context)
    return found[3] if found is not None else None


def source_location(definition: Any, vertex: str | None,
                    context: int = 2) -> tuple[str, int, int, str] | None:
    """``(file name, first line, last line, excerpt)`` of a failed vertex, from the
    definition's source map (None when the vertex has no location); the excerpt is
    ``Dockerfile:N`` and the lines around it."""
    source = getattr(definition, "source", None)
    if source is None or vertex is None or vertex not in source.locations:
        return None
    for location in source.locations[vertex].locations:
        if location.source_index >= len(source.infos) or not location.ranges:
            continue
        info = source.infos[location.source_index]
        first = location.ranges[0].start.line if location.ranges[0].start else 0
        last = max((r.end.line if r.end else first) for r in location.ranges)
        lines = bytes(info.data).decode(errors="replace").splitlines()
        where = f"{info.filename}:{first}" + (f"-{last}" if last != first else "")
        width = len(str(min(last + context, len(lines))))
        rule = "-" * 20
        shown = []
        for number in range(max(first - context, 1), min(last + context, len(lines)) + 1):
            mark = ">>>" if first <= number <= last else "   "
            shown.append(f" {number:>{width}} | {mark} {lines[number - 1]}".rstrip())
        return info.filename, first, last, "\n".join([where, rule, *shown, rule])
    return None


def root_warning(config: Any, root: str | os.PathLike[str]) -> list[str]:
    """A configured ``root`` other than the store this build uses (``--root``, ``$PYBK_ROOT``
    or the default) is named: it is the store of ``pybkd`` started without ``--root``."""
    from pybk.core.paths import default_root

    if config.root == default_root() or os.path.abspath(config.root) == os.path.abspath(root):
        return []
    return [f"root: {config.root} is pybkd's store (when started without --root); this build "
            f"uses the store {root}"]


def frontend_inputs(request: BuildRequest) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(frontend opts, local dirs, OCI layouts) for a build request, BuildKit-style."""
    context = os.path.abspath(request.context)
    dockerfile = os.path.abspath(request.file) if request.file else os.path.join(context,
                                                                                "Dockerfile")
    opts: dict[str, str] = {"filename": os.path.basename(dockerfile)}
    local_dirs = {"context": context, "dockerfile": os.path.dirname(dockerfile)}
    oci_layouts: dict[str, str] = {}
    if request.target:
        opts["target"] = request.target
    for key, value in request.build_args.items():
        opts[f"build-arg:{key}"] = value
    for key, value in request.labels.items():
        opts[f"label:{key}"] = value
    if request.no_cache_filter:
        opts["no-cache"] = ",".join(request.no_cache_filter)
    elif request.no_cache:
        opts["no-cache"] = ""
    if request.pull:
        opts["image-resolve-mode"] = "pull"
    if request.network != "default":
        opts["force-network-mode"] = request.network
    if request.add_hosts:
        opts["add-hosts"] = ",".join(f"{h}={ip}" for h, ip in request.add_hosts)
    if request.ulimits:
        opts["ulimit"] = ",".join(request.ulimits)
    if request.cgroup_parent:
        opts["cgroup-parent"] = request.cgroup_parent
    for item in request.resources:
        key, _, value = item.partition("=")
        opts[key] = value
    if request.platforms:
        opts["platform"] = ",".join(request.platforms)
    for ctx in request.build_contexts:
        key = f"context:{ctx.name}"
        if ctx.kind == "local":
            local_name = ctx.name if ctx.name not in ("context", "dockerfile") else f"_{ctx.name}"
            local_dirs[local_name] = os.path.abspath(ctx.value)
            opts[key] = f"local:{local_name}"
        elif ctx.kind == "oci-layout":
            path, _, ref = ctx.value.partition("@")
            tag = ""
            if not ref:
                head, sep, maybe_tag = path.rpartition(":")
                if sep and "/" not in maybe_tag:
                    path, tag = head, maybe_tag
            digest = ref or _layout_digest(path, tag)
            oci_layouts[ctx.name] = os.path.abspath(path)
            opts[key] = f"oci-layout://{ctx.name}@{digest}"
        elif ctx.kind == "docker-image":
            opts[key] = f"docker-image://{ctx.value}"
        elif ctx.kind == "target":
            opts[key] = f"target:{ctx.value}"
        else:
            opts[key] = ctx.value
    opts.update(request.frontend_opts)
    return opts, local_dirs, oci_layouts


def entitlement_names(request: BuildRequest) -> tuple[str, ...]:
    return tuple(e.split("=", 1)[0] for e in request.entitlements)


def progress_mode(request: BuildRequest) -> str:
    return "quiet" if request.quiet else request.progress


def solve_options(request: BuildRequest, provenance: Any = None,
                  inputs: BuildInputs = LOCAL) -> dict[str, Any]:
    """The :meth:`Client.solve` arguments a build request implies (whatever the frontend):
    secrets, ssh sockets, entitlements, progress, outputs and remote caches; ``provenance``
    (a :class:`pybk.core.engine.provenance.Provenance`) goes to the exporters; ``inputs``: where
    the client's secrets and agents come from."""
    info = export_info(request, inputs)
    if provenance is not None:
        info["provenance"] = provenance
    options = {
        "secrets": inputs.secrets(request),
        "entitlements": entitlement_names(request),
        "progress": inputs.progress(progress_mode(request)),
        "outputs": list(request.outputs),
        "request": request,
        "export_info": info,
        "cache_imports": request.cache_from,
        "cache_exports": cache_exports(request),
    }
    options["ssh"] = inputs.ssh(request)  # last: agents started here are stopped by the caller
    return options


def _close_agents(options: Mapping[str, Any]) -> None:
    """Stop the SSH agents a build's key files were served by (see :meth:`BuildInputs.ssh`)."""
    close = getattr(options.get("ssh"), "close", None)
    if close is not None:
        close()


def cache_exports(request: BuildRequest) -> tuple[Any, ...]:
    """``--cache-to``, plus an inline cache when the build arg ``BUILDKIT_INLINE_CACHE`` is
    true (buildx's shorthand for ``--cache-to type=inline``)."""
    exports = tuple(request.cache_to)
    wanted = request.build_args.get("BUILDKIT_INLINE_CACHE", "").lower() in ("1", "true")
    if wanted and not any(spec.type == "inline" for spec in exports):
        exports += (CacheSpec("inline", {}),)
    return exports


def export_info(request: BuildRequest, inputs: BuildInputs = LOCAL) -> dict[str, Any]:
    """Facts exporters need from the request: ``SOURCE_DATE_EPOCH`` (build arg, else the
    client's environment)."""
    epoch = request.build_args.get("SOURCE_DATE_EPOCH") or inputs.environ("SOURCE_DATE_EPOCH")
    if not epoch:
        return {}
    try:
        return {"source_date_epoch": int(epoch)}
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be an integer, not {epoch!r}",
                         flag="--build-arg") from None


def build_provenance(request: BuildRequest, frontend: str, opts: Mapping[str, str],
                     local_names: Iterable[str], *, started: float | None = None,
                     inputs: BuildInputs = LOCAL) -> Any:
    """The build's :class:`pybk.core.engine.provenance.Provenance` when ``--provenance`` asked for
    one (None otherwise); created before solving, so its start time is the build's."""
    if request.provenance is None:
        return None
    from pybk.core.engine.provenance import Provenance
    from pybk.core.platform import host_platform

    return Provenance(
        spec=request.provenance, frontend=frontend,
        frontend_opts={k: v for k, v in opts.items() if k != "requestid"},
        locals=tuple(sorted(local_names)), secrets=tuple((s.id, False) for s in request.secrets),
        ssh=tuple(spec.id for spec in request.ssh), entry_point=opts.get("filename", ""),
        builder_platform=str(host_platform()), started=started or time.time(),
        epoch=export_info(request, inputs).get("source_date_epoch"))


def solve_frontend(name: str, frontend_cls: type, opts: dict[str, str], bridge: LocalBridge,
                   root: str) -> Any:
    """The frontend's result, from the definition cache (``pybk.core.engine.defcache``) when the
    frontend allows it and nothing it read has changed; its warnings reach ``bridge``."""
    from pybk.core.interfaces import FrontendRequest

    if not getattr(frontend_cls, "definition_cache", False) or "requestid" in opts:
        return frontend_cls().solve(FrontendRequest(opts=opts), bridge)
    from pybk.core.engine import defcache

    key = defcache.cache_key(name, frontend_cls, opts, bridge.local_dirs, bridge.oci_layouts,
                             getattr(bridge, "build_platforms", list)())
    hit = defcache.lookup(root, key, bridge)
    if hit is not None:
        for message in hit.warnings:
            bridge.warn(message)
        return hit.result
    recorder = defcache.RecordingBridge(bridge)
    result = frontend_cls().solve(FrontendRequest(opts=opts), recorder)
    defcache.store(root, key, result, recorder)
    return result


def select_frontend(request: BuildRequest, opts: dict[str, str], local_dirs: Mapping[str, Any],
                    build_file: str, config: Any, pm: Any) -> tuple[str, type, dict[str, str]]:
    """(name, class, opts) of the frontend a build request runs: ``--frontend``, else the one
    the build file's directives choose (a frontend may forward to another), with the
    ``requestid`` of ``--call`` / ``--check``."""
    try:
        head = read_input_file(local_dirs["dockerfile"], opts["filename"], length=4096)
    except OSError as exc:
        raise UsageError(f"cannot read build file {build_file}: {exc.strerror}",
                         flag="--file") from None
    directives = scan_directives(head)
    name = request.frontend or pm.hook.pybk_select_frontend(
        filename=opts["filename"], directives=directives)
    frontend_cls = plugin_class("frontend", name, pm=pm)
    forwarded = frontend_cls.forward(directives, opts, pm.frontends(), config)
    if forwarded is not None:
        name, opts = forwarded
        frontend_cls = plugin_class("frontend", name, pm=pm)
    if request.call in ("outline", "targets"):
        opts["requestid"] = f"frontend.{request.call}"
    elif request.call == "check":
        opts["requestid"] = "frontend.lint"
    return name, frontend_cls, opts


def frontend_definition(request: BuildRequest, *, root: str, config_path: str | None) -> Any:
    """The definition the frontend makes for ``request`` (as ``--print-llb`` prints it), without
    solving it; for a multi-platform build, the first platform's."""
    from pybk.core.config.loader import load_config
    from pybk.core.engine.client import Client
    from pybk.core.plugins import get_plugin_manager

    config, _ = load_config(config_path)
    opts, client_dirs, oci_layouts = frontend_inputs(request)
    build_file = os.path.join(client_dirs["dockerfile"], opts["filename"])
    pm = get_plugin_manager()
    name, frontend_cls, opts = select_frontend(request, opts, client_dirs, build_file, config, pm)
    client = Client(root=root, config=config)
    try:
        bridge = LocalBridge(image_resolve_mode=opts.get("image-resolve-mode"),
                             local_dirs=client_dirs, oci_layouts=oci_layouts, config=config,
                             client=client)
        with plugin_errors("frontend", name, pm=pm):
            result = solve_frontend(name, frontend_cls, opts, bridge, root)
    finally:
        _finish(client, collect=False)
    if result.definition is not None:
        return result.definition
    from pybk.core.engine.multiplatform import platform_graphs

    return next(iter((platform_graphs(result.metadata) or {}).values()))[0]


@_counted
def run_build(request: BuildRequest, *, root: str, config_path: str | None,
              inputs: BuildInputs = LOCAL) -> int:
    """Build ``request``; exit code. ``inputs``: where the client's directories, secrets and
    agents come from (this process's own by default)."""
    from pybk.core.config.loader import load_config
    from pybk.core.config.schema import check_entitlements
    from pybk.core.engine.client import Client
    from pybk.core.plugins import get_plugin_manager

    config, warnings = load_config(config_path)
    for warning in (*warnings, *root_warning(config, root)):
        print(f"WARNING: {warning}", file=sys.stderr)
    entitlements = check_entitlements(request.entitlements, config)
    opts, client_dirs, oci_layouts = frontend_inputs(request)
    local_dirs = inputs.local_dirs(client_dirs)
    started = time.time()
    build_file = os.path.join(client_dirs["dockerfile"], opts["filename"])
    pm = get_plugin_manager()
    name, frontend_cls, opts = select_frontend(request, opts, local_dirs, build_file, config, pm)
    client = Client(root=root, config=config)
    collect = False
    recorder = None if request.print_llb else start_record(
        root, config, started=started, frontend=name, attrs=opts,
        context=client_dirs["context"], build_file=build_file,
        explain_ref=request.explain_cache_ref)
    failure: BaseException | None = None
    location = None
    try:
        bridge = LocalBridge(image_resolve_mode=opts.get("image-resolve-mode"),
                             local_dirs=local_dirs, oci_layouts=oci_layouts, config=config,
                             client=client, entitlements=entitlements,
                             progress=inputs.progress(progress_mode(request)))
        with plugin_errors("frontend", name, pm=pm):
            result = solve_frontend(name, frontend_cls, opts, bridge, root)
        for message in bridge.warnings:
            print(f"WARNING: {message}", file=sys.stderr)
        if recorder is not None:
            recorder.frontend_warnings(bridge.warnings)
        if "requestid" in opts:
            status = int(bytes(result.metadata.get("result.statuscode", b"0")) or 0)
            text = bytes(result.metadata.get("result.txt", b"")).decode()
            if request.call_format == "json":
                if "result.json" not in result.metadata:
                    raise UsageError(f"the {name} frontend answers --call {request.call} "
                                     "with text only: format=json is not available",
                                     flag="--call")
                # as buildx prints it: the frontend's JSON and a newline
                text = bytes(result.metadata["result.json"]).decode() + "\n"
            (sys.stderr if status else sys.stdout).write(text)
            if status:  # recorded as a failed build (lint errors: --check)
                failure = BuildError(text.strip().split("\n", 1)[0] or f"status {status}")
            return status
        if request.print_llb:
            from pybk.core.llb.dump import dump_llb

            sys.stdout.write(dump_llb(result.definition.to_bytes()))
            return 0
        from pybk.core.engine.multiplatform import platform_graphs

        graphs = platform_graphs(result.metadata)
        provenance = build_provenance(request, name, opts, local_dirs, started=started,
                                      inputs=inputs)
        options = solve_options(request, provenance, inputs)
        if recorder is not None:
            recorder.secrets = options["secrets"]
        try:
            if graphs is None:
                solved = client.solve(
                    result.definition, local_dirs=local_dirs, oci_layouts=oci_layouts,
                    no_cache=request.no_cache and not request.no_cache_filter,
                    image_config=result.image_config, resolved_images=bridge.resolved_images,
                    history=recorder, **options)
            else:
                solved = client.solve_platforms(
                    graphs, local_dirs=local_dirs, oci_layouts=oci_layouts,
                    no_cache=request.no_cache and not request.no_cache_filter,
                    resolved_images=bridge.resolved_images, history=recorder, **options)
        except BuildError as exc:
            vertex = getattr(exc, "vertex", None)
            definitions = [result.definition] if graphs is None else [
                definition for definition, _ in graphs.values()]
            location = next(filter(None, (source_location(d, vertex) for d in definitions)),
                            None)
            if location is None:
                raise
            raise SolveError(f"{exc}\n{location[3]}", vertex=vertex) from None
        finally:
            _close_agents(options)
        record_outputs(recorder, request, solved, provenance)
        inputs.finish_outputs(request, solved)
        collect = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            end_record(recorder, failure, location, explain=request.explain_cache)
        finally:
            _finish(client, collect=collect)
    return 0


def start_record(root: str, config: Any, *, started: float, frontend: str,
                 attrs: Mapping[str, str], context: str, build_file: str,
                 explain_ref: str | None = None) -> Any:
    """The build's history record (:class:`pybk.core.history.recorder.Recorder`), kept as
    ``[history]`` says; ``explain_ref``: the record its cache misses are explained against
    (the previous build of the same target by default)."""
    from pybk.core.history.recorder import Recorder

    recorder = Recorder(root, max_age=float(config.history.max_age),
                        max_entries=config.history.max_entries)
    recorder.created_at = started
    recorder.frontend = frontend
    recorder.frontend_attrs = dict(attrs)
    recorder.context = context
    recorder.dockerfile = build_file
    if explain_ref is not None:
        recorder.compare_ref = recorder.store.resolve(explain_ref)
    return recorder


def record_outputs(recorder: Any, request: BuildRequest, solved: Any, provenance: Any) -> None:
    """The outputs (and the provenance, when one was made) of a solved build, for its record."""
    if recorder is None:
        return
    recorder.outputs(request.outputs, list(solved.metadata.get("exporter.responses", ())))
    if provenance is not None:
        recorder.add_provenance(provenance, solved)


def end_record(recorder: Any, failure: BaseException | None, location: Any, *,
               explain: bool = False) -> None:
    """Write the build's history record; a record that cannot be written is a warning, never
    the build's failure. ``explain``: then print each step's cache state (``--explain-cache``)."""
    if recorder is None:
        return
    try:
        recorder.finish(failure, location=location)
    except Exception as exc:  # noqa: BLE001 - the build's outcome stands
        print(f"WARNING: the build's history record was not written: {exc}", file=sys.stderr)
    report = recorder.cache_report() if explain else None
    if report is not None and report["steps"]:  # a check or an outline builds nothing
        from pybk.core.history.explain import cache_table

        sys.stderr.write("\n" + "\n".join(cache_table(report)) + "\n")
        sys.stderr.flush()


@_counted
def run_llb_build(data: bytes, request: BuildRequest, *, root: str, config_path: str | None,
                  inputs: BuildInputs = LOCAL) -> int:
    """``pybk build --llb FILE|-``: solve a marshalled definition. The context (if given) is the
    local ``context``; ``--build-context`` adds locals and OCI layouts."""
    from pybk.core.config.loader import load_config
    from pybk.core.config.schema import check_entitlements
    from pybk.core.engine.client import Client
    from pybk.core.llb.definition import Definition

    config, warnings = load_config(config_path)
    for warning in (*warnings, *root_warning(config, root)):
        print(f"WARNING: {warning}", file=sys.stderr)
    check_entitlements(request.entitlements, config)
    definition = Definition.from_bytes(data, filename=request.llb)
    local_dirs: dict[str, str] = {}
    oci_layouts: dict[str, str] = {}
    if request.context:
        local_dirs["context"] = request.context
        local_dirs["dockerfile"] = (os.path.dirname(os.path.abspath(request.file))
                                    if request.file else request.context)
    for ctx in request.build_contexts:
        if ctx.kind == "local":
            local_dirs[ctx.name] = ctx.value
        elif ctx.kind == "oci-layout":
            oci_layouts[ctx.name] = ctx.value.split("@", 1)[0]
    client = Client(root=root, config=config)
    collect = False
    recorder = start_record(root, config, started=time.time(), frontend="", attrs={},
                            context=os.path.abspath(request.context) if request.context else "",
                            build_file=request.llb or "",
                            explain_ref=request.explain_cache_ref)
    failure: BaseException | None = None
    try:
        provenance = build_provenance(request, "", {}, local_dirs, inputs=inputs)
        options = solve_options(request, provenance, inputs)
        recorder.secrets = options["secrets"]
        try:
            result = client.solve(definition, local_dirs=inputs.local_dirs(local_dirs),
                                  oci_layouts=oci_layouts, no_cache=request.no_cache,
                                  history=recorder, **options)
        finally:
            _close_agents(options)
        record_outputs(recorder, request, result, provenance)
        inputs.finish_outputs(request, result)
        collect = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            end_record(recorder, failure, None, explain=request.explain_cache)
        finally:
            _finish(client, collect=collect)
    return 0
