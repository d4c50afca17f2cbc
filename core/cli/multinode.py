"""One multi-platform build over several nodes of a builder, merged into one image index.

``pybk build --builder NAME --platform linux/amd64,linux/arm64`` sends each platform to a node
that runs it natively — a node created with ``--platform`` naming it (``pybk builder create …
--platform linux/arm64``), the first such node that answers in rendezvous order — and the
platforms no node names to the node sticky routing chooses. When that is more than one node,
each node builds its platforms (``pybk --addr NODE build --platform …``, run in parallel, its
progress lines prefixed with the node's name) and the results are put together here, as buildx
does:

- ``--push`` / ``-o type=image,push=true`` / ``type=registry``: each node pushes its manifests by
  digest (``push-by-digest=true``) and this process pushes an image index naming all of them
  under every name (the manifests of an index a node pushed — attestations included — are
  taken over as they are);
- ``-o type=oci,dest=F``: each node's OCI tarball comes here; one tarball with every blob and an
  index of every platform is written to F;
- ``-o type=local,dest=DIR`` and ``-o type=tar``: split by platform (``DIR/linux_amd64/…``), as
  a multi-platform build on one node writes them;
- no output: each node builds (and keeps its cache).

``--metadata-file`` and ``--iidfile`` get the index's digest. An image kept in a node's store
(``type=image`` without push), ``type=docker`` and ``--load`` are refused: a node's store cannot
hold another node's manifests, and a docker tarball holds one platform.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from pybk.core.errors import BuildError, UsageError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
#: an output attribute prefix this process applies to the index it makes (not sent to nodes)
INDEX_ANNOTATION = "annotation-index."
#: build flags this module sets itself for each node (their values come from the merge)
_REPLACED = ("--platform", "--output", "-o", "--push", "--load", "--tag", "-t",
             "--metadata-file", "--iidfile", "--progress")


class Group:
    """The platforms one node builds."""

    __slots__ = ("node", "platforms")

    def __init__(self, node: Any, platforms: list[str]):
        self.node, self.platforms = node, platforms


def plan(builder: Any, platforms: Sequence[str], order: Sequence[Any],
         health: Callable[[Any], str | None], sticky: Callable[[], Any],
         out: IO[str]) -> list[Group]:
    """Which node builds which platform: a node whose configured platforms name it (the first
    one that answers in ``order``, the build's rendezvous order), else the sticky node."""
    answers: dict[str, str | None] = {}
    groups: dict[str, Group] = {}
    fallback = None
    for platform in platforms:
        chosen = None
        for node in order:
            if platform not in node.platforms:
                continue
            if node.name not in answers:
                answers[node.name] = health(node)
                if answers[node.name] is not None:
                    print(f"builder {builder.name}: node {node.name} ({node.endpoint}) did not "
                          f"answer ({answers[node.name]}); {platform} goes to another node",
                          file=out)
            if answers[node.name] is None:
                chosen = node
                break
        if chosen is None:
            fallback = fallback or sticky()
            chosen = fallback
        groups.setdefault(chosen.name, Group(chosen, [])).platforms.append(platform)
    return list(groups.values())


# -- the outputs ----------------------------------------------------------------------------

class Output:
    """What the merged build writes: ``kind`` is push, oci, local, tar or none."""

    __slots__ = ("attrs", "kind", "names")

    def __init__(self, kind: str, attrs: dict[str, str], names: list[str]):
        self.kind, self.attrs, self.names = kind, attrs, names


def classify(outputs: Sequence[Any]) -> Output:
    """The one output of a build spread over nodes (UsageError for what cannot be merged)."""
    if len(outputs) > 1:
        raise UsageError("a build over several nodes takes one output", flag="--output")
    if not outputs:
        return Output("none", {}, [])
    spec = outputs[0]
    attrs = dict(spec.attrs)
    names = [n for n in attrs.get("name", "").split(",") if n]
    if spec.load or spec.type == "docker":
        raise UsageError("a docker tarball holds one platform: a build over several nodes "
                         "cannot be loaded; push it, or use -o type=oci", flag="--output")
    if spec.type == "image":
        if attrs.get("push", "false").lower() != "true":
            raise UsageError("an image of a build over several nodes cannot stay in the nodes' "
                             "stores: push it (push=true), or use -o type=oci", flag="--output")
        return Output("push", attrs, names)
    if spec.type == "oci":
        if attrs.get("tar", "true").lower() == "false":
            raise UsageError("type=oci,tar=false is not merged across nodes; use the tarball",
                             flag="--output")
        return Output("oci", attrs, names)
    if spec.type in ("local", "tar"):
        if attrs.get("platform-split", "true").lower() == "false":
            raise UsageError("platform-split=false would put every node's files in one place",
                             flag="--output")
        return Output(spec.type, attrs, names)
    raise UsageError(f"type={spec.type} is not merged across nodes (image with push, oci, "
                     "local or tar are)", flag="--output")


def _csv(attrs: dict[str, str]) -> str:
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(f"{k}={v}" for k, v in attrs.items())
    return line.getvalue()


def split_name(platform: str) -> str:
    """A platform's subdirectory in a split output: ``linux/arm64/v8`` → ``linux_arm64_v8``."""
    return platform.replace("/", "_")


def node_output(output: Output, group: Group, scratch: str, index: int
                ) -> tuple[list[str], str | None]:
    """``(the -o flags of node number index, the file its result lands in)``. A node of one
    platform writes a local output into that platform's subdirectory (a node of several
    splits its own)."""
    attrs = {k: v for k, v in output.attrs.items()
             if k not in ("type", "dest", "platform-split")}
    if output.kind == "none":
        return [], None
    if output.kind == "push":
        attrs.update({"push": "true", "push-by-digest": "true"})
        return ["-o", _csv({"type": "image", **attrs})], None
    if output.kind == "local":
        dest = output.attrs["dest"]
        if len(group.platforms) == 1:
            dest = os.path.join(dest, split_name(group.platforms[0]))
        return ["-o", _csv({"type": "local", "dest": dest, **attrs})], None
    path = os.path.join(scratch, f"node{index}.tar")
    return ["-o", _csv({"type": output.kind, "dest": path, **attrs})], path


def strip_flags(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``args`` (after ``build``) without the flags :data:`_REPLACED` names."""
    takes_value = {opt for action in parser._actions for opt in action.option_strings
                   if action.nargs != 0}
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            out.append(arg)
            i += 1
            continue
        if arg.startswith("--"):
            name, inline = arg.partition("=")[0], "=" in arg
        else:
            name, inline = arg[:2], len(arg) > 2
        width = 2 if name in takes_value and not inline else 1
        if name not in _REPLACED:
            out += args[i:i + width]
        i += width
    return out


# -- running the nodes ----------------------------------------------------------------------

class _NodeRun:
    def __init__(self, group: Group, argv: list[str], env: dict[str, str]):
        self.group = group
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env)
        self.threads = [threading.Thread(target=self._copy, args=(stream, target), daemon=True)
                        for stream, target in ((self.process.stdout, sys.stdout),
                                               (self.process.stderr, sys.stderr))]
        for thread in self.threads:
            thread.start()

    def _copy(self, stream: IO[bytes], target: IO[str]) -> None:
        prefix = f"[{self.group.node.name} {','.join(self.group.platforms)}] "
        for raw in stream:
            line = raw.decode(errors="replace")
            with _PRINT:
                target.write(prefix + line if target is sys.stderr else line)
                target.flush()

    def wait(self) -> int:
        code = self.process.wait()
        for thread in self.threads:
            thread.join()
        return code


_PRINT = threading.Lock()


def platform_caches(build_args: list[str], project: str | None, group: Group) -> list[str]:
    """``build_args`` with the cache name a builder gave the project (``name=``/``scope=``
    ``project``, :func:`pybk.core.cli.builders.project_cache_name`) made the group's own
    (``PROJECT-linux-arm64``): nodes exporting one name at once would each replace the
    other's records. Names given on the command line are kept as they are."""
    if project is None:
        return build_args
    suffix = "-".join(split_name(p).replace("_", "-") for p in group.platforms)
    out, cache_value = [], False
    for arg in build_args:
        if cache_value or arg.startswith(("--cache-from=", "--cache-to=")):
            for key in ("name", "scope"):
                arg = arg.replace(f"{key}={project}", f"{key}={project}-{suffix}")
        out.append(arg)
        cache_value = arg in ("--cache-from", "--cache-to")
    return out


def run_groups(groups: Sequence[Group], build_args: list[str], output: Output, scratch: str,
               progress: str, project: str | None = None) -> list[str | None]:
    """Run each group's build on its node; the file each node's result landed in. The first
    failure stops the others (interrupted as Ctrl-C would) and is raised."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYBK_HOST", "BUILDKIT_HOST", "PYBK_BUILDER")}
    runs, files = [], []
    for index, group in enumerate(groups):
        flags, path = node_output(output, group, scratch, index)
        files.append(path)
        meta = os.path.join(scratch, f"node{index}.json")
        tls = [x for key, value in group.node.tls.items() for x in (key, value)]
        argv = [sys.executable, "-m", "pybk.core.cli.entry", "--addr", group.node.endpoint,
                *tls, "build", "--progress", progress, "--platform", ",".join(group.platforms),
                "--metadata-file", meta, *flags, *platform_caches(build_args, project, group)]
        runs.append(_NodeRun(group, argv, env))
    failed: tuple[_NodeRun, int] | None = None
    pending = list(runs)
    while pending:
        for run in list(pending):
            try:
                code = run.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            pending.remove(run)
            if code != 0 and failed is None:
                failed = (run, code)
                for other in pending:
                    with contextlib.suppress(ProcessLookupError):
                        other.process.send_signal(signal.SIGINT)
    for run in runs:
        run.wait()
    if failed is not None:
        run, code = failed
        raise _NodeFailed(f"node {run.group.node.name} ({run.group.node.endpoint}) failed "
                          f"building {','.join(run.group.platforms)} (exit {code})", code)
    return files


class _NodeFailed(BuildError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def node_metadata(scratch: str, index: int) -> dict[str, Any]:
    try:
        with open(os.path.join(scratch, f"node{index}.json"), "rb") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# -- merging ---------------------------------------------------------------------------------

def _blob_name(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def flatten(descriptor: dict[str, Any], read: Callable[[str], bytes]) -> list[dict[str, Any]]:
    """The manifests one node's result gives the merged index: an index's manifests as they
    are (attestations included), a manifest with its platform (read from its config when the
    descriptor has none)."""
    if descriptor.get("mediaType") in (OCI_INDEX, DOCKER_LIST):
        return [dict(m) for m in json.loads(read(descriptor["digest"])).get("manifests", [])]
    desc = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
    platform = descriptor.get("platform")
    if not platform:
        manifest = json.loads(read(descriptor["digest"]))
        config = json.loads(read(manifest["config"]["digest"]))
        platform = {"architecture": config.get("architecture", ""), "os": config.get("os", "")}
        if config.get("variant"):
            platform["variant"] = config["variant"]
    desc["platform"] = platform
    return [desc]


def _platform_key(desc: dict[str, Any]) -> str:
    p = desc.get("platform") or {}
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def make_index(parts: list[dict[str, Any]], platforms: Sequence[str],
               annotations: dict[str, str]) -> bytes:
    """The merged index: image manifests in the order the platforms were asked, then the
    attestation manifests (BuildKit's order)."""
    rank = {p: i for i, p in enumerate(platforms)}

    def order(desc: dict[str, Any]) -> tuple[int, int]:
        attestation = "vnd.docker.reference.type" in (desc.get("annotations") or {})
        return (attestation, rank.get(_platform_key(desc), len(rank)))

    seen: set[str] = set()
    manifests = []
    for desc in sorted(parts, key=order):
        if desc["digest"] not in seen:
            seen.add(desc["digest"])
            manifests.append(desc)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    if annotations:
        index["annotations"] = annotations
    return json.dumps(index, separators=(",", ":")).encode()


def index_annotations(attrs: dict[str, str]) -> dict[str, str]:
    return {k[len(INDEX_ANNOTATION):]: v for k, v in attrs.items()
            if k.startswith(INDEX_ANNOTATION)}


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def merge_oci(files: Sequence[str], output: Output, platforms: Sequence[str]
              ) -> dict[str, Any]:
    """One OCI tarball of every node's blobs and an index of all their manifests, written to
    the output's ``dest``; the index's descriptor."""
    from pybk.core.images.store import NAME_ANNOTATION, REF_NAME_ANNOTATION
    from pybk.core.registry import parse_reference

    parts: list[dict[str, Any]] = []
    mtime = 0
    for path in files:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}

            def read(digest: str, tar: tarfile.TarFile = tar,
                     members: dict[str, tarfile.TarInfo] = members) -> bytes:
                member = members.get(_blob_name(digest))
                if member is None:
                    raise BuildError(f"a node's tarball has no blob {digest}")
                return tar.extractfile(member).read()  # type: ignore[union-attr]

            top = json.loads(tar.extractfile(members["index.json"]).read())  # type: ignore[union-attr]
            mtime = max(mtime, members["index.json"].mtime)
            if not top.get("manifests"):
                raise BuildError(f"{path}: the node's tarball has an empty index")
            parts += flatten(top["manifests"][0], read)
    index = make_index(parts, platforms, index_annotations(output.attrs))
    digest = _sha256(index)
    descriptor = {"mediaType": OCI_INDEX, "digest": digest, "size": len(index)}
    entries = []
    for name in output.names or [""]:
        entry = dict(descriptor)
        if name:
            ref = parse_reference(name)
            entry["annotations"] = {NAME_ANNOTATION: name,
                                    **({REF_NAME_ANNOTATION: ref.tag} if ref.tag else {})}
        entries.append(entry)
    layout = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                        separators=(",", ":")).encode()

    def write(out: IO[bytes]) -> None:
        written: set[str] = set()
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as merged:
            def data(name: str, payload: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o644, mtime
                merged.addfile(info, io.BytesIO(payload))

            data("oci-layout", OCI_LAYOUT)
            for directory in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                merged.addfile(info)
            for path in files:
                with tarfile.open(path) as tar:
                    for member in tar:
                        if member.isfile() and member.name.startswith("blobs/") and \
                                member.name not in written:
                            written.add(member.name)
                            merged.addfile(member, tar.extractfile(member))
            data(_blob_name(digest), index)
            data("index.json", layout)

    _write_dest(output.attrs.get("dest", "-"), write)
    return descriptor


def merge_tar(files: Sequence[tuple[Group, str]], output: Output) -> None:
    """The nodes' tarballs as one split by platform (``linux_amd64/…``): a node of one
    platform wrote its files at the top, a node of several split them itself."""
    def write(out: IO[bytes]) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as merged:
            for group, path in files:
                prefix = split_name(group.platforms[0]) if len(group.platforms) == 1 else ""
                if prefix:
                    top = tarfile.TarInfo(prefix)
                    top.type, top.mode = tarfile.DIRTYPE, 0o755
                    merged.addfile(top)
                with tarfile.open(path) as tar:
                    for member in tar:
                        if prefix:
                            name = member.name.lstrip("./").lstrip("/")
                            if not name:
                                continue
                            member.name = f"{prefix}/{name}"
                            if member.islnk():
                                member.linkname = f"{prefix}/{member.linkname.lstrip('./')}"
                        merged.addfile(member, tar.extractfile(member) if member.isfile()
                                       else None)

    _write_dest(output.attrs.get("dest", "-"), write)


def _write_dest(dest: str, write: Callable[[IO[bytes]], None]) -> None:
    if dest == "-":
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    from pybk.core.fs.files import output_file

    with output_file(dest) as out:
        write(out)


def merge_push(metadata: Sequence[dict[str, Any]], output: Output,
               platforms: Sequence[str]) -> dict[str, Any]:
    """Push an index of the manifests each node pushed by digest under every name; its
    descriptor. The registry is reached with this user's Docker credentials."""
    import asyncio

    from pybk.core.registry import parse_reference
    from pybk.core.registry.client import Descriptor, RegistryClient

    async def push() -> dict[str, Any]:
        async with RegistryClient({}) as client:
            descriptor: dict[str, Any] = {}
            for name in output.names:
                ref = parse_reference(name)
                parts: list[dict[str, Any]] = []
                for meta in metadata:
                    desc = meta.get("containerimage.descriptor")
                    if not isinstance(desc, dict):
                        raise BuildError("a node answered no image descriptor for its push")
                    pushed = f"{ref.domain}/{ref.path}@{desc['digest']}"
                    blobs: dict[str, bytes] = {}
                    nested = desc.get("mediaType") in (OCI_INDEX, DOCKER_LIST)
                    if nested or not desc.get("platform"):
                        blobs[desc["digest"]] = (await client.get_manifest(pushed))[2]
                    if not nested and not desc.get("platform"):
                        config = json.loads(blobs[desc["digest"]])["config"]
                        blobs[config["digest"]] = await client.fetch_blob_bytes(
                            pushed, Descriptor.from_dict(config))
                    parts += flatten(desc, blobs.__getitem__)
                index = make_index(parts, platforms, index_annotations(output.attrs))
                digest = await client.push_manifest(name if ref.tag else f"{name}:latest",
                                                    index, OCI_INDEX)
                descriptor = {"mediaType": OCI_INDEX, "digest": digest, "size": len(index)}
            return descriptor

    return asyncio.run(push())


def write_results(request: Any, descriptor: dict[str, Any] | None, names: Sequence[str]) -> None:
    """``--metadata-file`` and ``--iidfile`` of the merged build."""
    if descriptor is None:
        return
    if request.metadata_file:
        data = {"containerimage.digest": descriptor["digest"],
                "containerimage.descriptor": descriptor}
        if names:
            data["image.name"] = ",".join(names)
        with open(request.metadata_file, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    if request.iidfile:
        with open(request.iidfile, "w") as f:
            f.write(descriptor["digest"])


def run(builder: Any, groups: Sequence[Group], ns: argparse.Namespace,
        parser: argparse.ArgumentParser, build_args: list[str],
        project: str | None = None) -> int:
    """Build ``groups`` on their nodes and merge the results (see the module's docstring)."""
    from pybk.core.cli.commands import parse_build_request

    request = parse_build_request(ns, plugins=False)
    output = classify(request.outputs)
    if output.kind == "push" and not output.names:
        raise UsageError("push needs name= (or -t)", flag="--output")
    platforms = [p for g in groups for p in g.platforms]
    asked = [str(p) for p in request.platforms]
    print(f"builder {builder.name}: " + "; ".join(
        f"{','.join(g.platforms)} on node {g.node.name}" for g in groups), file=sys.stderr)
    node_attrs = {k: v for k, v in output.attrs.items() if not k.startswith(INDEX_ANNOTATION)}
    sent = Output(output.kind, node_attrs, output.names)
    progress = request.progress if request.progress in ("plain", "rawjson", "quiet") else "plain"
    scratch = tempfile.mkdtemp(prefix="pybk-nodes-")
    try:
        try:
            files = run_groups(groups, strip_flags(build_args, parser), sent, scratch, progress,
                               project)
        except _NodeFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.code
        descriptor = None
        if output.kind == "oci":
            descriptor = merge_oci([f for f in files if f], output, asked or platforms)
        elif output.kind == "tar":
            merge_tar([(g, f) for g, f in zip(groups, files, strict=True) if f], output)
        elif output.kind == "push":
            descriptor = merge_push([node_metadata(scratch, i) for i in range(len(groups))],
                                    output, asked or platforms)
        write_results(request, descriptor, output.names)
        if descriptor is not None:
            print(f"builder {builder.name}: index {descriptor['digest']} of "
                  f"{len(platforms)} platforms", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
