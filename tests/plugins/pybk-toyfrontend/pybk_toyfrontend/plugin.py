"""The ``toy`` frontend: a build file of ``WRITE <path> <text>`` and ``COPY <path>`` lines.

``WRITE`` creates a file holding the text (and a newline); ``COPY`` copies a file of the build
context to the same path. Lines starting with ``#`` are comments. The result is a scratch image
labelled ``toy.lines=<number of instructions>``.
"""

from __future__ import annotations

from pybk.core import hookimpl
from pybk.core.errors import InputError
from pybk.core.interfaces import Frontend, FrontendBridge, FrontendRequest, FrontendResult


class ToyFrontend(Frontend):
    """Toy frontend: WRITE and COPY lines, one file each."""

    name = "toy"

    def solve(self, request: FrontendRequest, bridge: FrontendBridge) -> FrontendResult:
        from pybk.core import llb

        filename = request.opts.get("filename", "Dockerfile")
        text = bridge.read_file("dockerfile", filename).decode()
        context = llb.local("context")
        state = llb.scratch()
        count = 0
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split(None, 2)
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "WRITE" and len(words) == 3:
                path = "/" + words[1].lstrip("/")
                state = state.file(llb.mkfile(path, 0o644, words[2] + "\n"))
            elif words[0] == "COPY" and len(words) == 2:
                path = "/" + words[1].lstrip("/")
                state = state.file(llb.copy(context, path, path))
            else:
                raise InputError(f"toy: cannot read {line.strip()!r}", filename=filename,
                                 line=number)
            count += 1
        config = {"config": {"Labels": {"toy.lines": str(count)}}}
        return FrontendResult(definition=state.marshal(), image_config=config)


@hookimpl
def pybk_register_frontends():
    return ToyFrontend
