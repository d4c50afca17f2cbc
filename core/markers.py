"""The pluggy markers of the ``pybk`` project. Imports nothing else on purpose."""

import pluggy

hookspec = pluggy.HookspecMarker("pybk")
hookimpl = pluggy.HookimplMarker("pybk")
