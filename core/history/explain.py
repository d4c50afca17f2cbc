"""Why a step ran instead of being found in the cache: its cache key inputs compared with those
the previous build of the same target recorded (see docs/history.md, "Cache misses").

Each recorded step keeps, under ``"cache"``, what its key was made of (:func:`pybk.core.solver.
cachekey.key_inputs`): the key, a digest of its cache map, one dependency per input, an
ExecOp's environment, and for sources what they resolved to (an image's manifest digest, a
local directory's per-file checksums). A step of this build is matched with one of the previous
build (same op digest, else same name, else the same ``[stage N/M]`` slot) and the first
difference found, walking from the step to its inputs, is the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

#: files named in one reason at most
FILES_NAMED = 3
NO_CACHE = "--no-cache"
NO_PREVIOUS = "no previous build of this target to compare with"
_SLOT = re.compile(r"^\[([^\]]+)\]")
_PINNED = re.compile(r"@sha256:[0-9a-f]{64}")


class Comparison:
    """The previous build's steps (``steps``: a record's details' ``"steps"``), ready to match
    this build's steps against; ``attrs``: the frontend options of both builds."""

    def __init__(self, ref: str, steps: list[Mapping[str, Any]], *,
                 previous_attrs: Mapping[str, str], attrs: Mapping[str, str]):
        self.ref = ref
        self.previous_attrs = previous_attrs
        self.attrs = attrs
        self.by_digest: dict[str, Mapping[str, Any]] = {}
        self.by_name: dict[str, Mapping[str, Any]] = {}
        self.by_slot: dict[str, Mapping[str, Any]] = {}
        #: by name without pinned digests (an image's name changes with its digest)
        self.by_unpinned: dict[str, Mapping[str, Any]] = {}
        for step in steps:
            if not isinstance(step.get("cache"), Mapping):
                continue
            self.by_digest.setdefault(step.get("digest", ""), step)
            name = step.get("name", "")
            self.by_name.setdefault(name, step)
            self.by_unpinned.setdefault(_PINNED.sub("", name), step)
            slot = _SLOT.match(name)
            if slot:
                self.by_slot.setdefault(slot.group(1), step)

    def match(self, digest: str, name: str) -> Mapping[str, Any] | None:
        found = (self.by_digest.get(digest) or self.by_name.get(name)
                 or self.by_unpinned.get(_PINNED.sub("", name)))
        if found is None:
            slot = _SLOT.match(name)
            found = self.by_slot.get(slot.group(1)) if slot else None
        return found


#: this build's view of one keyed step: ``{"name", "inputs" (digests), "info" (its key
#: inputs), "ignore_cache"}``
Step = dict[str, Any]


def explain_miss(comparison: Comparison | None, digest: str, steps: Mapping[str, Step],
                 ran: Callable[[str], bool], number: Callable[[str], int]) -> str:
    """Why the step ``digest`` runs: ``--no-cache``, or the first difference from the previous
    build; ``ran(d)``: whether step ``d`` ran in this build; ``number(d)``: its ``#N``."""
    step = steps.get(digest)
    if step is None:
        return ""
    if step.get("ignore_cache"):
        return NO_CACHE
    if comparison is None:
        return NO_PREVIOUS
    previous = comparison.match(digest, step["name"])
    if previous is None:
        return "new step: the previous build had none like it"
    if previous["cache"].get("key") == step["info"].get("key"):
        if previous.get("error"):
            return "same cache key as the previous build, where the step failed"
        if previous.get("completed") is None or (not previous.get("cached")
                                                 and previous.get("started") is None):
            return "same cache key as the previous build, where the step did not run"
        return "same cache key as the previous build, but its result is no longer in the cache"
    return _changed(comparison, digest, previous, steps, ran, number, depth=0)


def _changed(comparison: Comparison, digest: str, previous: Mapping[str, Any],
             steps: Mapping[str, Step], ran: Callable[[str], bool],
             number: Callable[[str], int], *, depth: int) -> str:
    """What differs between the step's key inputs and the previous build's."""
    step = steps[digest]
    info, before = step["info"], previous["cache"]
    if "source" in info:
        return _source_changed(before.get("source") or {}, info["source"] or {})
    deps, old = info.get("deps", []), before.get("deps", [])
    # a parent that re-ran is the cause; this step is a consequence
    for i, (dep, was) in enumerate(zip(deps, old, strict=False)):
        parent = step["inputs"][i] if i < len(step["inputs"]) else ""
        if dep != was and parent in steps and ran(parent):
            n = number(parent)
            return f"parent step #{n} re-ran" if n else (
                f"parent step {steps[parent]['name']} re-ran")
    if info.get("map") != before.get("map"):
        return _definition_changed(comparison, step, previous)
    if len(deps) != len(old):
        return "the step's inputs changed"
    for i, (dep, was) in enumerate(zip(deps, old, strict=True)):
        if dep == was:
            continue
        parent = step["inputs"][i] if i < len(step["inputs"]) else ""
        if dep.startswith("content:"):
            files = _files_of(parent, steps, comparison)
            if files is not None:
                paths = info.get("paths", {}).get(str(i), ["/"])
                reason = _file_changes(*files, paths)
                if reason:
                    return reason
        match = comparison.match(parent, steps[parent]["name"]) if parent in steps else None
        if (match is not None and depth < 64
                and match["cache"].get("key") != steps[parent]["info"].get("key")):
            return _changed(comparison, parent, match, steps, ran, number, depth=depth + 1)
        if dep.startswith("content:"):
            return (f"files read from {steps[parent]['name'] if parent in steps else 'an input'}"
                    " changed")
        return "an input step changed"
    return "the cache key changed"


