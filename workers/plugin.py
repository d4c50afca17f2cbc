"""The built-in ``oci`` worker: build steps run in runc (or crun), as root or rootless."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pybk.core.interfaces import WORKER_LABEL_PREFIX, Worker
from pybk.core.markers import hookimpl
from pybk.core.model import Model, evolve, field
from pybk.core.platform import host_platform

if TYPE_CHECKING:
    from pybk.core.interfaces import Snapshotter
    from pybk.workers.limits import StepLimits
    from pybk.workers.network import NetworkOptions
    from pybk.workers.runc import RuncExecutor


class OCIWorker(Worker):
    """Runs build steps in an OCI runtime (runc or crun) on snapshot mounts."""

    name = "oci"
    #: the executor's state directory under the store root (runtime state, bundles, network)
    state_dir_name = "executor"

    class Options(Model):
        #: the OCI runtime CLI (buildkitd.toml ``binary``)
        binary: str = "runc"
        #: share the host's pid namespace and /proc (buildkitd.toml ``noProcessSandbox``)
        no_process_sandbox: bool = False
        #: platforms this worker builds for; empty means the host's
        platforms: tuple[str, ...] = field(default=(), converter=tuple)
        #: networkMode, the CNI keys and [dns] (None: the defaults, ``auto``); see
        #: :meth:`pybk.workers.network.NetworkOptions.from_config`
        network: NetworkOptions | None = None
        #: the snapshotter of new records: ``auto``, ``overlayfs``, ``fuse-overlayfs`` or
        #: ``native``
        snapshotter: str = "auto"
        #: run steps rootless (:mod:`pybk.workers.rootless`; buildkitd.toml ``rootless``);
        #: also whenever this process runs in a user namespace
        rootless: bool = False
        #: labels added to (and overriding) the worker's own (buildkitd.toml ``labels``)
        labels: Mapping[str, str] = field(factory=dict, converter=dict, hash=False)
        #: the configuration section whose GC keys make the GC policy (a
        #: :class:`pybk.core.config.schema.OCIConfig`; None: no automatic GC) and whose
        #: network keys make the default network when ``network`` is None
        gc: Any = field(default=None, hash=False)
        #: ``[dns]`` (a :class:`pybk.core.config.schema.DNSConfig`), with ``gc``'s network keys
        dns: Any = field(default=None, hash=False)
        #: what each RUN container may use and its cgroup parent (a
        #: :class:`pybk.workers.limits.StepLimits`; None: from ``pybk`` and ``gc``)
        limits: Any = field(default=None, hash=False)
        #: ``[pybk]`` (a :class:`pybk.core.config.schema.PybkConfig`): ``step-memory`` and
        #: ``step-pids``, read when the executor is made (None: their defaults)
        pybk: Any = field(default=None, hash=False)

    def __init__(self, options: OCIWorker.Options | None = None, *,
                 root: str | os.PathLike[str] | None = None):
        super().__init__(options, root=root)
        self._executor: RuncExecutor | None = None
        #: the snapshotter's name once made (``auto`` resolves to ``overlayfs`` or ``native``)
        self._snapshotter_name = self.options.snapshotter

    @classmethod
    def from_config(cls, config: Any, *, root: str) -> OCIWorker | None:
        """``[worker.oci]``: None with ``enabled = false``."""
        oci = config.worker.oci
        if oci.enabled is False:
            return None
        return cls(cls.options_from_config(config), root=root)

    @classmethod
    def options_from_config(cls, config: Any, **changes: Any) -> OCIWorker.Options:
        """Options from ``[worker.oci]`` and ``[dns]`` (``changes`` replace some). The
        network keys are read when the executor is made (:meth:`network_options`), so a build
        that runs no step never loads the network code."""
        oci = config.worker.oci
        options = cls.Options(binary=oci.binary or "runc", platforms=oci.platforms,
                              snapshotter=oci.snapshotter, labels=oci.labels, gc=oci,
                              dns=config.dns, pybk=config.pybk, rootless=oci.rootless,
                              no_process_sandbox=oci.no_process_sandbox)
        return evolve(options, **changes) if changes else options

    @property
    def rootless(self) -> bool:
        """Whether steps run rootless: ``rootless = true``, or this process runs in a user
        namespace (:func:`pybk.core.userns.in_user_namespace`)."""
        from pybk.core.userns import in_user_namespace

        return self.options.rootless or in_user_namespace()

    def network_options(self) -> NetworkOptions:
        """``network``, else the network keys of the ``gc`` section (``[worker.oci]``) and
        ``dns``, else the defaults; for a rootless worker, what
        :func:`pybk.workers.rootless.network_options` makes of them."""
        from pybk.workers.network import NetworkOptions

        if self.options.network is not None:
            options = self.options.network
        elif self.options.gc is None:
            options = NetworkOptions()
        else:
            options = NetworkOptions.from_sections(self.options.gc, self.options.dns)
        if self.rootless:
            from pybk.workers.rootless import network_options

            return network_options(options)
        return options

    def platforms(self) -> list[str]:
        return list(self.options.platforms) or [str(host_platform())]

    def labels(self) -> dict[str, str]:
        """BuildKit's OCI worker labels (executor ``oci``, the hostname, the snapshotter as
        made once :meth:`snapshotter` was called, the default network's mode as resolved,
        the process mode), then the configured ``labels``."""
        from pybk.workers.network import resolve_mode

        mode = resolve_mode(self.network_options())
        labels = {
            **super().labels(),
            WORKER_LABEL_PREFIX + "executor": "oci",
            WORKER_LABEL_PREFIX + "snapshotter": self._snapshotter_name,
            WORKER_LABEL_PREFIX + "network": mode,
            WORKER_LABEL_PREFIX + "oci.process-mode":
                "no-sandbox" if self.options.no_process_sandbox else "sandbox",
        }
        labels.update(self.options.labels)
        return labels

    def gc_policy(self, disk_total: int | None) -> list[Any]:
        if self.options.gc is None:
            return []
        from pybk.core.config.gc import gc_prune_rules

        return gc_prune_rules(self.options.gc, disk_total)

    def snapshotter(self, store: Any) -> Snapshotter:
        from pybk.core.store.snapshotters import make_snapshotter

        snapshotter = make_snapshotter(store.db, self.options.snapshotter)
        self._snapshotter_name = snapshotter.name
        return snapshotter

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def step_limits(self) -> StepLimits:
        """What every RUN container may use: ``limits``, else ``[pybk]`` (``pybk``) and
        ``defaultCgroupParent`` (``gc``), else their defaults."""
        if self.options.limits is not None:
            return self.options.limits
        from pybk.core.config.schema import OCIConfig, PybkConfig
        from pybk.workers.limits import StepLimits

        if self.rootless:
            from pybk.workers.rootless import rootless_limits

            return rootless_limits(self.options.pybk or PybkConfig(),
                                   self.options.gc or OCIConfig())
        return StepLimits.from_sections(self.options.pybk or PybkConfig(),
                                        self.options.gc or OCIConfig())

    def executor(self) -> RuncExecutor:
        """The executor, created on first use (cleaning up after runs of dead processes)."""
        if self._executor is None:
            from pybk.workers.runc import RuncExecutor

            executor = RuncExecutor(os.path.join(self.root, self.state_dir_name),
                                    self.options.binary,
                                    no_process_sandbox=self.options.no_process_sandbox,
                                    network=self.network_options(),
                                    limits=self.step_limits(),
                                    store=str(self.root), rootless=self.rootless)
            executor.reap_stale()
            self._executor = executor
        return self._executor

    def serve(self) -> None:
        """Namespaces the daemon's children give back stay pooled for the next builds."""
        from pybk.core.store.locks import process_identity
        from pybk.workers.network import set_pool_owner

        set_pool_owner(process_identity())

    def shutdown(self) -> None:
        """Tear down the network namespaces the daemon kept pooled."""
        from pybk.workers.network import Networks

        self.close()
        Networks(os.path.join(self.root, self.state_dir_name)).close()


@hookimpl
def pybk_register_workers():
    return OCIWorker


@hookimpl
def pybk_add_commands(commands):
    commands.add("rootless", "pybk.workers.rootlesscheck:debug_rootless_command",
                 help="check what running as an ordinary user needs here, with the fixes",
                 arguments=_rootless_arguments, parent="debug")


def _rootless_arguments(parser: Any) -> None:
    from pybk.workers.rootlesscheck import rootless_arguments

    rootless_arguments(parser)
