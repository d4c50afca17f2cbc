"""Plain functions behind ``pybk debug dump-ast`` and ``pybk build --check``."""

from __future__ import annotations

import os

from pybk.core.errors import UsageError
from pybk.frontends.dockerfile.checks import run_checks
from pybk.frontends.dockerfile.dockerignore import load_patterns
from pybk.frontends.dockerfile.dump import dump_ast


def dump_ast_command(path: str) -> str:
    """The AST dump of the Dockerfile at ``path`` (ends with a newline)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return dump_ast(data) + "\n"


def _excerpt(lines: list[str], line: int) -> list[str]:
    start = max(line - 2, 1)
    end = min(line + 2, len(lines))
    out = ["--------------------"]
    for number in range(start, end + 1):
        marker = ">>>" if number == line else "   "
        out.append(f"{number:4d} | {marker} {lines[number - 1]}")
    out.append("--------------------")
    return out


def check_command(
    dockerfile_path: str,
    build_args: dict,
    target: str | None,
    context_dir: str | None = None,
) -> tuple[str, int]:
    """Run the build checks; return the report text and the exit code (0 clean, 1 otherwise).

    The context's ``.dockerignore`` (default context: the Dockerfile's directory) feeds the
    CopyIgnoredFile rule.
    """
    with open(dockerfile_path, "rb") as handle:
        data = handle.read()
    context = context_dir if context_dir is not None else os.path.dirname(dockerfile_path) or "."
    patterns = load_patterns(context, dockerfile_path)
    filename = os.path.basename(dockerfile_path)
    report = run_checks(data, filename, build_args, target, patterns)
    return format_check_report(data, report)


def format_check_report(data: bytes, report) -> tuple[str, int]:
    """The ``--check`` report like buildx prints it, and the exit code (0 clean, 1 otherwise)."""
    if not report.warnings:
        return "Check complete, no warnings found.\n", 0
    lines = data.decode("utf-8", "replace").split("\n")
    count = len(report.warnings)
    out = [f"Check complete, {count} warning{'s' if count != 1 else ''} have been found!", ""]
    for warning in report.warnings:
        out.append(f"WARNING: {warning.rule} - {warning.url}")
        out.append(warning.description)
        out.append(f"{warning.filename}:{warning.line}")
        if 0 < warning.line <= len(lines):
            out += _excerpt(lines, warning.line)
        out.append(warning.message)
        out.append("")
    if report.error:
        out.append(f"ERROR: {report.error_message}")
    return "\n".join(out) + "\n", 1