def _files_of(digest: str, steps: Mapping[str, Step], comparison: Comparison
              ) -> tuple[Mapping[str, str], Mapping[str, str]] | None:
    step = steps.get(digest)
    if step is None:
        return None
    now = (step["info"].get("source") or {}).get("files")
    previous = comparison.match(digest, step["name"])
    before = ((previous or {}).get("cache", {}).get("source") or {}).get("files")
    if not isinstance(now, Mapping) or not isinstance(before, Mapping):
        return None
    return before, now


def _source_changed(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    if before.get("image") and now.get("image") and before["image"] != now["image"]:
        return f"base image digest changed ({before['image']} → {now['image']})"
    old, new = before.get("fetched") or {}, now.get("fetched") or {}
    for what, label in (("commit", "git commit"), ("digest", "downloaded file")):
        if old.get(what) and new.get(what) and old[what] != new[what]:
            return f"{label} changed ({old[what]} → {new[what]})"
    if isinstance(before.get("files"), Mapping) and isinstance(now.get("files"), Mapping):
        reason = _file_changes(before["files"], now["files"], ["/"])
        if reason:
            return reason
    return "the source changed"


def _leaves(files: Mapping[str, str]) -> dict[str, str]:
    """Files only: entries that are no other entry's parent directory (and not the root)."""
    parents = {p.rsplit("/", 1)[0] if "/" in p else "" for p in files}
    return {p: s for p, s in files.items() if p and p not in parents}


def _under(path: str, selected: list[str]) -> bool:
    for sel in selected:
        sel = sel.strip("/").removeprefix("./")
        if sel in ("", ".") or any(c in sel for c in "*?[") or path == sel \
                or path.startswith(sel + "/"):
            return True
    return False


def _file_changes(before: Mapping[str, str], now: Mapping[str, str], selected: list[str]) -> str:
    old, new = _leaves(before), _leaves(now)
    changes = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) == new.get(path) or not _under(path, selected):
            continue
        changes.append((path, "added" if path not in old else "removed" if path not in new
                        else "changed"))
    if not changes:
        return ""
    if len(changes) == 1:
        return f"context file {changes[0][0]} {changes[0][1]}"
    named = changes[:FILES_NAMED]
    more = f" and {len(changes) - len(named)} more" if len(changes) > len(named) else ""
    kinds = {what for _, what in changes}
    if len(kinds) == 1:
        return f"context files {', '.join(p for p, _ in named)}{more} {kinds.pop()}"
    return ("context files changed: " + ", ".join(f"{p} ({what})" for p, what in named) + more)


def _definition_changed(comparison: Comparison, step: Step, previous: Mapping[str, Any]) -> str:
    info, before = step["info"], previous["cache"]
    env, old_env = _env(info.get("env")), _env(before.get("env"))
    if env != old_env and info.get("args") == before.get("args"):
        for name in sorted(set(env) | set(old_env)):
            a, b = old_env.get(name), env.get(name)
            if a == b:
                continue
            arg = (f"build-arg:{name}" in comparison.attrs
                   or f"build-arg:{name}" in comparison.previous_attrs)
            return (f"{'build arg' if arg else 'environment variable'} {name} changed "
                    f"{_shown(a)} → {_shown(b)}")
    if (info.get("caches") != before.get("caches") and info.get("map_without_caches")
            and info.get("map_without_caches") == before.get("map_without_caches")):
        return ("cache mount options changed (cache mounts are not part of the key: only "
                "their options are, never what they hold)")
    if step["name"] != previous.get("name") or info.get("args") != before.get("args"):
        return "instruction text changed"
    return "the step's definition changed"


def _env(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, _, value = str(item).partition("=")
        out[name] = value
    return out


def _shown(value: str | None) -> str:
    return "(unset)" if value is None else (value or '""')


# -- what is shown: ``history inspect --cache`` and ``build --explain-cache`` ----------------

def cache_report(steps: list[Mapping[str, Any]], compared: str | None) -> dict[str, Any]:
    """A record's steps' cache states as JSON: ``{"compared_with": REF or None, "steps":
    [{"step": N, "name", "digest", "cached", "reason"}, …]}`` in the order they started."""
    out = []
    for i, step in enumerate(s for s in steps if s.get("started") is not None):
        cached = bool(step.get("cached"))
        reason = "" if cached else step.get("cache_miss", "")
        if not cached and not reason and "cache" in step and "source" in step["cache"]:
            reason = "a source is resolved each build"
        out.append({"step": step.get("number") or i + 1, "name": step.get("name", ""),
                    "digest": step.get("digest", ""), "cached": cached,
                    "reason": reason if not step.get("error") else reason or "failed"})
    return {"compared_with": compared, "steps": out}


def cache_table(report: Mapping[str, Any], width: int = 60) -> list[str]:
    """``report`` (:func:`cache_report`) as a table: ``STEP``, ``CACHED``, ``NAME``,
    ``REASON``, under a line naming the build compared with."""
    compared = report.get("compared_with")
    steps = report.get("steps", ())
    lines = [f"CACHE: compared with build {compared}" if compared
             else f"CACHE: all {len(steps)} steps cached" if all(s["cached"] for s in steps)
             else "CACHE: no previous build of this target to compare with"]
    rows = [("STEP", "CACHED", "NAME", "REASON")]
    for step in steps:
        name = step["name"] if len(step["name"]) <= width else step["name"][:width - 1] + "…"
        rows.append((f"#{step['step']}", "yes" if step["cached"] else "no", name,
                     step["reason"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        lines.append("   ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)),
                                 row[3]]).rstrip())
    return lines
