"""``pybk debug config FILE``: a configuration file checked and shown normalised."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pybk.core.config.loader import config_to_json, load_config
from pybk.core.errors import ConfigError

__all__ = ["debug_config_command"]


def debug_config_command(path: str | Path, *, stderr: TextIO | None = None) -> tuple[str, int]:
    """``pybk debug config FILE``: (text, exit code).

    On success the text is the normalised config as JSON (exit 0) and each warning is written to
    ``stderr`` as ``warning: …``. On failure the text is the error report (exit 2).
    """
    import orjson

    try:
        config, warnings = load_config(path)
    except ConfigError as exc:
        return exc.render(), exc.exit_code
    out = stderr if stderr is not None else sys.stderr
    for warning in warnings:
        out.write(f"warning: {warning}\n")
    text = orjson.dumps(config_to_json(config), option=orjson.OPT_INDENT_2).decode()
    return text, 0
