"""Network providers of the OCI worker: ``bridge`` and ``cni`` (real CNI plugins), ``host``,
``none``; and the pool of network namespaces they hand out.

A RUN step asks for ``sandbox`` (the worker's default network), ``host`` or ``none``. The
worker's ``networkMode`` decides what ``sandbox`` is: ``bridge`` (pybk's own CNI list on
``bridgeName``/``bridgeSubnet``), ``cni`` (the user's list at ``cniConfigPath``), ``host`` or
``none``; ``auto`` is ``bridge`` when the CNI plugins are installed, ``host`` otherwise.

In a user namespace (pybk running rootless, not real root) no veth or iptables rule can be
made on the host: ``bridge`` is then ``slirp4netns`` (:mod:`pybk.workers.slirp`: a namespace
per step with slirp4netns attached, made and removed with the step), ``auto`` is
``slirp4netns`` when slirp4netns and ``/dev/net/tun`` can be used, ``host`` otherwise, and
``cni`` is refused. ``networkMode = "slirp4netns"`` asks for it as real root too.

Namespaces of the CNI modes are pooled on disk, under the executor's state directory, so
several processes (the forked children of ``pybkd``, concurrent ``pybk build`` runs) share
them::

    net/ns/<id>            the namespace, kept alive by a bind mount
    net/state/<id>.json    network list, CNI result, owner and creator identities
    net/idle/<key>.<id>    free for the next step (``key``: which network it is attached to)
    net/busy/<id>@<who>    taken by the process ``who``

A process claims an idle namespace by renaming its marker (exactly one rename wins) and gives
it back after the step, or tears it down (CNI ``DEL``) when the pool is full or the step ran
privileged. An idle namespace lives as long as its *owner*: the process itself for an
embedded build (so nothing is left when ``pybk build`` exits), the daemon for ``pybkd``'s
children. Namespaces of processes that died (a SIGKILLed build) are torn down the next time
the store is opened (:meth:`Networks.recover`).

The ``bridge`` mode's NAT and forwarding are four rules per bridge (:func:`bridge_rules`),
made once; a namespace then costs a veth and an address (the bridge and host-local plugins,
10-20 ms). The bridge and its rules stay, like Docker's ``docker0`` (buildkitd removes a
``buildkit0`` it made when it stops; pybk has no long-lived owner to do so in embedded builds);
everything a step had (namespace, veth, address) goes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson

from pybk.core.config.schema import NETWORK_MODES, Config, DNSConfig, OCIConfig
from pybk.core.errors import BuildError
from pybk.core.model import Model, field, fields_dict
from pybk.core.store.locks import is_alive, process_identity
from pybk.core.store.mounts import MS_BIND, libc, sys_mount, unmount
from pybk.workers import cni, slirp

CLONE_NEWNET = 0x40000000
LOCK_DIR = "/run/pybk"

#: the process whose lifetime bounds idle pooled namespaces (``pybkd`` sets itself)
_pool_owner: str | None = None
_auto_warned = False
#: executor state directories where this process made namespaces: what it owns there is torn
#: down at exit (a Python API user may never close its client)
_touched: set[str] = set()


@atexit.register
def _close_all() -> None:
    for state_dir in sorted(_touched):
        if not os.path.isdir(state_dir):  # its store was removed: nothing left to tear down
            continue
        with contextlib.suppress(Exception):
            Networks(state_dir).close()


def set_pool_owner(identity: str | None) -> None:
    """Make idle namespaces outlive this process's builds: ``pybkd`` calls it before
    serving, so the namespaces its children give back stay for the next ones."""
    global _pool_owner
    _pool_owner = identity


def _default(key: str) -> Any:
    """The buildkitd.toml default of a ``[worker.oci]`` key (one place for each)."""
    return fields_dict(OCIConfig)[key].default


class NetworkOptions(Model):
    """The network keys of ``[worker.oci]`` and ``[dns]``, with the config's defaults."""

    mode: str = _default("network_mode")
    cni_config_path: str = _default("cni_config_path")
    cni_binary_path: str = _default("cni_binary_path")
    pool_size: int = _default("cni_pool_size")
    bridge_name: str = _default("bridge_name")
    bridge_subnet: str = _default("bridge_subnet")
    dns: DNSConfig = field(factory=DNSConfig)

    @classmethod
    def from_config(cls, config: Config) -> NetworkOptions:
        return cls.from_sections(config.worker.oci, config.dns)

    @classmethod
    def from_sections(cls, oci: OCIConfig, dns: DNSConfig | None) -> NetworkOptions:
        """From ``[worker.oci]`` and ``[dns]`` (None: the defaults)."""
        return cls(oci.network_mode, oci.cni_config_path, oci.cni_binary_path,
                   oci.cni_pool_size, oci.bridge_name, oci.bridge_subnet,
                   dns if dns is not None else DNSConfig())


