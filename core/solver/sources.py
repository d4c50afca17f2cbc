"""Fetchers for the git and http(s) sources.

- git: the git CLI, with a bare repository per URL under a cache directory (fetches are shallow
  and incremental, one at a time per repository); the checkout is written without touching the
  cache's HEAD or index; ``checksum`` (a commit sha prefix) is verified.
- http(s): httpx, streamed to a temporary file while hashing; ``checksum`` is verified; ETags
  let an unchanged remote file be reused without downloading it again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from pybk.core.errors import BuildError
from pybk.core.fs.files import private_dir

__all__ = ["fetch_git", "fetch_http", "git_auth", "git_source", "http_auth"]

_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# git
# --------------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` without credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # unparsable (an unclosed IPv6 bracket): drop anything before an "@"
        return url.rpartition("@")[2] if "://" in url else url
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
        raise BuildError(f"{what}: {_git_error(proc.stderr) or f'exit code {proc.returncode}'}")
    return proc.stdout


#: git's closing advice after a failed remote command (it says nothing of the cause)
_GIT_BOILERPLATE = ("fatal: Could not read from remote repository.",
                    "Please make sure you have the correct access rights",
                    "and the repository exists.")
_USERINFO = re.compile(r"(\w+://)[^/@\s']+@")


def _git_error(stderr: str) -> str:
    """What a failed git command said: its last line, or for a remote command the lines before
    git's closing advice (ssh's "Host key verification failed." …); credentials in URLs
    removed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    cause = [line for line in lines if line not in _GIT_BOILERPLATE]
    text = "; ".join(cause[-3:]) if len(cause) < len(lines) else (lines[-1] if lines else "")
    return _USERINFO.sub(r"\1", text)


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


def _secret(secrets: Mapping[str, bytes], name: str) -> bytes | None:
    try:
        return secrets[name]
    except KeyError:
        return None


def git_auth(remote: str, attrs_: Mapping[str, str], secrets: Mapping[str, bytes]
             ) -> tuple[str | None, list[str]]:
    """BuildKit's git credentials: ``(Authorization header value or None, the secret names
    looked for)``. The names come from ``git.authheadersecret`` (default ``GIT_AUTH_HEADER``,
    used as it is) and ``git.authtokensecret`` (``GIT_AUTH_TOKEN``: ``basic`` of
    ``x-access-token:TOKEN``), each first as ``NAME.HOST`` (HOST with its port) then as
    ``NAME``; the first found wins. Only for http(s) remotes."""
    parts = urllib.parse.urlsplit(remote)
    if parts.scheme not in ("http", "https"):
        return None, []
    host = parts.netloc.rpartition("@")[2]
    header, token = attrs_.get("git.authheadersecret"), attrs_.get("git.authtokensecret")
    names = [(n, is_token) for n, is_token in ((f"{header}.{host}", False),
                                               (f"{token}.{host}", True),
                                               (header, False), (token, True))
             if n and not n.startswith(".")]
    for name, is_token in names:
        value = _secret(secrets, name)
        if value is None:
            continue
        if is_token:
            encoded = base64.b64encode(b"x-access-token:" + value).decode()
            return f"basic {encoded}", [n for n, _ in names]
        return value.decode("utf-8", "replace").strip(), [n for n, _ in names]
    return None, [n for n, _ in names]


def _token_scope(remote: str) -> str:
    """Where the credentials apply: the remote (github.com: every repository, as BuildKit)."""
    for prefix in ("https://github.com/", "https://www.github.com/"):
        if remote.startswith(prefix):
            return prefix
    return remote


def _auth_env(remote: str, header: str | None) -> dict[str, str]:
    """git configuration through the environment (never the command line, which every user
    may read): ``http.<remote>.extraheader = Authorization: …``."""
    if not header:
        return {}
    return {"GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{_token_scope(remote)}.extraheader",
            "GIT_CONFIG_VALUE_0": f"Authorization: {header}"}


_AUTH_FAILED = ("authentication failed", "could not read username", "could not read password",
                "terminal prompts disabled", " 401", " 403")


