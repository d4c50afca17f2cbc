"""``pybk debug context``: what a build would send of its context, and why the rest is left out.

The build file is converted by its frontend, as ``pybk build --print-llb`` does, without
building; the ``local://context`` source of the definition gives the selection the sync would
use (``local.followpaths``: the COPY/ADD sources; ``local.excludepatterns``: .dockerignore;
``local.includepattern``). Each file to send is listed, then each excluded path with its
reason: the .dockerignore pattern that excludes it (an excluded directory that would not be
read is one entry, ``dir/ (not read)``), or "not used by any COPY/ADD". The summary lines are
those a build's ``[internal] load build context`` step prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def context_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("context", nargs="?", default=".", help="build context directory (default: .)")
    a("-f", "--file", help="build file (default: CONTEXT/Dockerfile)")
    a("--target", help="stage to build")
    a("--build-arg", action="append", default=[], metavar="K=V")
    a("--build-context", action="append", default=[], metavar="NAME=VALUE")
    a("--platform", action="append", default=[])


def context_source_attrs(definition: Any) -> dict[str, str] | None:
    """The attributes of the definition's ``local://context`` source (None: it has none)."""
    for op in definition.load().values():
        if op.kind == "source" and op.op.identifier == "local://context":
            return dict(op.op.attrs)
    return None


def _list(attrs: dict[str, str], key: str) -> list[str]:
    raw = attrs.get(key)
    return json.loads(raw) if raw else []


def debug_context_command(ns: argparse.Namespace, root: str) -> int:
    from pybk.core.cli import buildopts as bo
    from pybk.core.engine.build import frontend_definition
    from pybk.core.engine.request import BuildRequest
    from pybk.core.errors import UsageError
    from pybk.core.fs.localsync import survey_context

    if not os.path.isdir(ns.context):
        raise UsageError(f"context directory {ns.context!r} not found")
    if ns.file and not os.path.isfile(ns.file):
        raise UsageError(f"build file {ns.file!r} not found", flag="--file")
    build_args = {}
    for value in ns.build_arg:
        key, val = bo.parse_build_arg(value)
        if val is not None:
            build_args[key] = val
    request = BuildRequest(
        context=ns.context, file=ns.file, target=ns.target, build_args=build_args,
        build_contexts=tuple(bo.parse_build_context(v) for v in ns.build_context),
        platforms=bo.parse_platforms(ns.platform), print_llb=True)
    definition = frontend_definition(request, root=root, config_path=ns.config)
    attrs = context_source_attrs(definition)
    out = sys.stdout
    if attrs is None:
        out.write("the build does not use its context: nothing would be sent\n")
        return 0
    survey = survey_context(ns.context, _list(attrs, "local.includepattern"),
                            _list(attrs, "local.excludepatterns"),
                            _list(attrs, "local.followpaths"))
    for rel, size in survey.sent:
        out.write(f"send: {rel} ({size} bytes)\n")
    for rel, size, pattern in survey.ignored:
        shown = rel if size < 0 else f"{rel} ({size} bytes)"
        out.write(f"exclude: {shown}: .dockerignore pattern {pattern!r}\n")
    for rel, size in survey.unused:
        out.write(f"exclude: {rel} ({size} bytes): not used by any COPY/ADD\n")
    out.write("".join(f"{line}\n" for line in survey.lines(synced=False)))
    return 0
