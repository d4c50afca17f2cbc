"""Where pybk keeps its store by default, and where a store's daemon listens."""

from __future__ import annotations

import os

#: root's default store
SYSTEM_ROOT = "/var/lib/pybk"
#: the socket of the daemon serving :data:`SYSTEM_ROOT`
SYSTEM_SOCKET = "/run/pybk/pybkd.sock"
#: the socket of the daemon serving any other store, inside the store
STORE_SOCKET = "pybkd.sock"


def default_root() -> str:
    """``$PYBK_ROOT``, else ``/var/lib/pybk`` for root, else ``$XDG_DATA_HOME/pybk``
    (``~/.local/share/pybk``)."""
    if os.environ.get("PYBK_ROOT"):
        return os.environ["PYBK_ROOT"]
    if os.geteuid() == 0:
        return SYSTEM_ROOT
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "pybk")


def store_socket(root: str) -> str:
    """The default socket of the daemon serving the store ``root``: ``/run/pybk/pybkd.sock``
    for ``/var/lib/pybk``, else ``ROOT/pybkd.sock`` (both sides resolve symlinks)."""
    real = os.path.realpath(root)
    if real == SYSTEM_ROOT:
        return SYSTEM_SOCKET
    return os.path.join(real, STORE_SOCKET)