def fetch_git(url: str, ref: str | None, dest_dir: str | os.PathLike[str], *,
              keep_git_dir: bool = False, subdir: str | None = None,
              checksum: str | None = None, cache_dir: str | os.PathLike[str],
              auth_header: str | None = None, auth_secrets: Sequence[str] = (),
              submodules: bool = True, ssh_sock: str | None = None,
              known_hosts: str | None = None) -> str:
    """Check out ``ref`` (branch, tag, full commit sha, or ``None``/"" for HEAD) of ``url``.

    ``dest_dir`` (created, must be absent or empty) receives the tree — or only ``subdir`` of
    it — with ``.git`` kept when ``keep_git_dir``. ``checksum`` (``git.checksum``; empty means
    none): hex digits the fetched commit (or annotated tag object) must start with. Returns the
    commit sha. ``auth_header``: the ``Authorization`` header for the remote (:func:`git_auth`;
    ``auth_secrets`` the secret names that were looked for, named when the server refuses
    the fetch). ``submodules``: check them out (``git submodule update --init --recursive
    --depth=1``), as BuildKit does unless ``git.skipsubmodules``. ``ssh_sock``: the SSH agent
    git's ssh authenticates with (``git.mountsshsock``; no key file is used); ``known_hosts``:
    the only host keys ssh accepts (``git.knownsshhosts``; none given: any, as BuildKit).

    Fetches of one URL are serialised by a lock under ``cache_dir/locks`` (across threads and
    processes): git cannot update one shallow repository concurrently.
    """
    from pybk.core.store.locks import Locks

    checksum = checksum or None
    if checksum is not None and not re.fullmatch(r"[0-9a-fA-F]+", checksum):
        raise BuildError(f"invalid checksum {checksum} for Git URL, expected hex commit hash")
    dest = os.fspath(dest_dir)
    cache = os.fspath(cache_dir)
    private_dir(cache)
    shown = _redact(url)
    ref = ref or "HEAD"
    auth_env = _auth_env(url, auth_header)
    name = hashlib.sha256(url.encode()).hexdigest()[:32] + ".git"
    bare = os.path.join(cache, name)
    is_sha = bool(_SHA_RE.fullmatch(ref))

    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise BuildError(f"git checkout destination {dest} is not empty")
    parent = os.path.dirname(os.path.abspath(dest))
    work = tempfile.mkdtemp(prefix=".git-checkout-", dir=parent)
    fd, hosts_file = tempfile.mkstemp(prefix=".known-hosts-", dir=parent)
    with os.fdopen(fd, "w") as f:
        f.write(known_hosts.rstrip("\n") + "\n" if known_hosts else "")
    auth_env.update(_ssh_env(ssh_sock, hosts_file, pinned=bool(known_hosts)))
    try:
        with Locks(os.path.join(cache, "locks")).lock(name):
            _bare_cache(bare)
            # under the lock, a shallow.lock can only be left by a fetch that was killed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(bare, "shallow.lock"))
            if is_sha and _has_commit(bare, ref):
                fetched = commit = ref
            else:
                _fetch(bare, url, ref, shown, auth_env, auth_secrets, bool(auth_header))
                fetched, commit = _git(
                    ["-C", bare, "rev-parse", "FETCH_HEAD", "FETCH_HEAD^{commit}"],
                    what=f"failed to resolve {ref} of {shown}").split()
            if checksum is not None:
                _check_checksum(checksum, fetched, commit)
            _git(["-C", bare, "update-ref", f"refs/pybk/{commit}", commit],
                 what=f"failed to record {commit} of {shown}")
            with_modules = submodules and _has_commit(bare, f"{commit}:.gitmodules")
            if (keep_git_dir and not subdir) or with_modules:
                _checkout_with_git_dir(bare, url, ref, commit, work, shown)
            else:
                _checkout_tree(bare, commit, work, shown)
            if with_modules:
                _git(["-C", work, "submodule", "update", "--init", "--recursive", "--depth=1"],
                     env=auth_env, what=f"failed to update submodules for {shown}")
                if not keep_git_dir or subdir:
                    _drop_git_dirs(work)
        source = work
        if subdir:
            source = os.path.join(work, os.path.normpath("/" + subdir).lstrip("/"))
            if os.path.islink(source) or not os.path.isdir(source):
                raise BuildError(f"subdir {subdir!r} not found in {shown} at {commit}")
        for entry in os.listdir(source):
            os.rename(os.path.join(source, entry), os.path.join(dest, entry))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.unlink(hosts_file)
    return commit


def _ssh_env(sock: str | None, hosts_file: str, *, pinned: bool) -> dict[str, str]:
    """git's ssh: no configuration file, no key file and no prompt; the agent ``sock`` (none:
    no agent at all); the host keys of ``hosts_file`` only when ``pinned``, else any host key
    (as BuildKit without known hosts), recorded only in that file, removed afterwards."""
    command = ("ssh -F none -o BatchMode=yes -o IdentityFile=none -o GlobalKnownHostsFile=none"
               f" -o UserKnownHostsFile={hosts_file}"
               f" -o StrictHostKeyChecking={'yes' if pinned else 'no'}")
    return {"GIT_SSH_COMMAND": command, "SSH_AUTH_SOCK": sock or "", "GIT_SSH_VARIANT": "ssh"}


