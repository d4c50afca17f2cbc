"""Where pybk keeps its store by default."""

from __future__ import annotations

import os


def default_root() -> str:
    """``$PYBK_ROOT``, else ``/var/lib/pybk`` for root, else ``$XDG_DATA_HOME/pybk``
    (``~/.local/share/pybk``)."""
    if os.environ.get("PYBK_ROOT"):
        return os.environ["PYBK_ROOT"]
    if os.geteuid() == 0:
        return "/var/lib/pybk"
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "pybk")
