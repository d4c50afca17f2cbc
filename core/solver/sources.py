"""Fetchers for the git, http(s) and oci-layout sources.

- git: the git CLI, with a bare repository per URL under a cache directory (fetches are shallow
  and incremental, one at a time per repository); the checkout is written without touching the
  cache's HEAD or index; ``checksum`` (a commit sha prefix) is verified.
- http(s): httpx, streamed to a temporary file while hashing; ``checksum`` is verified; ETags
  let an unchanged remote file be reused without downloading it again.
- oci-layout: an image found in an OCI image layout directory by tag or digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from pybk.core.errors import BuildError
from pybk.core.platform import host_platform

__all__ = ["OCILayoutImage", "fetch_git", "fetch_http", "read_oci_layout"]

_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# git
# --------------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` without credentials."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _git(args: list[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None,
         what: str) -> str:
    full_env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ASKPASS": "true",
        "LC_ALL": "C",
        **(env or {}),
    }
    try:
        proc = subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd,
                              env=full_env, capture_output=True, text=True, umask=0o022)
    except FileNotFoundError:
        raise BuildError("git is not installed: it is needed for git sources") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise BuildError(f"{what}: {detail}")
    return proc.stdout


def _bare_cache(bare: str) -> None:
    """Create the bare repository ``bare`` unless it exists (under the repository's lock)."""
    if os.path.isdir(os.path.join(bare, "objects")):
        return
    tmp = tempfile.mkdtemp(prefix=".init-", dir=os.path.dirname(bare))
    try:
        _git(["init", "-q", "--bare", tmp], what=f"git init {bare}")
        shutil.rmtree(bare, ignore_errors=True)  # an incomplete one
        os.rename(tmp, bare)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_checksum(checksum: str, fetched: str, commit: str) -> None:
    """BuildKit's ``git.checksum``: a prefix of the fetched object (an annotated tag's object
    or the commit) or of the commit it points to."""
    want = checksum.lower()
    if fetched.startswith(want) or commit.startswith(want):
        return
    got = commit if fetched == commit else f"{fetched} or {commit}"
    raise BuildError(f"expected checksum to match {checksum}, got {got}")


def fetch_git(url: str, ref: str | None, dest_dir: str | os.PathLike[str], *,
              keep_git_dir: bool = False, subdir: str | None = None,
              checksum: str | None = None, cache_dir: str | os.PathLike[str]) -> str:
    """Check out ``ref`` (branch, tag, full commit sha, or ``None``/"" for HEAD) of ``url``.

    ``dest_dir`` (created, must be absent or empty) receives the tree — or only ``subdir`` of
    it — with ``.git`` kept when ``keep_git_dir``. ``checksum`` (``git.checksum``; empty means
    none): hex digits the fetched commit (or annotated tag object) must start with. Returns the
    commit sha.

    Fetches of one URL are serialised by a lock under ``cache_dir/locks`` (across threads and
    processes): git cannot update one shallow repository concurrently.
    """
    from pybk.core.store.locks import Locks

    checksum = checksum or None
    if checksum is not None and not re.fullmatch(r"[0-9a-fA-F]+", checksum):
        raise BuildError(f"invalid checksum {checksum} for Git URL, expected hex commit hash")
    dest = os.fspath(dest_dir)
    cache = os.fspath(cache_dir)
    os.makedirs(cache, exist_ok=True)
    shown = _redact(url)
    ref = ref or "HEAD"
    name = hashlib.sha256(url.encode()).hexdigest()[:32] + ".git"
    bare = os.path.join(cache, name)
    is_sha = bool(_SHA_RE.fullmatch(ref))

    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise BuildError(f"git checkout destination {dest} is not empty")
    parent = os.path.dirname(os.path.abspath(dest))
    work = tempfile.mkdtemp(prefix=".git-checkout-", dir=parent)
    try:
        with Locks(os.path.join(cache, "locks")).lock(name):
            _bare_cache(bare)
            # under the lock, a shallow.lock can only be left by a fetch that was killed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(bare, "shallow.lock"))
            if is_sha and _has_commit(bare, ref):
                fetched = commit = ref
            else:
                _git(["-C", bare, "fetch", "-q", "--depth=1", "--no-tags", "--force", url, ref],
                     what=f"failed to fetch {ref} from {shown}")
                fetched, commit = _git(
                    ["-C", bare, "rev-parse", "FETCH_HEAD", "FETCH_HEAD^{commit}"],
                    what=f"failed to resolve {ref} of {shown}").split()
            if checksum is not None:
                _check_checksum(checksum, fetched, commit)
            _git(["-C", bare, "update-ref", f"refs/pybk/{commit}", commit],
                 what=f"failed to record {commit} of {shown}")
            if keep_git_dir and not subdir:
                _checkout_with_git_dir(bare, url, ref, commit, work, shown)
            else:
                _checkout_tree(bare, commit, work, shown)
        source = work
        if subdir:
            source = os.path.join(work, os.path.normpath("/" + subdir).lstrip("/"))
            if os.path.islink(source) or not os.path.isdir(source):
                raise BuildError(f"subdir {subdir!r} not found in {shown} at {commit}")
        for entry in os.listdir(source):
            os.rename(os.path.join(source, entry), os.path.join(dest, entry))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return commit


def _has_commit(bare: str, sha: str) -> bool:
    try:
        _git(["-C", bare, "cat-file", "-e", f"{sha}^{{commit}}"], what="cat-file")
    except BuildError:
        return False
    return True


def _checkout_tree(bare: str, commit: str, work: str, shown: str) -> None:
    """Write the tree of ``commit`` to ``work`` using a private index file."""
    index = os.path.join(work, ".pybk-index")
    env = {"GIT_INDEX_FILE": index}
    _git(["--git-dir", bare, "read-tree", commit], env=env,
         what=f"failed to read tree {commit} of {shown}")
    _git(["--git-dir", bare, "--work-tree", work, "checkout-index", "-a", "-f"], env=env,
         what=f"failed to check out {commit} of {shown}")
    os.unlink(index)


def _checkout_with_git_dir(bare: str, url: str, ref: str, commit: str, work: str,
                           shown: str) -> None:
    """A shallow clone in ``work`` with ``origin`` = ``url`` and ``ref`` checked out."""
    what = f"failed to check out {commit} of {shown}"
    _git(["init", "-q", work], what=what)
    _git(["-C", work, "remote", "add", "origin", url], what=what)
    _git(["-C", work, "fetch", "-q", "--depth=1", "--no-tags", bare, f"refs/pybk/{commit}"],
         what=what)
    if ref != "HEAD" and not _SHA_RE.fullmatch(ref) and not ref.startswith("refs/tags/"):
        branch = ref.removeprefix("refs/heads/")
        _git(["-C", work, "checkout", "-q", "-B", branch, commit], what=what)
    else:
        _git(["-C", work, "checkout", "-q", "--detach", commit], what=what)


# --------------------------------------------------------------------------------------------
# http(s)
# --------------------------------------------------------------------------------------------


def _filename_from(url: str, content_disposition: str | None) -> str:
    if content_disposition:
        from email.message import Message

        msg = Message()
        msg["content-disposition"] = content_disposition
        name = msg.get_filename()
        if name:
            name = os.path.basename(name.replace("\\", "/"))
            if name not in ("", ".", ".."):
                return name
    path = urllib.parse.urlsplit(url).path
    base = os.path.basename(urllib.parse.unquote(path).rstrip("/")) if path else ""
    return base if base not in ("", ".", "..", "/") else "__unnamed__"


def _etag_record(etag_cache: str, url: str) -> tuple[str, dict[str, Any] | None]:
    import orjson

    path = os.path.join(etag_cache, hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")
    try:
        with open(path, "rb") as f:
            record = orjson.loads(f.read())
    except (FileNotFoundError, ValueError):
        return path, None
    blob = os.path.join(etag_cache, "blobs", record.get("digest", "").replace(":", "-"))
    return path, record if os.path.isfile(blob) else None


def fetch_http(url: str, dest_dir: str | os.PathLike[str], *, checksum: str | None = None,
               filename: str | None = None, perm: int | None = None, uid: int | None = None,
               gid: int | None = None, etag_cache: str | os.PathLike[str] | None = None,
               headers: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Download ``url`` into ``dest_dir``; returns ``(sha256 digest, file path)``.

    The name is ``filename``, else the Content-Disposition filename, else the URL's last path
    segment (``__unnamed__`` when empty). Mode ``perm`` (default 0600), owner ``uid``/``gid``
    (default 0:0), mtime from Last-Modified. ``checksum`` (``sha256:<hex>``) must match.
    ``etag_cache``: a directory remembering ETags and content, so a 304 answer reuses it.
    """
    import httpx

    if checksum is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise BuildError(f"invalid checksum {checksum!r}: expected sha256:<64 hex digits>")
    dest = os.fspath(dest_dir)
    os.makedirs(dest, exist_ok=True)
    request_headers = dict(headers or {})
    record_path = record = None
    if etag_cache is not None:
        etag_dir = os.fspath(etag_cache)
        os.makedirs(os.path.join(etag_dir, "blobs"), exist_ok=True)
        record_path, record = _etag_record(etag_dir, url)
        if record and record.get("etag"):
            request_headers["If-None-Match"] = record["etag"]

    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out, httpx.Client(follow_redirects=True, timeout=60) as client, \
                client.stream("GET", url, headers=request_headers) as resp:
            if resp.status_code == 304 and record is not None:
                digest = record["digest"]
                with open(os.path.join(etag_dir, "blobs", digest.replace(":", "-")), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                name_default = record.get("filename") or _filename_from(url, None)
                last_modified = record.get("last_modified")
                etag = record.get("etag")
            elif resp.status_code == 200:
                h = hashlib.sha256()
                for chunk in resp.iter_bytes(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                digest = "sha256:" + h.hexdigest()
                name_default = _filename_from(url, resp.headers.get("content-disposition"))
                last_modified = resp.headers.get("last-modified")
                etag = resp.headers.get("etag")
            else:
                raise BuildError(f"invalid response status {resp.status_code} for {_redact(url)}")
    except httpx.HTTPError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise BuildError(f"failed to fetch {_redact(url)}: {e}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

    if checksum is not None and digest != checksum:
        os.unlink(tmp)
        raise BuildError(f"digest mismatch for {_redact(url)}: expected {checksum}, got {digest}")
    if etag_cache is not None and etag and record_path is not None:
        _remember(os.fspath(etag_cache), record_path, tmp, digest, etag, last_modified,
                  name_default)

    name = filename or name_default
    if "/" in name or name in ("", ".", ".."):
        os.unlink(tmp)
        raise BuildError(f"invalid filename {name!r} for {_redact(url)}")
    os.chmod(tmp, 0o600 if perm is None else perm & 0o7777)
    if os.geteuid() == 0 or uid is not None or gid is not None:
        os.chown(tmp, uid or 0, gid or 0)
    if last_modified:
        from email.utils import parsedate_to_datetime

        with contextlib.suppress(TypeError, ValueError, OverflowError):
            ts = parsedate_to_datetime(last_modified).timestamp()
            os.utime(tmp, (ts, ts))
    path = os.path.join(dest, name)
    os.replace(tmp, path)
    return digest, path


def _remember(etag_dir: str, record_path: str, content: str, digest: str, etag: str,
              last_modified: str | None, filename: str) -> None:
    import orjson

    blob = os.path.join(etag_dir, "blobs", digest.replace(":", "-"))
    if not os.path.exists(blob):
        tmp_blob = f"{blob}.tmp{os.getpid()}"
        shutil.copyfile(content, tmp_blob)
        os.replace(tmp_blob, blob)
    tmp = f"{record_path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"etag": etag, "digest": digest, "last_modified": last_modified,
                              "filename": filename}))
    os.replace(tmp, record_path)


# --------------------------------------------------------------------------------------------
# oci-layout
# --------------------------------------------------------------------------------------------

_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_REF_NAME = "org.opencontainers.image.ref.name"


@attrs.frozen
class OCILayoutImage:
    """An image of an OCI layout: its manifest and config (descriptors and parsed JSON)."""

    layout_dir: str
    manifest_descriptor: dict[str, Any]
    manifest: dict[str, Any]
    config_descriptor: dict[str, Any]
    config: dict[str, Any]
    layers: list[dict[str, Any]]

    @property
    def digest(self) -> str:
        return self.manifest_descriptor["digest"]

    def blob_path(self, digest: str) -> str:
        return _blob_path(self.layout_dir, digest)


def _blob_path(layout_dir: str, digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo not in ("sha256", "sha512") or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise BuildError(f"invalid digest {digest!r}")
    return os.path.join(layout_dir, "blobs", algo, hexpart)


def _read_json_blob(layout_dir: str, descriptor: Mapping[str, Any]) -> dict[str, Any]:
    import orjson

    digest = descriptor.get("digest", "")
    path = _blob_path(layout_dir, digest)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BuildError(f"oci layout {layout_dir}: blob {digest} not found") from None
    algo = digest.partition(":")[0]
    if f"{algo}:{hashlib.new(algo, data).hexdigest()}" != digest:
        raise BuildError(f"oci layout {layout_dir}: blob {digest} does not match its digest")
    try:
        return orjson.loads(data)
    except ValueError:
        raise BuildError(f"oci layout {layout_dir}: blob {digest} is not JSON") from None


def _host_platform() -> dict[str, str]:
    return host_platform().to_dict()


def _parse_platform(value: str | Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return _host_platform()
    if isinstance(value, Mapping):
        return dict(value)
    parts = value.split("/")
    plat = {"os": parts[0], "architecture": parts[1] if len(parts) > 1 else ""}
    if len(parts) > 2:
        plat["variant"] = parts[2]
    return plat


def layout_descriptor(layout_dir: str | os.PathLike[str], ref_or_digest: str) -> dict[str, Any]:
    """The descriptor of ``ref_or_digest`` (a tag in ``org.opencontainers.image.ref.name``, or a
    digest) in the layout's index.json: an image index stays an index."""
    import orjson

    layout = os.fspath(layout_dir)
    try:
        with open(os.path.join(layout, "oci-layout"), "rb") as f:
            marker = orjson.loads(f.read())
        with open(os.path.join(layout, "index.json"), "rb") as f:
            index = orjson.loads(f.read())
    except FileNotFoundError as e:
        raise BuildError(f"{layout} is not an OCI layout: missing {os.path.basename(e.filename)}"
                         ) from None
    except ValueError:
        raise BuildError(f"{layout} is not an OCI layout: invalid JSON") from None
    if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
        raise BuildError(f"{layout} is not an OCI layout: no imageLayoutVersion")

    manifests = index.get("manifests") or []
    if ref_or_digest.startswith(("sha256:", "sha512:")):
        found = [m for m in manifests if m.get("digest") == ref_or_digest]
        descriptor = found[0] if found else _nested(layout, manifests, ref_or_digest)
    else:
        found = [m for m in manifests
                 if (m.get("annotations") or {}).get(_REF_NAME) == ref_or_digest]
        if not found:
            tags = sorted({(m.get("annotations") or {}).get(_REF_NAME) for m in manifests} - {None})
            raise BuildError(f"oci layout {layout}: no image tagged {ref_or_digest!r}"
                             + (f" (tags: {', '.join(tags)})" if tags else ""))
        descriptor = found[0]
    if descriptor is None:
        raise BuildError(f"oci layout {layout}: {ref_or_digest} not found")
    return descriptor


def read_oci_layout(layout_dir: str | os.PathLike[str], ref_or_digest: str, *,
                    platform: str | Mapping[str, str] | None = None) -> OCILayoutImage:
    """Find ``ref_or_digest`` (see :func:`layout_descriptor`) in the layout; an image index is
    resolved for ``platform`` (default: this host)."""
    layout = os.fspath(layout_dir)
    descriptor = layout_descriptor(layout, ref_or_digest)
    want = _parse_platform(platform)
    for _ in range(8):
        content = _read_json_blob(layout, descriptor)
        media_type = descriptor.get("mediaType") or content.get("mediaType")
        if media_type not in _INDEX_TYPES and "manifests" not in content:
            break
        descriptor = _select_platform(layout, content.get("manifests") or [], want)
    else:
        raise BuildError(f"oci layout {layout}: image indexes nested too deeply")

    config_descriptor = content.get("config")
    if not isinstance(config_descriptor, dict):
        raise BuildError(f"oci layout {layout}: {descriptor.get('digest')} is not an image "
                         "manifest")
    return OCILayoutImage(
        layout_dir=layout,
        manifest_descriptor=dict(descriptor),
        manifest=content,
        config_descriptor=config_descriptor,
        config=_read_json_blob(layout, config_descriptor),
        layers=list(content.get("layers") or []),
    )


def _nested(layout: str, manifests: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
    """A descriptor for ``digest`` found inside an index listed in index.json, or the blob."""
    for m in manifests:
        if m.get("mediaType") in _INDEX_TYPES:
            for child in _read_json_blob(layout, m).get("manifests") or []:
                if child.get("digest") == digest:
                    return child
    path = _blob_path(layout, digest)
    if os.path.isfile(path):
        return {"digest": digest, "size": os.path.getsize(path)}
    return None


def _select_platform(layout: str, manifests: list[dict[str, Any]],
                     want: Mapping[str, str]) -> dict[str, Any]:
    def matches(m: dict[str, Any]) -> bool:
        plat = m.get("platform") or {}
        if plat.get("os") != want.get("os") or plat.get("architecture") != want.get(
                "architecture"):
            return False
        return not want.get("variant") or plat.get("variant") in (None, want["variant"])

    for m in manifests:
        if matches(m):
            return m
    available = sorted("/".join(filter(None, (p.get("os"), p.get("architecture"),
                                                p.get("variant"))))
                       for p in (m.get("platform") or {} for m in manifests))
    wanted = "/".join(filter(None, (want.get("os"), want.get("architecture"),
                                    want.get("variant"))))
    raise BuildError(f"oci layout {layout}: no image for platform {wanted}"
                     + (f" (available: {', '.join(available)})" if available else ""))
