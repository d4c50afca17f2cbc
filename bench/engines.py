"""The build engines the benchmark compares, and the local services they need.

Every engine answers the same calls: ``start`` (set up its state under a work directory),
``reset`` (make the next build cold), ``build`` (one timed build of a case's context) and
``stop``. A build that fails raises :class:`EngineFailure` carrying the error's first line.
Only the standard library is used, so the harness measures the engines and not itself.
"""

from __future__ import annotations

import abc
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass

BUILD_TIMEOUT = 900
DOCKER_CLIENT = "/usr/bin/docker"
IP_FREEBIND = 15  # bind an address before its interface has it (pybk's bridge comes and goes)
#: where a pybk RUN step on its default (bridge) network reaches this machine: the gateway of
#: the OCI worker's ``bridgeSubnet`` (10.10.0.0/16 unless a buildkitd.toml says otherwise)
PYBK_GATEWAY = "10.10.0.1"


class EngineFailure(Exception):
    """A build or a set-up step failed; ``str()`` is the error's first line."""


@dataclass(frozen=True)
class BaseImage:
    """One base image, both as an OCI layout (pybk's ``--pybk-base layout`` variant) and a
    reference in the local registry (every engine by default)."""

    name: str
    layout: str
    ref: str


@dataclass(frozen=True)
class BuildRequest:
    """What one timed build needs: the case's context and how its result is exported."""

    case: str
    context: str
    dockerfile: str
    base: BaseImage
    output_dir: str
    export: str | None = None  # None: the engine's default result; "gzip"/"zstd": an OCI tar
    network: bool = False  # RUN steps on the engine's default network (else none)
    build_args: tuple[tuple[str, str], ...] = ()


def network_flags(request: BuildRequest) -> list[str]:
    """The same network for every engine: ``--network none`` unless the case needs one (then
    no flag: each engine's default network). pybk, ``docker build`` and ``buildah bud`` all
    take the flag for every RUN step of the build."""
    return [] if request.network else ["--network", "none"]


