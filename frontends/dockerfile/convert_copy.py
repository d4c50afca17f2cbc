"""Dockerfile → LLB: COPY and ADD (context, stage and image sources, heredocs, ``--parents``,
``--link``, ``--chmod``, and ADD's URLs and git repositories)."""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pybk.core import llb
from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile.imageconfig import StageState
from pybk.frontends.dockerfile.stages import StageConverter, Step, located_error
from pybk.frontends.dockerfile.values import parse_chmod

_GIT_HTTP = re.compile(r"^https?://[^#?]+\.git(?:[#?].*)?$")


def _scratch_like(state: llb.State) -> llb.State:
    """An empty filesystem with ``state``'s working directory, user and platform."""
    return llb.State(None, state._meta)


def split_wildcards(path: str) -> tuple[str, str]:
    """``(directory without wildcards, the rest)``; the rest is empty without wildcards."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            break
        i += 1
    if i >= len(path):
        return path, ""
    head = path[:i]
    base = "" if not head or head.endswith("/") else posixpath.basename(head)
    return posixpath.dirname(head), base + path[i:]


def parse_git_ref(url: str) -> tuple[str, str | None, str | None, dict[str, str]] | None:
    """``(remote, ref, subdir, query options)`` when ``url`` names a git repository."""
    if not (url.startswith(("git@", "git://", "ssh://", "github.com/")) or _GIT_HTTP.match(url)):
        return None
    remote, _, fragment = url.partition("#")
    query: dict[str, str] = {}
    if "?" in remote:
        remote, _, qs = remote.partition("?")
        query = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
    if remote.startswith("github.com/"):
        remote = "https://" + remote
    ref, _, subdir = fragment.partition(":")
    ref = ref or query.get("ref") or query.get("tag") or query.get("branch") or None
    subdir = subdir or query.get("subdir") or None
    return remote, ref, subdir, query


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def git_query_flag(query: dict[str, str], key: str) -> bool | None:
    """A boolean query option of a git URL (``keep-git-dir``, ``submodules``) as Go's
    ``strconv.ParseBool`` reads it, empty meaning true; None when absent."""
    if key not in query:
        return None
    value = query[key]
    if value == "" or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid {key} value: {value!r}")


def _copy(cv: StageConverter, ds: StageState, instruction: ins.CopyInstruction, index: int) -> None:
    _copy_files(cv, ds, instruction, index, instruction.from_)


def _add(cv: StageConverter, ds: StageState, instruction: ins.AddInstruction, index: int) -> None:
    _copy_files(cv, ds, instruction, index, "")


def _copy_files(cv: StageConverter, ds: StageState,
                instruction: Any, index: int, from_: str) -> None:
    location = instruction.location
    expander = cv.expander(ds, instruction)
    keyword = instruction.keyword.upper()
    is_add = keyword == "ADD"
    dest_word = expander.word(instruction.dest)
    dest = posixpath.join(ds.state.get_dir(), dest_word)
    if dest_word in ("", ".") or dest_word.endswith("/"):
        dest = dest.rstrip("/") + "/"
    sources = [expander.word(src) for src in instruction.sources]
    if len(sources) + len(instruction.source_contents) > 1 and not dest.endswith("/"):
        raise located_error(f"When using {keyword} with more than one source file, the "
                            "destination must be a directory and end with a /", location)
    info: dict[str, Any] = {"create_dest_path": True}
    if instruction.chown:
        info["owner"] = expander.word(instruction.chown)
    mode_str = ""
    if instruction.chmod:
        chmod = expander.word(instruction.chmod)
        try:
            mode = parse_chmod(chmod)
        except ValueError:
            raise located_error(f"invalid chmod parameter: {chmod}", location) from None
        if isinstance(mode, int):
            info["mode"] = mode
        else:
            info["mode_str"] = mode_str = mode
    if instruction.excludes:
        info["exclude_patterns"] = [expander.word(e) for e in instruction.excludes]
    local_info = {**info, "follow_symlink": True, "dir_copy_contents": True,
                  "allow_wildcard": True, "allow_empty_wildcard": True}
    unpack = getattr(instruction, "unpack", None)
    checksum = expander.word(instruction.checksum) if is_add and instruction.checksum else ""
    if checksum and len(sources) != 1:
        raise located_error("checksum can't be specified for multiple sources", location)
    source = cv.context
    if from_:
        if "$" in from_:
            raise located_error(f"'{from_}' doesn't support variable expansion, define alias "
                                "stage instead", location)
        source, _ = cv.source(from_, index, location)
    steps: list[tuple[llb.State, str, dict]] = []
    for path in sources:
        if path.startswith(("http://", "https://")) or parse_git_ref(path):
            if not is_add:
                raise located_error("source can't be a URL for COPY", location)
            steps.append(_remote(cv, path, checksum, instruction, info, unpack, location))
            continue
        if checksum:
            raise located_error("checksum requires an HTTP(S) or git source", location)
        step_info = dict(local_info, attempt_unpack_docker_compatibility=is_add
                         and unpack is not False)
        if getattr(instruction, "parents", False):
            root, pivot, rest = path.partition("/./")
            if not pivot:
                root, rest = "/", path
            pattern = posixpath.normpath(posixpath.join("/", rest)).lstrip("/")
            step_info["include_patterns"] = [pattern]
            if not split_wildcards(pattern)[1]:
                step_info["required_paths"] = [pattern]
            src_path = posixpath.normpath(posixpath.join("/", root))
            track = posixpath.join(src_path, pattern)
        else:
            src_path = posixpath.normpath(posixpath.join("/", path))
            track = src_path
        if not from_:
            cv.context_paths.add(track)
        steps.append((source, src_path, step_info))
    for content in instruction.source_contents:
        data = expander.word(content.data) if content.expand else content.data
        file_state = llb.scratch().file(llb.mkfile(f"/{content.path}", 0o644, data.encode()))
        steps.append((file_state, f"/{content.path}", info))
    if not steps:
        raise located_error(f"{keyword} requires at least two arguments", location)
    chain: llb.FileChain | None = None
    for src_state, src_path, step_info in steps:
        chain = (llb.copy(src_state, src_path, dest, **step_info) if chain is None
                 else chain.copy(src_state, src_path, dest, **step_info))
    options = cv.op_opts(ds, instruction, cv.display(ds, instruction))
    if instruction.link and not mode_str:
        copied = _scratch_like(ds.state).file(chain, **options)
        ds.state = llb.State(llb.merge([ds.state, copied], **options)._output,
                             ds.state._meta) if not ds.state.is_scratch else \
            llb.State(copied._output, ds.state._meta)
    else:
        ds.state = ds.state.file(chain, **options)
    cv.history(ds, f"{keyword} {' '.join(sources)} {dest_word} # buildkit", False)


def _remote(cv: StageConverter, url: str, checksum: str, instruction: Any, info: dict,
            unpack: bool | None, location: ins.Location) -> tuple[llb.State, str, dict]:
    """The source of ``ADD <url>``: an HTTP download or a git checkout."""
    try:
        urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise located_error(f"invalid URL {url!r}: {exc}", location) from None
    git = parse_git_ref(url)
    if git is not None:
        remote, ref, subdir, query = git
        commit = query.get("checksum") or query.get("commit") or ""
        if checksum and commit and not (commit.startswith(checksum)
                                        or checksum.startswith(commit)):
            raise located_error(f"checksum mismatch: {checksum} != {commit}", location)
        try:
            keep = instruction.keep_git_dir
            if keep is None:
                keep = bool(git_query_flag(query, "keep-git-dir"))
            skip = git_query_flag(query, "submodules") is False
        except ValueError as exc:
            raise located_error(str(exc), location) from None
        state = llb.git(remote, ref, keep_git_dir=keep, subdir=subdir,
                        checksum=(checksum or commit) or None, skip_submodules=skip,
                        **cv.loc_opts(location))
        return state, "/", {**info, "dir_copy_contents": True, "follow_symlink": True}
    if checksum and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise located_error(f"invalid checksum digest format: {checksum}", location)
    filename = posixpath.basename(urlsplit(url).path)
    if filename in ("", ".", "/"):
        filename = "__unnamed__"
    state = llb.http(url, checksum=checksum or None, filename=filename,
                     **cv.loc_opts(location))
    return state, f"/{filename}", {**info, "attempt_unpack_docker_compatibility":
                                   bool(unpack)}


#: keyword → step
STEPS: dict[str, Step] = {"copy": _copy, "add": _add}
