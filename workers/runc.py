"""Run ExecOp processes in runc.

One run = one bundle directory ``<state>/bundles/<id>`` (mode 0700, as are ``<state>``,
``bundles`` and the runtime's ``runc``): the root mounts are mounted on ``rootfs``,
``config.json`` (mode 0600: it holds the step's environment, secret values included) comes from
:mod:`pybk.workers.spec`, secrets live on a per-run tmpfs in the bundle, and ``runc run`` is
started with stdio piped to the callbacks (and stdin fed from the optional ``stdin`` bytes or
async stream; ``/dev/null`` otherwise). Mount points that
runc had to create in the rootfs are removed again when they are still empty (BuildKit's
mount-stub cleaning), so a snapshot only changes by what the process wrote. Whatever happens —
exit, error, cancellation — the container is killed and deleted, every mount is taken down and
the bundle removed. A process killed outright (SIGKILL) takes its containers with it: a watcher
(:data:`WATCHER`) force-deletes them as soon as it is gone; their mounts and bundles are
cleaned up by the next process that runs a step on the store (:meth:`RuncExecutor.reap_stale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import orjson

from pybk.core.errors import BuildError, NotAvailableError, StepLimitError
from pybk.core.fs.files import private_dir, private_file
from pybk.core.interfaces import (
    ExecMount,
    Executor,
    Mount,
    OutputCallback,
    ProcessSpec,
    SecretMount,
    SSHMount,
    StdinSource,
)
from pybk.core.model import evolve
from pybk.core.store.locks import pid_alive
from pybk.core.store.mounts import (
    FUSE_PREFIXES,
    cleanup_stale_mounts,
    find_mounts_under,
    mount,
    mount_all,
    unmount_all,
)
from pybk.workers import limits as steplimits
from pybk.workers import rootless as rootlessspec
from pybk.workers import spec as ocispec
from pybk.workers.network import Attachment, NetworkOptions, Networks, step_resolv_conf
from pybk.workers.user import ResolvedUser, resolve_user, root_path

_KILL_ATTEMPTS = 200  # x 25 ms

#: the watcher (``sh -c WATCHER RUNTIME ROOT PID BUNDLES``): waits for end of file on its stdin,
#: a pipe whose only writer is the process running containers; when that process is gone
#: (exited or SIGKILLed), force-deletes (SIGKILL) every container its id names, ``pybk-PID-*``.
#: While bundles of that process remain (it did not clean up: killed), a second pass a second
#: later catches a container ``runc run`` was still creating at the first.
WATCHER = ('read _; for pass in 1 2; do '
           'for id in $("$0" --root "$1" list -q 2>/dev/null); do case "$id" in '
           '"pybk-$2-"*) "$0" --root "$1" delete --force "$id" >/dev/null 2>&1;; esac; done; '
           '[ "$pass" = 1 ] && [ -n "$(ls -d "$3/pybk-$2-"* 2>/dev/null)" ] || break; '
           'sleep 1; done')


# ------------------------------------------------------------------------------------------
# rootfs preparation
# ------------------------------------------------------------------------------------------


def missing_stubs(rootfs: str, dests: Sequence[str]) -> list[str]:
    """Host paths runc will have to create for ``dests``: each missing path and its missing
    parents, deepest first."""
    paths: list[str] = []
    for dest in dests:
        try:
            real = root_path(rootfs, dest)
        except OSError:
            continue
        while real != rootfs:
            try:
                os.lstat(real)
                break
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                    break
            if real not in paths:
                paths.append(real)
            real = os.path.dirname(real)
    return sorted(paths, key=lambda p: p.count("/"), reverse=True)


def remove_stubs(paths: Sequence[str]) -> None:
    """Remove stub files and directories that stayed empty; removing one does not touch its
    parent's timestamps."""
    for path in paths:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                if os.listdir(path):
                    continue
            elif st.st_size != 0:
                continue
            parent = os.path.dirname(path)
            pst = os.stat(parent)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
            os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns))
        except OSError:
            continue


def create_cwd(rootfs: str, cwd: str, user: ResolvedUser) -> None:
    """Create the working directory if missing; only the new directories get the user's ids."""
    try:
        target = root_path(rootfs, cwd)
        missing = []
        path = target
        while path != rootfs and not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
            os.lchown(path, user.uid, user.gid)
    except OSError as e:
        raise BuildError(f"failed to create working directory {cwd}: {e.strerror}") from e