def git_source(remote: str, ref: str | None, subdir: str | None, dest: str,
               attrs_: Mapping[str, str], secrets: Mapping[str, bytes],
               agents: Mapping[str, str], cache_dir: str) -> tuple[str, dict[str, Any]]:
    """A git source op's checkout (its ``git.*`` attributes, the build's secrets and SSH
    agents): ``(commit, what identifies the result)``."""
    keep = attrs_.get("git.keepgitdir") == "true"
    skip = attrs_.get("git.skipsubmodules") == "true"
    sock = None
    if attrs_.get("git.mountsshsock"):
        sock = agents.get(attrs_["git.mountsshsock"])
        if sock is None:
            raise BuildError(f"no SSH key {attrs_['git.mountsshsock']!r} forwarded from the "
                             f"client (--ssh) to fetch {_redact(remote)}")
    auth, names = git_auth(remote, attrs_, secrets)
    commit = fetch_git(remote, ref, dest, keep_git_dir=keep, subdir=subdir,
                       checksum=attrs_.get("git.checksum") or None, auth_header=auth,
                       auth_secrets=names, submodules=not skip, ssh_sock=sock,
                       known_hosts=attrs_.get("git.knownsshhosts") or None,
                       cache_dir=cache_dir)
    return commit, {"commit": commit, "subdir": subdir or "", "keep": keep,
                    **({"skipsubmodules": True} if skip else {})}


def _has_commit(bare: str, sha: str) -> bool:
    """Whether ``bare`` has ``sha`` (``sha^{commit}``; an object name such as
    ``COMMIT:path`` as it is)."""
    try:
        _git(["-C", bare, "cat-file", "-e", sha if ":" in sha else f"{sha}^{{commit}}"],
             what="cat-file")
    except BuildError:
        return False
    return True


def _fetch(bare: str, url: str, ref: str, shown: str, auth_env: Mapping[str, str],
           auth_secrets: Sequence[str], authenticated: bool) -> None:
    try:
        _git(["-C", bare, "fetch", "-q", "--depth=1", "--no-tags", "--force", url, ref],
             env=auth_env, what=f"failed to fetch {ref} from {shown}")
    except BuildError as exc:
        text = str(exc).lower()
        if auth_secrets and any(sign in text for sign in _AUTH_FAILED):
            given = "the credentials given were refused" if authenticated else (
                "no credentials were given: pass a secret named "
                + " or ".join(dict.fromkeys(auth_secrets)) + " (--secret id=NAME,env=VAR)")
            raise BuildError(f"{exc} ({given})") from None
        raise


def _drop_git_dirs(work: str) -> None:
    """Remove the repository's ``.git`` and its submodules' ``.git`` files."""
    for folder, dirs, files in os.walk(work):
        if ".git" in dirs:
            dirs.remove(".git")
            shutil.rmtree(os.path.join(folder, ".git"))
        if ".git" in files:
            os.unlink(os.path.join(folder, ".git"))


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


def http_auth(url: str, attrs_: Mapping[str, str], secrets: Mapping[str, bytes]) -> str | None:
    """BuildKit's ``Authorization`` header of an http(s) source: the secret
    ``http.authheadersecret`` names (as it is; a :class:`BuildError` when it is missing), else
    the secret ``HTTP_AUTH_HEADER_<host>`` (as it is) or ``HTTP_AUTH_TOKEN_<host>`` (``Bearer``
    and the token; it wins when both are given)."""
    explicit = attrs_.get("http.authheadersecret")
    if explicit:
        value = _secret(secrets, explicit)
        if value is None:
            raise BuildError(f"failed to retrieve HTTP auth secret {explicit}: not found "
                             "(--secret id=NAME)")
        return value.decode("utf-8", "replace").strip()
    host = urllib.parse.urlsplit(url).hostname or ""
    token = _secret(secrets, f"HTTP_AUTH_TOKEN_{host}")
    if token is not None:
        return "Bearer " + token.decode("utf-8", "replace").strip()
    header = _secret(secrets, f"HTTP_AUTH_HEADER_{host}")
    return header.decode("utf-8", "replace").strip() if header is not None else None


def fetch_http(url: str, dest_dir: str | os.PathLike[str], *, checksum: str | None = None,
               filename: str | None = None, perm: int | None = None, uid: int | None = None,
               gid: int | None = None, etag_cache: str | os.PathLike[str] | None = None,
               headers: Mapping[str, str] | None = None,
               auth: str | None = None) -> tuple[str, str]:
    """Download ``url`` into ``dest_dir``; returns ``(sha256 digest, file path)``.

    The name is ``filename``, else the Content-Disposition filename, else the URL's last path
    segment (``__unnamed__`` when empty). Mode ``perm`` (default 0600), owner ``uid``/``gid``
    (default 0:0), mtime from Last-Modified. ``checksum`` (``sha256:<hex>``) must match.
    ``etag_cache``: a directory remembering ETags and content, so a 304 answer reuses it.
    ``auth``: the ``Authorization`` header (:func:`http_auth`), sent to ``url``'s origin only.
    """
    from pybk.core.http import load_httpx

    httpx = load_httpx()
    if checksum is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise BuildError(f"invalid checksum {checksum!r}: expected sha256:<64 hex digits>")
    dest = os.fspath(dest_dir)
    os.makedirs(dest, exist_ok=True)
    request_headers = dict(headers or {})
    if auth:
        request_headers["Authorization"] = auth
    record_path = record = None
    if etag_cache is not None:
        etag_dir = os.fspath(etag_cache)
        private_dir(etag_dir)
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
