"""Shared test setup: make tests/support importable as ``support``."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from support.fixtures import *  # noqa: E402,F401,F403