class Attachment(Model):
    """What one step runs in: ``mode`` is ``host``, ``none``, ``bridge``, ``cni`` or
    ``slirp4netns``;
    ``netns`` the namespace to join (None: the host's for ``host``, a new one for ``none``)."""

    mode: str
    netns: str | None = None
    address: str | None = None
    gateway: str | None = None
    entry: str | None = None  # the pool entry id


def step_resolv_conf(attachment: Attachment, dns: DNSConfig | None = None) -> str:
    """The resolv.conf of a step on ``attachment``: slirp4netns's forwarder
    (:func:`pybk.workers.slirp.resolv_conf`) on a ``slirp4netns`` namespace, else
    :func:`pybk.workers.spec.resolv_conf` of the mode."""
    from pybk.workers import spec

    if attachment.mode == "slirp4netns":
        return slirp.resolv_conf(spec.host_resolv_conf(), dns)
    return spec.resolv_conf(attachment.mode, dns=dns)


# ------------------------------------------------------------------------------------------
# namespaces
# ------------------------------------------------------------------------------------------


def create_netns(path: str) -> None:
    """A new network namespace, kept alive by a bind mount at ``path``.

    The namespace is entered on a short-lived thread, so the rest of the process never leaves
    its own namespace. In a user namespace that does not own the original network namespace
    (rootless), the thread cannot go back to it: it ends in the new one, taking it along.
    """
    with open(path, "x"):
        pass
    failure: list[BaseException] = []

    def enter_and_pin() -> None:
        lib = libc()
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if lib.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare network namespace: {os.strerror(err)}", path)
            try:
                sys_mount("/proc/thread-self/ns/net", path, None, MS_BIND)
            finally:
                if lib.setns(original, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    if not (err == errno.EPERM and rootless()):
                        raise OSError(err, "cannot return to the original network namespace")
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)
        finally:
            os.close(original)

    worker = threading.Thread(target=enter_and_pin, name="pybk-netns")
    worker.start()
    worker.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failure[0]