def write_secrets(directory: str, secrets: Sequence[SecretMount]) -> list[dict[str, Any]]:
    """Mount a tmpfs on ``directory``, write each secret there, return read-only bind entries."""
    os.makedirs(directory, mode=0o700)
    size = sum(len(s.data) for s in secrets) + 4096 * (len(secrets) + 16)
    mount(Mount("tmpfs", "tmpfs", ("nosuid", "nodev", "noexec", "mode=0700", f"size={size}")),
          directory)
    entries = []
    for index, secret in enumerate(secrets):
        path = os.path.join(directory, str(index))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            view = memoryview(secret.data)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, secret.uid, secret.gid)
            os.fchmod(fd, secret.mode)
        finally:
            os.close(fd)
        entries.append({"destination": secret.dest, "type": "bind", "source": path,
                        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    return entries


class AgentProxy:
    """A unix socket owned by the container user that forwards to an SSH agent socket."""

    def __init__(self, agent_socket: str):
        self.agent_socket = agent_socket
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self, path: str, uid: int, gid: int, mode: int) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            agent_reader, agent_writer = await asyncio.open_unix_connection(self.agent_socket)
        except OSError:
            writer.close()
            self.connections.discard(task)
            return
        try:
            await asyncio.gather(_copy(reader, agent_writer), _copy(agent_reader, writer))
        finally:
            for w in (writer, agent_writer):
                w.close()
            self.connections.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.gather(*self.connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _pump(stream: asyncio.StreamReader, callback: OutputCallback | None) -> None:
    while chunk := await stream.read(65536):
        if callback is not None:
            callback(chunk)



async def _feed(pipe: asyncio.StreamWriter, source: StdinSource) -> None:
    """Write ``source`` to the process's stdin, then close it; a process that stopped
    reading (closed pipe) ends the feeding quietly."""
    try:
        if isinstance(source, bytes):
            pipe.write(source)
            await pipe.drain()
        else:
            async for chunk in source:
                pipe.write(chunk)
                await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            pipe.close()



def _unmount_rootfs(rootfs: str) -> None:
    """Take a finished step's root down; still busy after unmount's retries (a process of the
    stopped container not reaped yet, on a loaded machine), detach it instead: the step is done
    and its result is in the snapshot, so a late unmount must not fail the build."""
    try:
        unmount_all(rootfs)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        unmount_all(rootfs, lazy=True)


def _remove_tree(path: str) -> None:
    """Remove a bundle or scratch directory, never descending into something still mounted."""
    if find_mounts_under(path):
        cleanup_stale_mounts(path)
    if find_mounts_under(path):
        raise OSError(errno.EBUSY, f"refusing to remove {path}: still mounted", path)
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# the executor
# ------------------------------------------------------------------------------------------


class RuncExecutor(Executor):
    """:class:`~pybk.core.interfaces.Executor` on an OCI runtime CLI (runc or crun).

    ``state_dir`` holds the runtime's state (``runc/``) and the bundles (``bundles/``); several
    processes may share it: a bundle's name carries the pid of the process that owns it.
    ``limits``: what every container may use (:mod:`pybk.workers.limits`); ``store``: the
    store the steps write to, named when one fills its disk (default: ``state_dir``'s parent).
    ``rootless``: the runtime runs with ``--rootless true``, the spec has no cgroups and
    nothing that needs real root (:mod:`pybk.workers.rootless`).
    """

    def __init__(self, state_dir: str | os.PathLike[str], binary: str = "runc", *,
                 no_process_sandbox: bool = False, network: NetworkOptions | None = None,
                 limits: steplimits.StepLimits | None = None, store: str | None = None,
                 rootless: bool = False):
        self.state_dir = os.path.abspath(os.fspath(state_dir))
        self.limits = limits or steplimits.StepLimits()
        self.store = store or os.path.dirname(self.state_dir)
        #: whether the runtime has ``run --keep`` (a stopped container's cgroups are read
        #: before it is deleted); None: not asked yet
        self._keep: bool | None = None
        self.binary = binary
        self.rootless = rootless
        self.no_process_sandbox = no_process_sandbox
        self.runtime_root = os.path.join(self.state_dir, "runc")
        self.bundles = os.path.join(self.state_dir, "bundles")
        for path in (self.state_dir, self.runtime_root, self.bundles):
            private_dir(path)
        self.network_options = network or NetworkOptions()
        self.networks = Networks(self.state_dir, self.network_options)
        #: (owner pid, write end of the watcher's pipe, the watcher): see :meth:`_watch`
        self._watcher: tuple[int, int, subprocess.Popen] | None = None

    def close(self) -> None:
        """Tear down the pooled network namespaces this process owns; let the watcher go."""
        self.networks.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher[0] == os.getpid():
            os.close(watcher[1])
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher[2].wait(5)

    def _watch(self) -> None:
        """Make sure this process has a watcher: a ``sh`` in a session of its own reading a
        pipe only this process writes to. A process killed outright (SIGKILL) cannot kill its
        containers, and ``runc run``'s container init outlives runc; the watcher sees the pipe
        close and force-deletes the containers named after this process (their mounts and
        bundles are cleaned by the next :meth:`reap_stale`). A forked child (pybkd's) starts its
        own."""
        if self._watcher is not None:
            if self._watcher[0] == os.getpid():
                return
            os.close(self._watcher[1])  # the parent's, inherited: its watcher is its own
            self._watcher = None
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            watcher = subprocess.Popen(
                ["/bin/sh", "-c", WATCHER, self.binary, self.runtime_root, str(os.getpid()),
                 self.bundles],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._watcher = (os.getpid(), write, watcher)

    def _runtime(self, *args: str) -> list[str]:
        return [self.binary, *rootlessspec.runtime_flags(self.binary, self.rootless),
                "--root", self.runtime_root, *args]

    def reap_stale(self) -> list[str]:
        """Clean up after processes that died mid-run (kill -9): their containers, mounts and
        bundles. Returns the container ids removed."""
        removed = []
        for name in sorted(os.listdir(self.bundles)):
            parts = name.split("-")
            if len(parts) != 3 or not parts[1].isdigit() or pid_alive(int(parts[1])):
                continue
            with contextlib.suppress(OSError):
                subprocess.run(self._runtime("delete", "--force", name),
                               stdin=subprocess.DEVNULL, capture_output=True, check=False)
            self._remove_half_created(name)
            path = os.path.join(self.bundles, name)
            with contextlib.suppress(OSError):
                _remove_tree(path)
                removed.append(name)
            for scratch in glob.glob(os.path.join(tempfile.gettempdir(),
                                                  f"pybk-ssh-{parts[1]}-*")):
                shutil.rmtree(scratch, ignore_errors=True)
        self.networks.recover()
        return removed

    async def run(
        self,
        process: ProcessSpec,
        root: Sequence[Mount],
        mounts: Sequence[ExecMount] = (),
        *,
        secrets: Sequence[SecretMount] = (),
        ssh: Sequence[SSHMount] = (),
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        stdin: StdinSource | None = None,
    ) -> int:
        """Run ``process`` on ``root`` with ``mounts``; return its exit code.

        ``stdin``: bytes, or an async iterable of byte chunks written as they come; the
        process's stdin is closed after the last one (None: ``/dev/null``).
        """
        ocispec.validate(process)
        if self.rootless:
            rootlessspec.check_step(process.cgroup_parent, process.resources, process.ulimits)
        container_id = f"pybk-{os.getpid()}-{os.urandom(8).hex()}"
        bundle = os.path.join(self.bundles, container_id)
        private_dir(bundle)  # config.json holds the step's environment (secret env values)
        async with contextlib.AsyncExitStack() as cleanup:
            cleanup.callback(_remove_tree, bundle)
            rootfs = os.path.join(bundle, "rootfs")
            os.mkdir(rootfs, 0o700)
            mount_all(root, rootfs)
            cleanup.callback(_unmount_rootfs, rootfs)

            dests = ["/etc/resolv.conf", "/etc/hosts", *(m.dest for m in mounts),
                     *(s.dest for s in secrets), *(s.dest for s in ssh)]
            cleanup.callback(remove_stubs, missing_stubs(rootfs, dests))

            user = resolve_user(rootfs, process.user)
            create_cwd(rootfs, process.cwd, user)
            extra = await self._prepare_mounts(bundle, mounts, secrets, ssh, cleanup)
            attachment = await self.networks.acquire(process.network)
            cleanup.push_async_callback(self.networks.release, attachment,
                                        reusable=process.security != "insecure")
            effective = process if attachment.mode != "host" else evolve(
                process, network="host")

            hosts = os.path.join(bundle, "hosts")
            resolv = os.path.join(bundle, "resolv.conf")
            _write_text(hosts, ocispec.hosts_file(
                process.hostname, _gateway_hosts(process.extra_hosts, attachment)))
            _write_text(resolv, step_resolv_conf(attachment, self.network_options.dns))
            limits = self.limits.for_step(process.resources)
            cgroups_path = steplimits.cgroups_path(
                process.cgroup_parent or limits.cgroup_parent, container_id)
            config = ocispec.generate_spec(
                effective, rootfs=rootfs, user=user, mounts=extra, hosts_path=hosts,
                resolv_conf_path=resolv, netns_path=attachment.netns,
                no_process_sandbox=self.no_process_sandbox, limits=limits,
                cgroups_path=cgroups_path)
            if self.rootless:
                rootlessspec.convert_spec(config)
            private_file(os.path.join(bundle, "config.json"), orjson.dumps(config))
            keep = not self.rootless and await self._keeps()
            if keep:
                cleanup.push_async_callback(
                    _quiet, self._runtime("delete", "--force", container_id))
            code = await self._run_container(container_id, bundle, stdout, stderr, stdin,
                                             keep=keep)
            command = " ".join(process.args)
            if code not in process.valid_exit_codes:
                reason = await asyncio.to_thread(self._why_failed, container_id, rootfs, keep,
                                                 limits)
                if reason:
                    raise StepLimitError(command, code, reason)
            else:  # a step that filled the disk and ignored it: its snapshot cannot be kept
                full = await asyncio.to_thread(steplimits.disk_full, rootfs, self.store)
                if full:
                    raise StepLimitError(command, code, full, completed=True)
            return code

    async def _keeps(self) -> bool:
        """Whether the runtime has ``run --keep`` (runc does; crun does not)."""
        if self._keep is None:
            try:
                child = await asyncio.create_subprocess_exec(
                    self.binary, "run", "--help", stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out, _ = await child.communicate()
            except OSError:
                out = b""
            self._keep = b"--keep" in out
        return self._keep

    def _why_failed(self, container_id: str, rootfs: str, kept: bool,
                    limits: steplimits.StepLimits) -> str | None:
        """Which limit stopped a failed step, if one did: its memory or pids cgroup (of the
        stopped container, still there when ``kept``), or a full disk under its root."""
        if kept:
            paths = steplimits.cgroup_paths(os.path.join(self.runtime_root, container_id))
            reason = steplimits.inspect_cgroups(paths, limits)
            if reason:
                return reason
        return steplimits.disk_full(rootfs, self.store)

    async def _prepare_mounts(self, bundle: str, mounts: Sequence[ExecMount],
                              secrets: Sequence[SecretMount], ssh: Sequence[SSHMount],
                              cleanup: contextlib.AsyncExitStack) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for index, em in enumerate(mounts):
            if any(m.type.startswith(FUSE_PREFIXES) for m in em.mounts):
                em = self._premount(bundle, index, em, cleanup)
            entries += ocispec.exec_mount_entries(em)
        if secrets:
            secret_dir = os.path.join(bundle, "secrets")
            cleanup.callback(unmount_all, secret_dir)
            entries += write_secrets(secret_dir, secrets)
        if ssh:
            scratch = tempfile.mkdtemp(prefix=f"pybk-ssh-{os.getpid()}-")
            cleanup.callback(shutil.rmtree, scratch, True)
            for index, agent in enumerate(ssh):
                proxy = AgentProxy(agent.socket)
                cleanup.push_async_callback(proxy.close)
                sock = os.path.join(scratch, f"{index}.sock")
                await proxy.start(sock, agent.uid, agent.gid, agent.mode)
                entries.append({"destination": agent.dest, "type": "bind", "source": sock,
                                "options": ["rbind", "nosuid", "nodev", "noexec"]})
        return entries

    @staticmethod
    def _premount(bundle: str, index: int, em: ExecMount,
                  cleanup: contextlib.AsyncExitStack) -> ExecMount:
        """A mount the runtime cannot make (a FUSE snapshot: fuse-overlayfs) is mounted here,
        in the bundle, and bound into the container."""
        target = os.path.join(bundle, "mnt", str(index))
        os.makedirs(target, mode=0o700)
        mount_all(em.mounts, target)
        cleanup.callback(_unmount_rootfs, target)
        return evolve(em, mounts=(Mount("bind", target, ("rbind",)),))

    async def _run_container(self, container_id: str, bundle: str,
                             stdout: OutputCallback | None,
                             stderr: OutputCallback | None,
                             stdin: StdinSource | None = None, *, keep: bool = False) -> int:
        self._watch()
        # Spawning is shielded: a cancellation that lands while the runtime is being started
        # must still find (and kill) the container it is creating.
        run = ("run", "--keep") if keep else ("run",)
        spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *self._runtime(*run, "--bundle", bundle, container_id),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        try:
            proc = await asyncio.shield(spawn)
        except FileNotFoundError as e:
            raise NotAvailableError(f"OCI runtime {self.binary!r} not found") from e
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                started = await spawn
                await self._kill(container_id, started)
            raise
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.ensure_future(_pump(proc.stdout, stdout)),
                 asyncio.ensure_future(_pump(proc.stderr, stderr))]
        feeder = None
        if stdin is not None:
            assert proc.stdin is not None
            feeder = asyncio.ensure_future(_feed(proc.stdin, stdin))
        try:
            code = await proc.wait()
            await asyncio.gather(*pumps)
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
        except BaseException:
            # A second cancellation must not leave the container running: finish the kill.
            kill = asyncio.ensure_future(self._kill(container_id, proc))
            while not kill.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(kill)
            kill.result()
            for task in (*pumps, feeder):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*pumps, *(t for t in (feeder,) if t is not None),
                                 return_exceptions=True)
            raise
        return 128 - code if code < 0 else code

    async def _kill(self, container_id: str, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL the container (retrying while runc is still creating it), then delete it."""
        kill_args = ["kill", "--all"] if self.no_process_sandbox else ["kill"]
        for _ in range(_KILL_ATTEMPTS):
            if proc.returncode is not None:
                break
            await _quiet(self._runtime(*kill_args, container_id, "KILL"))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.025)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await _quiet(self._runtime("delete", "--force", container_id))
        await asyncio.to_thread(self._remove_half_created, container_id)

    def _remove_half_created(self, container_id: str) -> None:
        """Clean up a container whose creation was interrupted: runc has no state for it, so
        ``runc delete`` cannot; kill its ``runc init`` (found by its state dir) and remove
        the state dir and the cgroups named after it (under the default cgroup parent too)."""
        state = os.path.join(self.runtime_root, container_id)
        if not os.path.isdir(state):
            return
        marker = f"_LIBCONTAINER_STATEDIR={state}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _remove_tree(state)
            if not os.path.exists(state):
                break
            time.sleep(0.01)
        parent = steplimits.cgroups_path(self.limits.cgroup_parent, container_id) or ""
        for cgroup in glob.glob(f"/sys/fs/cgroup/*/{container_id}") + glob.glob(
                f"/sys/fs/cgroup/{container_id}") + (glob.glob(
                f"/sys/fs/cgroup/*{parent}") + glob.glob(f"/sys/fs/cgroup{parent}")
                if parent else []):
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)


async def _quiet(argv: list[str]) -> int:
    """Run a runtime maintenance command, ignoring its output."""
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return await child.wait()


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o644)


def _gateway_hosts(extra_hosts: Sequence[tuple[str, str]],
                   attachment: Attachment) -> list[tuple[str, str]]:
    """``--add-host NAME=host-gateway`` names the host as the step sees it: the gateway of
    its bridge or CNI network, the loopback address on the host's network."""
    gateway = attachment.gateway or "127.0.0.1"
    return [(host, gateway if ip == "host-gateway" else ip) for host, ip in extra_hosts]