def build_arg_flags(request: BuildRequest) -> list[str]:
    return [arg for name, value in request.build_args for arg in ("--build-arg", f"{name}={value}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_error_line(text: str) -> str:
    """The line a user would read first: the first one mentioning an error, else the last one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "failed" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def run_checked(cmd: list[str], env: dict | None = None, timeout: float = BUILD_TIMEOUT) -> str:
    """Run a command; raise EngineFailure with the first error line when it fails."""
    try:
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineFailure(f"timed out after {timeout:.0f} s: {' '.join(cmd[:3])}") from None
    except OSError as e:
        raise EngineFailure(f"{cmd[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        raise EngineFailure(first_error_line(proc.stderr + "\n" + proc.stdout)
                            + f" (exit {proc.returncode})")
    return proc.stdout


def timed(cmds: list[list[str]], env: dict | None = None) -> float:
    """Wall time of running the commands one after another."""
    start = time.perf_counter()
    for cmd in cmds:
        run_checked(cmd, env=env)
    return time.perf_counter() - start


def stop_process(proc: subprocess.Popen | None, grace: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def unmount_under(path: str) -> None:
    """Lazily unmount whatever an engine left mounted under ``path`` (deepest first)."""
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for point in sorted((p for p in points if p == path or p.startswith(path + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_tree(path: str) -> None:
    if os.path.lexists(path):
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


class Registry:
    """A Distribution registry on a free 127.0.0.1 port, with its own minimal config."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        config = os.path.join(self.workdir, "config.yml")
        with open(config, "w") as f:
            f.write("version: 0.1\n"
                    f"storage: {{filesystem: {{rootdirectory: {self.workdir}/data}}, "
                    "delete: {enabled: true}}\n"
                    f"http: {{addr: {self.host}}}\n"
                    "log: {level: error}\n")
        with open(os.path.join(self.workdir, "registry.log"), "w") as log:
            self.proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", config],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineFailure(f"registry exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise EngineFailure("registry did not answer /v2/ within 30 s")

    def push_layout(self, layout: str, name: str) -> str:
        """Push an OCI layout's ``latest`` as a Docker v2 image; return the reference."""
        ref = f"{self.host}/{name}:latest"
        run_checked(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2",
                     f"oci:{layout}:latest", f"docker://{ref}"])
        return ref

    def stop(self) -> None:
        stop_process(self.proc)


class FileServer:
    """Serves the files of one directory over HTTP on given addresses (one threaded server
    each, bound with IP_FREEBIND so an address whose bridge does not exist yet works) and one
    port; counts the files it served."""

    def __init__(self, directory: str):
        self.directory = directory
        self.servers: dict[str, http.server.HTTPServer] = {}
        self.port = 0
        self.lock = threading.Lock()
        self.served = 0
        self.clients: dict[str, int] = {}  # client address -> files served to it

    def start(self, addresses: list[str]) -> None:
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=outer.directory, **kwargs)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = os.path.join(outer.directory, self.path.lstrip("/"))
                super().do_GET()
                if os.path.isfile(path):
                    with outer.lock:
                        outer.served += 1
                        client = self.client_address[0]
                        outer.clients[client] = outer.clients.get(client, 0) + 1

            def log_message(self, *args) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def server_bind(self) -> None:
                # no HTTPServer.server_bind: it would look the address up (getfqdn)
                self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

        for address in addresses:
            if address in self.servers:
                continue
            server = self._bind(Server, Handler, address)
            self.servers[address] = server
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def _bind(self, server_class, handler, address: str):
        """One port for every address: the first one's, picked by the kernel."""
        if self.port:
            return server_class((address, self.port), handler)
        server = server_class((address, 0), handler)
        self.port = server.server_address[1]
        return server

    def url(self, address: str) -> str:
        return f"http://{address}:{self.port}"

    def stop(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        self.servers.clear()


class Engine(abc.ABC):
    """One build engine. ``unavailable`` is set when it cannot run on this machine."""

    name = ""
    label = ""
    unavailable: str | None = None
    #: it pulls ``FROM`` from the local registry (needs it, and skopeo to fill it)
    uses_registry = True

    @abc.abstractmethod
    def start(self, workdir: str, registry: Registry) -> None:
        """Prepare the engine's state under ``workdir``."""

    def unsupported(self, request: BuildRequest) -> str | None:
        """Why this engine cannot run the request at all (a fixed n/a cell), else None."""
        return None

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop every cache and image so the next build is cold."""

    @abc.abstractmethod
    def build(self, request: BuildRequest) -> float:
        """Run one build and return its wall time in seconds."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop what ``start`` started and drop the engine's state."""

    def version(self) -> str:
        return ""

    def gateway(self) -> str | None:
        """The address of this machine as a RUN step on the default network sees it (a
        server the steps fetch from binds it), or None when the engine has no such network."""
        return None


#: how pybk gets its base image: ``registry`` (the default, like BuildKit and buildah: ``FROM``
#: resolved and pulled from the local registry, the result tagged ``bench-CASE`` in its store)
#: or ``layout`` (the old command line: the base as a named oci-layout context, no tag)
PYBK_BASES = ("registry", "layout")


class Pybk(Engine):
    """``pybk build -f Dockerfile -t bench-CASE`` pulling ``FROM`` from the local registry
    (plain HTTP: pybk's client speaks HTTP to loopback registries unless configured otherwise);
    with ``base="layout"`` the old way: the base as a named oci-layout context, no tag."""

    name = "pybk"
    label = "pybk"

    def __init__(self, command: str | None = None, base: str = "registry"):
        self.command = command or shutil.which("pybk") or ""
        if not self.command:
            self.unavailable = "pybk command not found"
        self.base = base
        self.uses_registry = base == "registry"
        if base == "layout":
            self.label = f"{self.label} [layout]"
        self.root = ""
        self.generation = 0

    def start(self, workdir: str, registry: Registry) -> None:
        self.workdir = workdir
        self.reset()

    def reset(self) -> None:
        if self.root:
            remove_tree(self.root)
        self.generation += 1
        self.root = os.path.join(self.workdir, f"store-{self.generation}")

    def global_flags(self) -> list[str]:
        """What goes before ``build``: the store (the daemon engine: its address)."""
        return ["--root", self.root]

    def build(self, request: BuildRequest) -> float:
        if self.base == "layout":
            base = ["--build-context", f"{request.base.name}=oci-layout://{request.base.layout}",
                    "--build-arg", f"BASE={request.base.name}"]
        else:
            base = ["--build-arg", f"BASE={request.base.ref}"]
        cmd = [self.command, *self.global_flags(), "build", "-f", request.dockerfile,
               "--progress", "quiet", *base, *network_flags(request),
               *build_arg_flags(request)]
        if request.export:
            cmd += ["-o", f"type=oci,dest={request.output_dir}/image.tar,"
                          f"compression={request.export}"]
        elif self.base != "layout":
            cmd += ["-t", f"bench-{request.case}"]  # the image exporter into pybk's store
        cmd.append(request.context)
        return timed([cmd])

    def version(self) -> str:
        try:
            return run_checked([self.command, "--version"], timeout=30).strip()
        except EngineFailure as e:
            return str(e)

    def gateway(self) -> str | None:
        return PYBK_GATEWAY

    def stop(self) -> None:
        if self.root:
            remove_tree(self.root)


class Pybkd(Pybk):
    """``pybk --addr unix://… build`` answered by a running ``pybkd``: the same build as
    ``pybk``, without the interpreter start-up and imports on every call. Cold means what it
    means for ``pybk``, an empty store: ``reset`` restarts the daemon on a new ``--root``
    (not timed, like dockerd's start-up for BuildKit)."""

    name = "pybkd"
    label = "pybkd"

    def __init__(self, command: str | None = None, daemon: str | None = None,
                 base: str = "registry"):
        super().__init__(command, base=base)
        self.daemon = daemon or shutil.which("pybkd") or ""
        if not self.daemon:
            self.unavailable = "pybkd command not found"
        self.proc: subprocess.Popen | None = None
        self.socket = ""

    def start(self, workdir: str, registry: Registry) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "pybkd.sock")
        super().start(workdir, registry)

    def global_flags(self) -> list[str]:
        return ["--addr", f"unix://{self.socket}"]

    def reset(self) -> None:
        stop_process(self.proc)
        super().reset()
        with open(os.path.join(self.workdir, "pybkd.log"), "a") as log:
            self.proc = subprocess.Popen(
                self.daemon_command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_process(self.proc)
                with open(os.path.join(self.workdir, "pybkd.log")) as log:
                    last = [line.strip() for line in log.read().splitlines() if line.strip()]
                raise EngineFailure("pybkd did not start: "
                                    + (last[-1] if last else "(nothing in its log)"))
            time.sleep(0.05)

    def daemon_command(self) -> list[str]:
        return [self.daemon, "--root", self.root, "--addr", f"unix://{self.socket}"]

    def stop(self) -> None:
        stop_process(self.proc)
        super().stop()


class PybkdTcp(Pybkd):
    """``pybk --addr tcp://127.0.0.1:PORT --tlsdir … build``: the same daemon as a remote
    builder over gRPC with mutual TLS on loopback. The context crosses the session (the daemon
    keeps its copy), the output image stays in the daemon's store, an ``oci`` export streams
    back to the client. Certificates are made once per run (``trustme``)."""

    name = "pybkd-tcp"
    label = "pybkd (tcp+mTLS)"

    def start(self, workdir: str, registry: Registry) -> None:
        try:
            import trustme
        except ImportError:
            self.unavailable = "trustme is not installed (pip install trustme)"
            raise EngineFailure(self.unavailable) from None
        os.makedirs(workdir, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        client = ca.issue_cert("bench-client")
        self.tlsdir = os.path.join(workdir, "tls")
        os.makedirs(self.tlsdir, exist_ok=True)
        ca.cert_pem.write_to_path(os.path.join(self.tlsdir, "ca.pem"))
        client.cert_chain_pems[0].write_to_path(os.path.join(self.tlsdir, "cert.pem"))
        client.private_key_pem.write_to_path(os.path.join(self.tlsdir, "key.pem"))
        server.cert_chain_pems[0].write_to_path(os.path.join(workdir, "server.pem"))
        server.private_key_pem.write_to_path(os.path.join(workdir, "server-key.pem"))
        self.port = free_port()
        self.config = os.path.join(workdir, "buildkitd.toml")
        with open(self.config, "w") as f:
            f.write(f'[grpc]\naddress = ["tcp://127.0.0.1:{self.port}"]\n[grpc.tls]\n'
                    f'cert = "{workdir}/server.pem"\nkey = "{workdir}/server-key.pem"\n'
                    f'ca = "{self.tlsdir}/ca.pem"\n')
        super().start(workdir, registry)

    def global_flags(self) -> list[str]:
        return ["--addr", f"tcp://127.0.0.1:{self.port}", "--tlsdir", self.tlsdir]

    def daemon_command(self) -> list[str]:
        return [self.daemon, "--root", self.root, "--config", self.config, "--addr",
                f"unix://{self.socket}", "--addr", f"tcp://127.0.0.1:{self.port}"]


class BuildKit(Engine):
    """BuildKit inside a dockerd started by hand: ``DOCKER_BUILDKIT=1 docker build``."""

    name = "buildkit"
    label = "BuildKit"

    def __init__(self, network: bool = False):
        for binary in ("/usr/sbin/dockerd", DOCKER_CLIENT):
            if not os.path.exists(binary):
                self.unavailable = f"{binary} not installed"
        self.network = network  # give dockerd its default bridge (docker0) for RUN steps
        self.proc: subprocess.Popen | None = None
        self.env: dict = {}
        self.bridge = ""  # the bridge interface dockerd made, removed again by stop()
        self.bridge_address: str | None = None

    def start(self, workdir: str, registry: Registry) -> None:
        os.makedirs(workdir, exist_ok=True)
        sock = os.path.join(workdir, "docker.sock")
        config = {
            "data-root": os.path.join(workdir, "root"),
            "exec-root": os.path.join(workdir, "exec"),
            "pidfile": os.path.join(workdir, "dockerd.pid"),
            "hosts": [f"unix://{sock}"],
            "storage-driver": "overlay2",
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "iptables": False, "ip-forward": False, "ip-masq": False, "bridge": "none",
            "insecure-registries": [registry.host],
            "features": {"buildkit": True},
        }
        bridges_before = set(os.listdir("/sys/class/net"))
        if self.network:
            # the default bridge network: RUN steps get an address on docker0 and reach this
            # machine at its gateway; no iptables, forwarding or masquerading, so nothing past it
            del config["bridge"]
        config_path = os.path.join(workdir, "daemon.json")
        with open(config_path, "w") as f:
            json.dump(config, f, indent=1)
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": os.path.join(workdir, "client")}
        with open(os.path.join(workdir, "dockerd.log"), "w") as log:
            self.proc = subprocess.Popen(["/usr/sbin/dockerd", "--config-file", config_path],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineFailure(f"dockerd exited with {self.proc.returncode}; "
                                    f"see {workdir}/dockerd.log")
            if subprocess.run([DOCKER_CLIENT, "version"], env=self.env,
                              capture_output=True).returncode == 0:
                if self.network:
                    self._find_bridge(bridges_before)
                return
            time.sleep(0.3)
        raise EngineFailure("dockerd did not answer within 60 s")

    def _find_bridge(self, before: set[str]) -> None:
        """The default bridge network's interface and gateway address (``docker network
        inspect bridge``; the address from the interface when IPAM names no gateway)."""
        out = run_checked(self.docker("network", "inspect", "bridge"), env=self.env, timeout=30)
        network = json.loads(out)[0]
        name = network.get("Options", {}).get("com.docker.network.bridge.name", "docker0")
        if name not in before:
            self.bridge = name
        gateways = [c.get("Gateway") for c in network.get("IPAM", {}).get("Config") or []]
        self.bridge_address = next((g for g in gateways if g), None)
        if not self.bridge_address:
            out = run_checked(["ip", "-4", "-o", "addr", "show", "dev", name], timeout=30)
            words = out.split()
            if "inet" in words:
                self.bridge_address = words[words.index("inet") + 1].split("/")[0]
        if not self.bridge_address:
            raise EngineFailure(f"no IPv4 address on dockerd's bridge {name}")

    def gateway(self) -> str | None:
        return self.bridge_address

    def docker(self, *args: str) -> list[str]:
        return [DOCKER_CLIENT, *args]

    def unsupported(self, request: BuildRequest) -> str | None:
        if request.export:
            return ('dockerd 20.10\'s BuildKit has no oci exporter (exporter "oci" could not '
                    'be found); its only image output is the docker image store')
        return None

    def reset(self) -> None:
        run_checked(self.docker("builder", "prune", "-af"), env=self.env)
        run_checked(self.docker("image", "prune", "-af"), env=self.env)

    def build(self, request: BuildRequest) -> float:
        cmd = self.docker("build", *network_flags(request), "-q", "-f", request.dockerfile,
                          "--build-arg", f"BASE={request.base.ref}", *build_arg_flags(request))
        if request.export:
            cmd += ["-o", f"type=oci,dest={request.output_dir}/image.tar"]
        else:
            cmd += ["-t", f"bench-{request.case}"]
        cmd.append(request.context)
        return timed([cmd], env=self.env)

    def version(self) -> str:
        try:
            out = run_checked(self.docker("version", "--format", "{{.Server.Version}}"),
                              env=self.env, timeout=30)
            return f"dockerd {out.strip()}"
        except EngineFailure as e:
            return str(e)

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        if self.bridge:  # dockerd leaves docker0 behind; it was not there before
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
            self.bridge = ""


class Buildah(Engine):
    """``buildah bud --layers --isolation oci --network none`` with its own storage."""

    name = "buildah"
    label = "buildah"

    def __init__(self, jobs: int = 3):
        self.jobs = jobs
        if not shutil.which("buildah"):
            self.unavailable = "buildah not installed"
        self.env: dict = {}
        self.workdir = ""

    def start(self, workdir: str, registry: Registry) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        storage = os.path.join(workdir, "storage.conf")
        with open(storage, "w") as f:
            f.write('[storage]\ndriver = "overlay"\n'
                    f'runroot = "{workdir}/run"\ngraphroot = "{workdir}/graph"\n')
        registries = os.path.join(workdir, "registries.conf")
        with open(registries, "w") as f:
            f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n\n'
                    f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": storage,
                    "CONTAINERS_REGISTRIES_CONF": registries,
                    "TMPDIR": os.path.join(workdir, "tmp")}
        os.makedirs(self.env["TMPDIR"], exist_ok=True)

    def unsupported(self, request: BuildRequest) -> str | None:
        if request.network:
            return ("RUN steps with a network need a CNI configuration for buildah, which "
                    "the harness does not set up (it runs buildah with --network none)")
        return None

    def reset(self) -> None:
        run_checked(["buildah", "rm", "-a"], env=self.env)
        run_checked(["buildah", "rmi", "-af"], env=self.env)

    def build(self, request: BuildRequest) -> float:
        tag = f"localhost/bench-{request.case}:latest"
        cmd = ["buildah", "bud", "--layers", "--isolation", "oci", *network_flags(request),
               "--jobs", str(self.jobs), "-q", "-f", request.dockerfile,
               "--build-arg", f"BASE={request.base.ref}", "-t", tag]
        cmd.append(request.context)
        cmds = [cmd]
        if request.export:
            archive = os.path.join(request.output_dir, "image.tar")
            if os.path.exists(archive):
                os.unlink(archive)
            cmds.append(["buildah", "push", "-q", "--compression-format", request.export,
                         tag, f"oci-archive:{archive}"])
        return timed(cmds, env=self.env)

    def version(self) -> str:
        try:
            out = run_checked(["buildah", "--version"], env=self.env, timeout=30).strip()
            return f"{out} (--jobs {self.jobs})"
        except EngineFailure as e:
            return str(e)

    def stop(self) -> None:
        if self.env:
            subprocess.run(["buildah", "rm", "-a"], env=self.env, capture_output=True)
            unmount_under(self.workdir)


def baseline(engine: Pybk, directory: str) -> Pybk:
    """``engine`` run with the ``pybk``/``pybkd`` executables of another pybk in ``directory``
    (e.g. the previous release), as an engine of its own: ``pybk-base``, ``pybkd-base``."""
    engine.command = os.path.join(directory, "pybk")
    if isinstance(engine, Pybkd):
        engine.daemon = os.path.join(directory, "pybkd")
    missing = [c for c in (engine.command, getattr(engine, "daemon", engine.command))
               if not os.access(c, os.X_OK)]
    engine.unavailable = f"{missing[0]} is not executable" if missing else None
    engine.name = f"{engine.name}-base"
    engine.label = f"{engine.label} (baseline)"
    return engine


def make_engines(names: list[str], buildah_jobs: int, network: bool = False,
                 baseline_dir: str | None = None, pybk_base: str = "registry") -> list[Engine]:
    """The engines called ``names``; ``network``: a case's RUN steps need the default network
    (dockerd then gets its default bridge); ``baseline_dir``: also run the pybk engines with
    the executables found there (``pybk-base``, ``pybkd-base``); ``pybk_base``: where the pybk
    engines get their base image (see PYBK_BASES)."""
    makers = {"pybk": lambda: Pybk(base=pybk_base), "pybkd": lambda: Pybkd(base=pybk_base),
              "pybkd-tcp": lambda: PybkdTcp(base=pybk_base),
              "buildkit": lambda: BuildKit(network),
              "buildah": lambda: Buildah(buildah_jobs)}
    engines = [makers[name]() for name in names]
    if baseline_dir:
        engines += [baseline(makers[name](), baseline_dir) for name in names
                    if name in ("pybk", "pybkd")]
    return engines
