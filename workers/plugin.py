"""The built-in ``oci`` worker: build steps run in runc (or crun) as root."""

from __future__ import annotations

import os
import platform
import shutil
from typing import TYPE_CHECKING

import attrs

from pybk.core.interfaces import Worker
from pybk.core.markers import hookimpl
from pybk.core.paths import default_root

if TYPE_CHECKING:
    from pybk.workers.network import NetworkOptions
    from pybk.workers.runc import RuncExecutor

_ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm/v7", "armv6l": "arm/v6", "i386": "386", "i686": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


def host_platform() -> str:
    """``os/arch[/variant]`` of this machine, in OCI spelling (``linux/amd64``)."""
    machine = platform.machine().lower()
    return f"linux/{_ARCHITECTURES.get(machine, machine)}"


class OCIWorker(Worker):
    """Runs build steps in an OCI runtime (runc or crun) on snapshot mounts."""

    name = "oci"

    @attrs.frozen
    class Options:
        #: the OCI runtime CLI (buildkitd.toml ``binary``)
        binary: str = "runc"
        #: share the host's pid namespace and /proc (buildkitd.toml ``noProcessSandbox``)
        no_process_sandbox: bool = False
        #: platforms this worker builds for; empty means the host's
        platforms: tuple[str, ...] = attrs.field(default=(), converter=tuple)
        #: networkMode, the CNI keys and [dns] (None: the defaults, ``auto``); see
        #: :meth:`pybk.workers.network.NetworkOptions.from_config`
        network: NetworkOptions | None = None

    def __init__(self, options: OCIWorker.Options | None = None, *,
                 root: str | os.PathLike[str] | None = None):
        self.options = options or OCIWorker.Options()
        self.root = os.fspath(root) if root is not None else default_root()
        self._executor: RuncExecutor | None = None

    @classmethod
    def is_available(cls) -> bool:
        return os.geteuid() == 0 and any(shutil.which(b) for b in ("runc", "crun"))

    def platforms(self) -> list[str]:
        return list(self.options.platforms) or [host_platform()]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def executor(self) -> RuncExecutor:
        """The executor, created on first use (cleaning up after runs of dead processes)."""
        if self._executor is None:
            from pybk.workers.runc import RuncExecutor

            executor = RuncExecutor(os.path.join(self.root, "executor"), self.options.binary,
                                    no_process_sandbox=self.options.no_process_sandbox,
                                    network=self.options.network)
            executor.reap_stale()
            self._executor = executor
        return self._executor


@hookimpl
def pybk_register_workers():
    return OCIWorker
