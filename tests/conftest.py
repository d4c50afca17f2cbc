"""Shared test setup: make tests/support importable as ``support``."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

# one moto S3 server per session for every directory (moto's state is per process)
from support.cachefixtures import moto_s3  # noqa: E402,F401
from support.fixtures import *  # noqa: E402,F401,F403


def _no_automatic_gc() -> None:
    """Builds started by the tests keep their cache: the automatic GC's minFreeSpace policy
    would otherwise prune every store whenever the disk runs low. The GC tests pass a
    ``--config`` of their own.

    Command-line builds also get no network by default: BuildKit's conformance Dockerfiles
    (``curl``, ``apt-get``, ``git clone`` …) must never reach past this machine. The network
    tests (tests/workers/test_network*.py) pass a ``--config`` with the default mode."""
    import os
    import tempfile

    if "PYBK_CONFIG" in os.environ:
        return
    path = Path(tempfile.mkdtemp(prefix="pybk-tests-")) / "buildkitd.toml"
    path.write_text('[worker.oci]\ngc = false\nnetworkMode = "none"\n')
    os.environ["PYBK_CONFIG"] = str(path)


_no_automatic_gc()
