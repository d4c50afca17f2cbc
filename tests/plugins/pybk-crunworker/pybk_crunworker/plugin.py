"""The ``crun`` worker: pybk's OCI worker with the ``crun`` runtime, chosen for every build.

It takes the network, snapshotter and GC keys of ``[worker.oci]`` (so ``[worker.oci] enabled =
false`` turns off only the runc worker) and keeps its runtime state apart from the runc
worker's, in ``ROOT/executor-crun``. ``crun`` is looked up on ``$PATH`` when a step runs.

crun refuses to run on a host whose cgroup v2 hierarchy sits beside the v1 ones ("hybrid"
mode, at ``/sys/fs/cgroup/unified``) with controllers enabled in it. There the worker runs crun
through a small shell script that gives it a mount namespace of its own without that
hierarchy, so crun uses the v1 hierarchies, as runc does.
"""

from __future__ import annotations

import os

import attrs

from pybk.core.markers import hookimpl
from pybk.workers.plugin import OCIWorker

#: a label of this worker's own, shown by ``pybk debug workers -v``
RUNTIME_LABEL = "io.github.pybk-crunworker.runtime"
UNIFIED = "/sys/fs/cgroup/unified"
SHIM = """#!/bin/sh
# crun in a mount namespace without the cgroup v2 hierarchy of a hybrid host
exec unshare -m sh -c 'umount {unified} 2>/dev/null; exec crun "$@"' crun "$@"
"""


def hybrid_cgroups_with_v2_controllers() -> bool:
    """Whether crun would refuse this host's cgroups (hybrid mode, v2 controllers in use)."""
    try:
        with open(os.path.join(UNIFIED, "cgroup.controllers")) as f:
            return bool(f.read().strip())
    except OSError:
        return False


class CrunWorker(OCIWorker):
    """Runs build steps in crun on the oci worker's snapshotters."""

    name = "crun"
    state_dir_name = "executor-crun"

    @classmethod
    def from_config(cls, config, *, root):
        return cls(cls.options_from_config(config, binary="crun", platforms=(),
                                           labels={RUNTIME_LABEL: "crun"}), root=root)

    def executor(self):
        if self._executor is None and hybrid_cgroups_with_v2_controllers():
            shim = os.path.join(self.root, self.state_dir_name, "crun-shim")
            os.makedirs(os.path.dirname(shim), exist_ok=True)
            tmp = f"{shim}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(SHIM.format(unified=UNIFIED))
            os.chmod(tmp, 0o755)
            os.replace(tmp, shim)
            self.options = attrs.evolve(self.options, binary=shim)
        return super().executor()


@hookimpl
def pybk_register_workers():
    return CrunWorker


@hookimpl
def pybk_select_worker(platform, workers):
    """Builds run in crun whenever this worker is enabled."""
    return next((w for w in workers if isinstance(w, CrunWorker)), None)