def remove_netns(path: str) -> None:
    with contextlib.suppress(OSError):
        unmount(path, lazy=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _ip(*args: str) -> None:
    try:
        subprocess.run([shutil.which("ip") or "ip", *args], stdin=subprocess.DEVNULL,
                       capture_output=True, check=False)
    except FileNotFoundError:
        raise cni.CNIError("the bridge network needs iproute2's ip (apt-get install "
                           "iproute2)") from None


def rootless() -> bool:
    """Whether the engine runs in a user namespace (``bridge`` is then ``slirp4netns``)."""
    from pybk.core.userns import in_user_namespace

    return in_user_namespace()


def resolve_mode(options: NetworkOptions) -> str:
    """The mode of a step's default network: ``auto`` is ``bridge`` when its CNI plugins and
    ``ip``/``iptables`` are found, else ``host``; the other modes are themselves. In a user
    namespace ``bridge`` is ``slirp4netns``, and so is ``auto`` when slirp4netns can be used
    (else ``host``)."""
    if rootless() and options.mode in ("auto", "bridge"):
        if options.mode == "auto" and slirp.missing() is not None:
            return "host"
        return "slirp4netns"
    if options.mode != "auto":
        return options.mode
    dirs = cni.binary_dirs(options.cni_binary_path)
    if cni.missing_plugins(cni.BRIDGE_PLUGINS, dirs) or _missing_tools():
        return "host"
    return "bridge"


def _missing_tools() -> list[str]:
    """What the bridge network needs besides the CNI plugins."""
    return [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]


def _bridge_lock(bridge: str) -> int:
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    return os.open(os.path.join(LOCK_DIR, f"net-{bridge}.lock"),
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def bridge_rules(bridge: str, subnet: str) -> list[tuple[str, str, list[str]]]:
    """``(table, chain, rule)`` of a pybk bridge, in order: steps reach out (forwarded and
    masqueraded), answers come back, nothing else comes in from other interfaces (and, with
    ``br_netfilter``, nothing passes between two ports of the bridge)."""
    tag = ["-m", "comment", "--comment", f"pybk bridge {bridge}"]
    return [
        ("filter", "FORWARD", ["-i", bridge, "!", "-o", bridge, *tag, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["-o", bridge, "-m", "conntrack", "--ctstate",
                               "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["-o", bridge, *tag, "-j", "DROP"]),
        ("nat", "POSTROUTING", ["-s", subnet, "!", "-o", bridge, *tag, "-j", "MASQUERADE"]),
    ]


def _iptables(*args: str) -> int:
    iptables = shutil.which("iptables")
    if iptables is None:
        raise cni.CNIError("the bridge network needs iptables (apt-get install iptables)")
    return subprocess.run([iptables, "-w", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, check=False).returncode


def ensure_bridge_rules(bridge: str, subnet: str) -> None:
    """Install the bridge's rules at the top of their chains, in order (all again when one
    is missing)."""
    rules = bridge_rules(bridge, subnet)
    if all(_iptables("-t", t, "-C", c, *r) == 0 for t, c, r in rules):
        return
    for table, chain, rule in rules:
        while _iptables("-t", table, "-D", chain, *rule) == 0:
            pass
    positions = {"FORWARD": 0, "POSTROUTING": 0}
    for table, chain, rule in rules:
        positions[chain] += 1
        if _iptables("-t", table, "-I", chain, str(positions[chain]), *rule) != 0:
            raise cni.CNIError(f"cannot add the {table} rules of bridge {bridge} "
                               f"({' '.join(rule)})")


def remove_bridge(bridge: str, subnet: str) -> None:
    """The bridge and its rules (pybk never does this itself: like Docker's ``docker0`` the
    bridge stays; what each step had goes with the step)."""
    _ip("link", "del", bridge)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(LOCK_DIR, f"net-{bridge}.ready"))
    for table, chain, rule in bridge_rules(bridge, subnet):
        while _iptables("-t", table, "-D", chain, *rule) == 0:
            pass


def prepare_bridge(bridge: str, subnet: str) -> None:
    """Make sure the bridge's rules are in place, once per bridge and boot: a marker in
    ``/run`` (a tmpfs, like the rules themselves gone at reboot) names the bridge's
    interface index and subnet when they were made; concurrent processes take turns."""
    marker = os.path.join(LOCK_DIR, f"net-{bridge}.ready")
    try:
        with open(f"/sys/class/net/{bridge}/ifindex", encoding="ascii") as f:
            expected = f"{f.read().strip()} {subnet}"
        with open(marker, encoding="ascii") as f:
            if f.read() == expected:
                return
    except OSError:
        pass
    fd = _bridge_lock(bridge)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ensure_bridge_rules(bridge, subnet)
        if not os.path.exists(f"/sys/class/net/{bridge}"):
            return  # the bridge plugin makes it; the marker is written on the next step
        with open(f"/sys/class/net/{bridge}/ifindex", encoding="ascii") as f:
            ready = f"{f.read().strip()} {subnet}"
        with open(marker + ".tmp", "w", encoding="ascii") as f:
            f.write(ready)
        os.replace(marker + ".tmp", marker)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------
# the providers and their pool
# ------------------------------------------------------------------------------------------


class Networks:
    """The network providers of one executor (``state_dir`` is the executor's)."""

    def __init__(self, state_dir: str, options: NetworkOptions | None = None):
        self.options = options or NetworkOptions()
        if self.options.mode not in NETWORK_MODES:
            raise BuildError(f"unknown network mode {self.options.mode!r} (expected one of "
                             f"{', '.join(NETWORK_MODES)})")
        self.dir = os.path.join(state_dir, "net")
        for sub in ("ns", "state", "idle", "busy"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o700, exist_ok=True)
        self.bridge = self.options.bridge_name
        self.subnet = self.options.bridge_subnet
        self.dirs = cni.binary_dirs(self.options.cni_binary_path)
        self._default: str | None = None
        self._network: cni.CNINetwork | None = None
        self._loopback: cni.CNINetwork | None = None
        self._key = ""
        self.state_dir = state_dir
        #: the slirp4netns of each namespace this process attached, by entry
        self._slirps: dict[str, slirp.Slirp] = {}

    # -- what "sandbox" is ------------------------------------------------------------

    def default_mode(self) -> str:
        """The mode of a step's default network, decided once (``auto`` warns once per
        process when it falls back to the host's network)."""
        global _auto_warned
        if self._default is None:
            mode = resolve_mode(self.options)
            if self.options.mode == "auto" and mode == "host" and not _auto_warned:
                _auto_warned = True
                if rootless():
                    print(f"WARNING: networkMode auto: {slirp.missing()}; rootless RUN steps "
                          "use the host's network", file=sys.stderr)
                    self._default = mode
                    return mode
                missing = cni.missing_plugins(cni.BRIDGE_PLUGINS, self.dirs)
                tools = _missing_tools()
                what = (f"CNI plugins not found ({', '.join(missing)} in "
                        f"{os.pathsep.join(self.dirs)})" if missing
                        else f"{' and '.join(tools)} not found")
                print(f"WARNING: networkMode auto: {what}; RUN steps use the host's "
                      "network (install containernetworking-plugins, iptables and "
                      "iproute2 for the bridge network)", file=sys.stderr)
            self._default = mode
        return self._default

    def network(self) -> cni.CNINetwork:
        """The CNI list of the default network (``bridge`` or ``cni`` mode)."""
        if self._network is None:
            mode = self.default_mode()
            if mode == "cni" and rootless():
                raise cni.CNIError("networkMode cni needs pybk running as real root (in a user "
                                   "namespace it cannot attach veths on the host); rootless, "
                                   "use bridge (slirp4netns), host or none")
            if mode == "bridge":
                missing = cni.missing_plugins(cni.BRIDGE_PLUGINS, self.dirs)
                if missing:
                    raise cni.CNIError(
                        f"networkMode bridge needs the CNI plugins {', '.join(missing)}, not "
                        f"found in {os.pathsep.join(self.dirs)} (install "
                        "containernetworking-plugins, or set cniBinaryPath)")
                conflist = cni.bridge_conflist(self.bridge, self.subnet)
            else:
                conflist = cni.load_config_file(self.options.cni_config_path)
            self._network = cni.CNINetwork(conflist, self.dirs)
            self._loopback = cni.CNINetwork(
                {"cniVersion": "1.0.0", "name": "loopback", "plugins": [{"type": "loopback"}]},
                self.dirs)
            self._key = hashlib.sha256(orjson.dumps(
                [conflist, self.dirs], option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        return self._network

    def effective(self, requested: str) -> str:
        """``host``, ``none``, ``bridge``, ``cni`` or ``slirp4netns`` for a step's
        ``sandbox|host|none``."""
        return self.default_mode() if requested == "sandbox" else requested

    # -- acquire / release --------------------------------------------------------------

    async def acquire(self, requested: str) -> Attachment:
        mode = self.effective(requested)
        if mode in ("host", "none"):
            return Attachment(mode)
        if mode == "slirp4netns":
            entry = await self._create_slirp()
            return Attachment(mode, os.path.join(self.dir, "ns", entry), slirp.ADDRESS,
                              slirp.GATEWAY, entry)
        network = self.network()
        entry = self._claim_idle()
        if entry is None:
            entry = await self._create(mode, network)
        state = self._state(entry)
        address, gateway = cni.result_address(state.get("result"))
        return Attachment(mode, os.path.join(self.dir, "ns", entry), address, gateway, entry)

    async def release(self, attachment: Attachment, *, reusable: bool = True) -> None:
        """Give a namespace back to the pool, or tear it down."""
        entry = attachment.entry
        if entry is None:
            return
        busy = os.path.join(self.dir, "busy", f"{entry}@{process_identity()}")
        state = self._state(entry)
        owner = state.get("owner", "")
        keep = (reusable and state.get("mode") != "slirp4netns" and state.get("key") == self._key
                and is_alive(owner)
                and len(os.listdir(os.path.join(self.dir, "idle"))) < self.options.pool_size)
        if keep:
            with contextlib.suppress(OSError):
                os.rename(busy, os.path.join(self.dir, "idle", f"{self._key}.{entry}"))
                return
        await self._destroy(entry, state)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(busy)

    def _claim_idle(self) -> str | None:
        idle = os.path.join(self.dir, "idle")
        me = process_identity()
        for name in os.listdir(idle):
            key, _, entry = name.partition(".")
            if key != self._key:
                continue
            try:
                os.rename(os.path.join(idle, name),
                          os.path.join(self.dir, "busy", f"{entry}@{me}"))
            except FileNotFoundError:
                continue  # another process took it
            return entry
        return None

    async def _create(self, mode: str, network: cni.CNINetwork) -> str:
        entry = os.urandom(8).hex()
        me = process_identity()
        state: dict[str, Any] = {
            "conflist": network.conflist, "dirs": network.dirs, "key": self._key,
            "owner": _pool_owner or me, "creator": me, "mode": mode, "ifname": "eth0",
            "bridge": self.bridge if mode == "bridge" else None,
            "subnet": self.subnet if mode == "bridge" else None, "result": None}
        self._write_state(entry, state)
        path = os.path.join(self.dir, "ns", entry)
        try:
            if mode == "bridge":
                await asyncio.to_thread(prepare_bridge, self.bridge, self.subnet)
            await asyncio.to_thread(create_netns, path)
            assert self._loopback is not None
            await self._loopback.add(f"pybk-{entry}", path, "lo")
            state["result"] = await network.add(f"pybk-{entry}", path, "eth0")
            if mode == "bridge":  # steps on the bridge do not reach each other
                for veth in cni.host_veths(state["result"]):
                    await asyncio.to_thread(_ip, "link", "set", "dev", veth, "type",
                                            "bridge_slave", "isolated", "on")
            self._write_state(entry, state)
        except BaseException:
            await asyncio.shield(self._destroy(entry, state))
            raise
        return self._mark_busy(entry, me)

    def _mark_busy(self, entry: str, me: str) -> str:
        """Mark the new namespace ``entry`` as this process's, in use; ``entry``."""
        with open(os.path.join(self.dir, "busy", f"{entry}@{me}"), "x"):
            pass
        _touched.add(self.state_dir)
        return entry

    async def _create_slirp(self) -> str:
        """A namespace with slirp4netns attached, for one step (not pooled: see
        docs/rootless.md, Networking, for what making one costs)."""
        entry = os.urandom(8).hex()
        me = process_identity()
        state: dict[str, Any] = {"key": "slirp4netns", "owner": me, "creator": me,
                                 "mode": "slirp4netns", "result": None}
        self._write_state(entry, state)
        path = os.path.join(self.dir, "ns", entry)
        try:
            await asyncio.to_thread(create_netns, path)
            attached = await asyncio.to_thread(slirp.attach, path)
            self._slirps[entry] = attached
            state["slirp_pid"] = attached.pid
            self._write_state(entry, state)
        except BaseException:
            await asyncio.shield(self._destroy(entry, state))
            raise
        return self._mark_busy(entry, me)

    async def _destroy(self, entry: str, state: dict[str, Any]) -> None:
        await asyncio.to_thread(self._destroy_sync, entry, state)

    def _destroy_sync(self, entry: str, state: dict[str, Any]) -> None:
        """CNI ``DEL`` (with the ADD's result), then the namespace and the files."""
        path = os.path.join(self.dir, "ns", entry)
        failure: Exception | None = None
        attached = self._slirps.pop(entry, None)
        if attached is not None:  # (one a dead process started went with it: --exit-fd)
            attached.stop(wait=False)
        if state.get("conflist"):
            try:
                network = cni.CNINetwork(state["conflist"], state.get("dirs") or self.dirs)
                network.delete(f"pybk-{entry}", path, state.get("ifname", "eth0"),
                               state.get("result"))
            except Exception as e:  # still remove the namespace: its veth goes with it
                failure = e
        remove_netns(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, "state", f"{entry}.json"))
        if failure is not None:
            print(f"WARNING: releasing network namespace {entry}: {failure}", file=sys.stderr)

    def _state(self, entry: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.dir, "state", f"{entry}.json"), "rb") as f:
                return orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def _write_state(self, entry: str, state: dict[str, Any]) -> None:
        path = os.path.join(self.dir, "state", f"{entry}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(state))
        os.replace(tmp, path)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Tear down the idle namespaces this process owns (an embedded build's, or the
        daemon's when it stops)."""
        me = process_identity()
        self._sweep(lambda state: state.get("owner") == me)

    def recover(self) -> list[str]:
        """Tear down what dead processes left: namespaces taken by a process that died,
        idle ones whose owner died, half-made ones whose creator died."""
        return self._sweep(lambda state: not is_alive(state.get("owner", "")))

    def _sweep(self, idle_owner_gone: Callable[[dict[str, Any]], bool]) -> list[str]:
        removed: list[str] = []
        me = process_identity()
        entries: list[tuple[str, dict[str, Any]]] = []
        for name in os.listdir(os.path.join(self.dir, "idle")):
            entry = name.partition(".")[2]
            state = self._state(entry)
            if not idle_owner_gone(state):
                continue
            try:  # take it first, so no other process claims it meanwhile
                os.rename(os.path.join(self.dir, "idle", name),
                          os.path.join(self.dir, "busy", f"{entry}@{me}"))
            except FileNotFoundError:
                continue
            entries.append((entry, state))
        for name in os.listdir(os.path.join(self.dir, "busy")):
            entry, _, who = name.partition("@")
            if who == me or is_alive(who):
                continue
            try:  # taken over: of two processes recovering, one tears it down
                os.rename(os.path.join(self.dir, "busy", name),
                          os.path.join(self.dir, "busy", f"{entry}@{me}"))
            except FileNotFoundError:
                continue
            entries.append((entry, self._state(entry)))
        marked = {n.partition(".")[2] for n in os.listdir(os.path.join(self.dir, "idle"))}
        marked |= {n.partition("@")[0] for n in os.listdir(os.path.join(self.dir, "busy"))}
        for path in glob.glob(os.path.join(self.dir, "state", "*.json")):
            entry = os.path.basename(path)[:-5]
            state = self._state(entry)
            if entry not in marked and not is_alive(state.get("creator", "")):
                entries.append((entry, state))  # died while making it
        for entry, state in entries:
            self._destroy_sync(entry, state)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, "busy", f"{entry}@{me}"))
            removed.append(entry)
        for path in glob.glob(os.path.join(self.dir, "ns", "*")):  # pins with no state left
            if not os.path.exists(os.path.join(self.dir, "state",
                                               os.path.basename(path) + ".json")):
                remove_netns(path)
        return removed
