"""``--call outline`` and ``--call targets``: what a Dockerfile's build takes and which stages it
has, as the text pybk prints and as the JSON BuildKit's subrequests answer (``result.json`` of
``frontend.outline`` / ``frontend.targets``, which buildx prints for ``format=json``)."""

from __future__ import annotations

import base64
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from pybk.frontends.dockerfile import commands as ins
from pybk.frontends.dockerfile.errors import DockerfileParseError, InstructionError
from pybk.frontends.dockerfile.instructions import parse_dockerfile


def go_json(value: Any) -> str:
    """``json.MarshalIndent(value, "", "  ")`` as Go writes it: UTF-8 kept, ``<``, ``>``, ``&``
    and the line/paragraph separators escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _location(location: ins.Location) -> dict:
    """A ``pb.Location`` of one instruction (source 0, lines only), as protobuf's JSON tags
    write it (zero fields left out)."""
    return {"ranges": [{"start": {"line": location.start_line},
                        "end": {"line": location.end_line}}]}


def _described(comments: Any, name: str) -> str:
    """The description the comment above an instruction gives ``name``: ``# NAME text``."""
    comment = " ".join(c.strip() for c in comments)
    return comment[len(name) + 1:].strip() if comment.startswith(name + " ") else ""


def _wanted_stages(dockerfile: ins.Dockerfile, stage: ins.Stage) -> set[int]:
    wanted = {stage.index}
    pending = [stage]
    while pending:
        current = pending.pop()
        names = [current.from_instruction.base_name]
        names += [getattr(i, "from_", "") for i in current.instructions]
        for instruction in current.instructions:
            for spec in getattr(instruction, "mount_specs", ()):
                match = re.search(r"(?:^|,)from=([^,]+)", spec)
                if match:
                    names.append(match.group(1))
        for name in filter(None, names):
            for other in dockerfile.stages[:current.index]:
                if other.index not in wanted and (other.name == name.lower()
                                                  or name == str(other.index)):
                    wanted.add(other.index)
                    pending.append(other)
    return wanted


def outline_of(data: bytes, *, filename: str = "Dockerfile", target: str | None = None,
               build_args: Mapping[str, str] = {}) -> dict:  # noqa: B006 - read only
    """BuildKit's ``outline.Outline`` of the target: its name and description, the build args
    its stages (and those they use) declare — value (the build arg given, else the default),
    description, location — and the Dockerfile as the one source."""
    dockerfile = parse_dockerfile(data, filename)
    if not dockerfile.stages:
        raise DockerfileParseError("the Dockerfile has no FROM instruction", filename=filename)
    stage = dockerfile.stage(target) if target else dockerfile.stages[-1]
    wanted = _wanted_stages(dockerfile, stage)
    args: list[dict] = []
    seen: set[str] = set()
    arg_groups = [dockerfile.meta_args] + [
        [i for i in s.instructions if isinstance(i, ins.ArgInstruction)]
        for s in dockerfile.stages if s.index in wanted]
    for group in arg_groups:
        for instruction in group:
            for spec in instruction.args:
                if spec.key in seen:
                    continue
                seen.add(spec.key)
                arg: dict[str, Any] = {"name": spec.key}
                description = _described(instruction.comments, spec.key)
                if description:
                    arg["description"] = description
                value = build_args.get(spec.key, spec.default or "")
                if value:
                    arg["value"] = value
                arg["location"] = _location(instruction.location)
                args.append(arg)
    args.sort(key=_line)
    secrets, ssh = _mounted(dockerfile, wanted)
    out: dict[str, Any] = {}
    if stage.name:
        out["name"] = stage.name
        description = _described(stage.from_instruction.comments, stage.name)
        if description:
            out["description"] = description
    for key, values in (("args", args), ("secrets", secrets), ("ssh", ssh)):
        if values:
            out[key] = values
    out["sources"] = [base64.b64encode(data).decode()]
    return out


def _line(entry: dict) -> int:
    return entry["location"]["ranges"][0]["start"]["line"]


def _mounted(dockerfile: ins.Dockerfile, wanted: set[int]) -> tuple[list[dict], list[dict]]:
    """The secrets and SSH agents the RUN steps of the wanted stages mount (by id, the first
    mount of each; ``required`` when it says so), in line order."""
    from pybk.frontends.dockerfile.mounts import parse_mount

    found: dict[str, dict[str, dict]] = {"secret": {}, "ssh": {}}
    for stage in dockerfile.stages:
        if stage.index not in wanted:
            continue
        for instruction in stage.instructions:
            for spec in getattr(instruction, "mount_specs", ()):
                try:
                    mount = parse_mount(spec, lambda word: word)
                except (ValueError, InstructionError, DockerfileParseError):
                    continue  # the build itself says what is wrong with it
                if mount.type == "secret":
                    name = (mount.cache_id or mount.source
                            or posixpath.basename(mount.target))
                elif mount.type == "ssh":
                    name = mount.cache_id or "default"
                else:
                    continue
                entry: dict[str, Any] = {"name": name}
                if mount.required:
                    entry["required"] = True
                entry["location"] = _location(instruction.location)
                found[mount.type].setdefault(name, entry)
    return (sorted(found["secret"].values(), key=_line),
            sorted(found["ssh"].values(), key=_line))


def outline_text(outline: dict, stage_label: str) -> str:
    """The text pybk prints for ``--call outline``: the target and a table of build args."""
    rows = [(a["name"], a.get("value", ""), a.get("description", ""))
            for a in outline.get("args", ())]
    lines = [f"TARGET:      {stage_label}", ""]
    if rows:
        width = max(len("BUILD ARG"), *(len(r[0]) for r in rows)) + 2
        vwidth = max(len("VALUE"), *(len(r[1]) for r in rows)) + 2
        lines.append(f"{'BUILD ARG':<{width}}{'VALUE':<{vwidth}}DESCRIPTION")
        lines += [f"{k:<{width}}{v:<{vwidth}}{d}".rstrip() for k, v, d in rows]
    return "\n".join(lines) + "\n"


def targets_of(data: bytes, *, filename: str = "Dockerfile") -> dict:
    """BuildKit's ``targets.List``: every stage (named or not) with its base, platform and
    location, the last one the default, and the Dockerfile as the one source."""
    dockerfile = parse_dockerfile(data, filename)
    targets = []
    for stage in dockerfile.stages:
        frm = stage.from_instruction
        target: dict[str, Any] = {}
        if stage.name:
            target["name"] = stage.name
        if stage is dockerfile.stages[-1]:
            target["default"] = True
        description = _described(frm.comments, stage.name) if stage.name else ""
        if description:
            target["description"] = description
        if frm.base_name:
            target["base"] = frm.base_name
        if frm.platform:
            target["platform"] = frm.platform
        target["location"] = _location(frm.location)
        targets.append(target)
    return {"targets": targets or None, "sources": [base64.b64encode(data).decode()]}


def targets_text(listing: dict) -> str:
    """The text pybk prints for ``--call targets``: the named stages, the default marked."""
    rows = [(t["name"] + (" (default)" if t.get("default") else ""), t.get("description", ""))
            for t in listing["targets"] or () if t.get("name")]
    if not rows:
        return "No targets found\n"
    width = max(len("TARGET"), *(len(r[0]) for r in rows)) + 2
    return "\n".join([f"{'TARGET':<{width}}DESCRIPTION"]
                     + [f"{n:<{width}}{d}".rstrip() for n, d in rows]) + "\n"
