"""A store, a config file and a busybox OCI layout for ``pybk`` run in the test's process."""

from __future__ import annotations

from pybk.core.cli.commands import main

BASE = '[worker.oci]\ngc = false\nnetworkMode = "none"\n'


class StoreEnv:
    """``pybk`` (``main``) with ``--root`` and ``--config`` of its own under ``tmp_path``."""

    def __init__(self, tmp_path, layout, capsys):
        self.tmp = tmp_path
        self.root = tmp_path / "store"
        self.config = tmp_path / "buildkitd.toml"
        self.config.write_text(BASE)
        self.layout = layout
        self.capsys = capsys

    def configure(self, extra: str) -> None:
        self.config.write_text(BASE + extra)

    def pybk(self, *args: str) -> tuple[int, str, str]:
        """``(exit code, stdout, stderr)`` of ``pybk ARGS``."""
        self.capsys.readouterr()
        code = main(["--root", str(self.root), "--config", str(self.config), *args])
        out = self.capsys.readouterr()
        return code, out.out, out.err
