"""Source constructors of the LLB builder: scratch, images, OCI layouts, local directories,
Git repositories and HTTP files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pybk.core.errors import InputError
from pybk.core.llb.graph import Output, new_vertex
from pybk.core.llb.ops import Platform, SourceOp
from pybk.core.llb.state import State, StateMeta, as_platform
from pybk.core.serialize import canonical_dumps

__all__ = ["git", "http", "image", "local", "normalize_image_ref", "oci_layout", "scratch"]


def scratch() -> State:
    """An empty filesystem."""
    return State()


def _source(
    identifier: str,
    attrs_: Mapping[str, str],
    options: dict[str, Any],
    *,
    platform: Platform | None = None,
    platform_specific: bool = False,
) -> State:
    body = SourceOp(identifier, {k: v for k, v in attrs_.items() if v is not None})
    vertex = new_vertex(body, (), options, platform=platform, platform_specific=platform_specific)
    return State(Output(vertex, 0), StateMeta(platform=platform))


_DOMAIN_RE = re.compile(r"^(localhost|[^/]*[.:][^/]*)$")
_REF_RE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}))?$"
)


def normalize_image_ref(ref: str) -> str:
    """Docker's normal form: ``alpine`` → ``docker.io/library/alpine:latest``."""
    domain, _, rest = ref.partition("/")
    if not rest or not _DOMAIN_RE.match(domain):
        domain, rest = "docker.io", ref
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in rest:
        rest = "library/" + rest
    match = _REF_RE.match(rest)
    if not match:
        raise InputError(f"invalid image reference {ref!r}")
    if not match.group("tag") and not match.group("digest"):
        rest = match.group("name") + ":latest"
    return f"{domain}/{rest}"


def image(
    ref: str,
    platform: Platform | str | None = None,
    resolve_mode: str | None = None,
    *,
    layer_limit: int | None = None,
    checksum: str | None = None,
    record_type: str | None = None,
    **options: Any,
) -> State:
    """``docker-image://`` source. ``resolve_mode``: ``default``, ``pull`` or ``local``."""
    if resolve_mode not in (None, "default", "pull", "local"):
        raise ValueError(f"invalid resolve mode {resolve_mode!r} (default, pull, local)")
    attrs_ = {
        "image.resolvemode": resolve_mode if resolve_mode not in (None, "default") else None,
        "image.layerlimit": str(layer_limit) if layer_limit is not None else None,
        "image.checksum": checksum,
        "image.recordtype": record_type,
    }
    return _source(
        "docker-image://" + normalize_image_ref(ref),
        attrs_,
        options,
        platform=as_platform(platform),
        platform_specific=True,
    )


def oci_layout(
    ref: str,
    *,
    store_id: str | None = None,
    session_id: str | None = None,
    layer_limit: int | None = None,
    platform: Platform | str | None = None,
    **options: Any,
) -> State:
    """``oci-layout://<ref>@<digest>`` source from a client-side OCI layout store."""
    attrs_ = {
        "oci.store": store_id,
        "oci.session": session_id,
        "oci.layerlimit": str(layer_limit) if layer_limit is not None else None,
    }
    return _source(
        "oci-layout://" + ref, attrs_, options, platform=as_platform(platform), platform_specific=True
    )


def _json_list(values: Iterable[str] | None) -> str | None:
    values = list(values or ())
    return canonical_dumps(values).decode() if values else None


def local(
    name: str,
    *,
    include_patterns: Iterable[str] | None = None,
    exclude_patterns: Iterable[str] | None = None,
    follow_paths: Iterable[str] | None = None,
    shared_key_hint: str | None = None,
    session_id: str | None = None,
    differ: str | None = None,
    **options: Any,
) -> State:
    """``local://<name>``: a directory sent by the client (the build context, a named local)."""
    attrs_ = {
        "local.includepattern": _json_list(include_patterns),
        "local.excludepatterns": _json_list(exclude_patterns),
        "local.followpaths": _json_list(follow_paths),
        "local.sharedkeyhint": shared_key_hint,
        "local.session": session_id,
        "local.differ": differ,
    }
    return _source("local://" + name, attrs_, options)


_SCP_RE = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>[^/].*)$")


def git(
    url: str,
    ref: str | None = None,
    keep_git_dir: bool = False,
    *,
    subdir: str | None = None,
    checksum: str | None = None,
    auth_header_secret: str | None = None,
    auth_token_secret: str | None = None,
    known_ssh_hosts: str | None = None,
    mount_ssh_sock: str | None = None,
    skip_submodules: bool = False,
    **options: Any,
) -> State:
    """``git://<host>/<path>[#ref[:subdir]]``; ``git.fullurl`` keeps the URL's transport."""
    full_url = None
    remote = url
    scheme, sep, rest = url.partition("://")
    is_http = is_ssh = False
    if sep:
        full_url = url
        remote = rest.split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
        is_http = scheme in ("http", "https")
        is_ssh = scheme == "ssh"
    elif m := _SCP_RE.match(url):
        full_url = url
        remote = f"{m.group('host')}/{m.group('path')}"
        is_ssh = True
    identifier = "git://" + remote
    if ref or subdir:
        identifier += "#" + (ref or "")
        if subdir:
            identifier += ":" + subdir
    attrs_: dict[str, str | None] = {
        "git.fullurl": full_url,
        "git.keepgitdir": "true" if keep_git_dir else None,
        "git.checksum": checksum,
        "git.knownsshhosts": known_ssh_hosts,
        # BuildKit: an SSH remote is fetched with the build's "default" agent unless told
        "git.mountsshsock": mount_ssh_sock or ("default" if is_ssh else None),
        "git.skipsubmodules": "true" if skip_submodules else None,
    }
    if is_http:
        attrs_["git.authheadersecret"] = auth_header_secret or "GIT_AUTH_HEADER"
        attrs_["git.authtokensecret"] = auth_token_secret or "GIT_AUTH_TOKEN"
    return _source(identifier, attrs_, options)


def http(
    url: str,
    checksum: str | None = None,
    filename: str | None = None,
    perm: int | None = None,
    *,
    uid: int | None = None,
    gid: int | None = None,
    auth_header_secret: str | None = None,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> State:
    """``http(s)://`` source: one file (``filename``, mode ``perm``) in an otherwise empty tree."""
    attrs_: dict[str, str | None] = {
        "http.checksum": checksum,
        "http.filename": filename,
        "http.perm": str(perm) if perm is not None else None,
        "http.uid": str(uid) if uid is not None else None,
        "http.gid": str(gid) if gid is not None else None,
        "http.authheadersecret": auth_header_secret,
    }
    for key, value in (headers or {}).items():
        attrs_[f"http.header.{key}"] = value
    return _source(url, attrs_, options)
