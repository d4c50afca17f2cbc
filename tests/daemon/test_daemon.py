"""``pybkd`` and the thin ``pybk --addr`` client: the same command line as embedded, run by a
forked child of the daemon with the client's stdio, cwd and environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.engine import require_runc
from support.pybkd import read_until

CLIENT = [sys.executable, "-c", "import sys; from pybk.core.cli.entry import main; sys.exit(main())"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}
    return {**env, **extra}


class Daemon:
    def __init__(self, root: Path, sock: Path, log: Path, config: Path | None = None):
        self.root, self.sock, self.addr = root, sock, f"unix://{sock}"
        self.log = log
        extra = ["--config", str(config)] if config else []  # else $PYBK_CONFIG (conftest.py)
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pybk.core.cli.daemon", "--root", str(root),
                 "--addr", self.addr, *extra], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_env())
        deadline = time.monotonic() + 60
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"pybkd did not start: {log.read_text()}")
            time.sleep(0.05)

    def pybk(self, *args: str, cwd: Path | str | None = None, input: bytes | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CLIENT, "--addr", self.addr, *args], cwd=cwd, input=input,
                              capture_output=True, env=env or _env(), timeout=120)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("pybkd")
    d = Daemon(base / "store", base / "run" / "pybkd.sock", base / "pybkd.log")
    yield d
    d.stop()


def embedded(*args: str, cwd=None, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, *args], cwd=cwd, input=input, capture_output=True,
                          env=_env(), timeout=120)


def _tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = b""
        found[str(path.relative_to(root))] = (st.st_mode, content)
    return found


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).write_text(text)
    return ctx


def _build_args(busybox_layout: Path, ctx: Path, *extra: str) -> list[str]:
    return ["build", "--progress", "plain", "--build-context",
            f"busybox=oci-layout://{busybox_layout}", *extra, str(ctx)]


# -- the client itself --------------------------------------------------------------------------


def test_client_imports_almost_nothing(daemon):
    done = subprocess.run([sys.executable, "-X", "importtime", *CLIENT[1:], "--addr",
                           daemon.addr, "--version"], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pybk 0.1.0"
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert "pybk.core.cli.entry" in modules
    assert not {"attr", "attrs", "pluggy", "asyncio", "argparse",
                "pybk.core.cli.commands"} & modules
    assert {m for m in modules if m.startswith("pybk")} == {"pybk", "pybk.core", "pybk.core.cli",
                                                             "pybk.core.cli.entry",
                                                             "pybk.core.cli.remote",
                                                             "pybk.core.paths"}


def test_addresses_are_checked():
    done = embedded("--addr", "tcp://127.0.0.1:1", "plugins")
    assert done.returncode == 2
    assert b"error: cannot reach pybkd at tcp://127.0.0.1:1: " in done.stderr
    done = embedded("--addr", "vsock://3:1234", "plugins")
    assert done.returncode == 2
    assert b"unsupported daemon address scheme 'vsock'" in done.stderr
    done = embedded("--addr", "unix:///nonexistent/pybkd.sock", "plugins")
    assert done.returncode == 2
    assert b"cannot reach pybkd at unix:///nonexistent/pybkd.sock" in done.stderr
    done = subprocess.run([*CLIENT, "plugins"], capture_output=True, timeout=60,
                          env=_env(PYBK_HOST="unix:///nonexistent/pybkd.sock"))
    assert done.returncode == 2 and b"cannot reach pybkd" in done.stderr


def test_bad_flag_same_message_and_code(daemon, tmp_path):
    remote = daemon.pybk("build", "--bogus", str(tmp_path))
    local = embedded("--root", str(tmp_path / "s"), "build", "--bogus", str(tmp_path))
    assert remote.returncode == local.returncode == 2
    assert remote.stderr == local.stderr == b"error: pybk: unrecognized arguments: --bogus\n"


def test_other_root_is_refused_same_root_is_fine(daemon, tmp_path):
    done = daemon.pybk("--root", str(tmp_path / "other"), "du")
    assert done.returncode == 2
    assert b"is not the store of the daemon" in done.stderr
    assert not (tmp_path / "other").exists()
    done = daemon.pybk("--root", str(daemon.root), "du")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"ID\t")
    assert b"\nTotal:\t" in done.stdout
    for abbreviated in (["--ro", str(tmp_path / "other")], ["--conf", str(tmp_path / "c")],
                        [f"--roo={tmp_path / 'other'}"]):  # argparse would take these as --root
        done = daemon.pybk(*abbreviated, "du")
        assert done.returncode == 2, (abbreviated, done.stderr)
        assert not (tmp_path / "other").exists()


def test_cwd_environment_and_stdout_are_the_clients(daemon, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (tmp_path / "a").write_text("a")
    done = daemon.pybk("build", "--call", "outline", ".", cwd=tmp_path,
                       env=_env(BUILDKIT_PROGRESS="bogus"))
    # the relative context resolves in the client's cwd; BUILDKIT_PROGRESS comes from the
    # client's environment (and is validated there)
    assert done.returncode == 2
    assert b"--progress" in done.stderr and b"bogus" in done.stderr
    done = daemon.pybk("build", "--call", "outline", ".", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"TARGET:")


# -- builds -------------------------------------------------------------------------------------


DOCKERFILE = ("FROM busybox\nWORKDIR /app\nCOPY a.txt .\n"
              "RUN cat a.txt > b.txt && chmod 640 b.txt && ln -s b.txt c\n"
              "FROM scratch\nCOPY --from=0 /app /\n")


def test_dockerfile_build_same_files_as_embedded(daemon, busybox_layout, tmp_path):
    require_runc()
    ctx = _context(tmp_path, DOCKERFILE, {"a.txt": "hello\n"})
    remote = daemon.pybk(*_build_args(busybox_layout, ctx, "-o",
                                      f"type=local,dest={tmp_path / 'remote'}"))
    assert remote.returncode == 0, remote.stderr.decode()
    assert b"[stage-0 3/4] COPY a.txt ." in remote.stderr
    local = embedded("--root", str(tmp_path / "store"),
                     *_build_args(busybox_layout, ctx, "-o",
                                  f"type=local,dest={tmp_path / 'local'}"))
    assert local.returncode == 0, local.stderr.decode()
    tree = _tree(tmp_path / "remote")
    assert tree == _tree(tmp_path / "local")
    assert tree["b.txt"][1] == b"hello\n" and tree["b.txt"][0] & 0o777 == 0o640
    assert tree["c"][1] == "b.txt"
    again = daemon.pybk(*_build_args(busybox_layout, ctx))
    assert again.returncode == 0 and again.stderr.count(b"CACHED") >= 3


def test_failing_run_exits_1_with_the_located_error(daemon, busybox_layout, tmp_path):
    require_runc()
    ctx = _context(tmp_path, "FROM busybox\nRUN exit 3\n")
    done = daemon.pybk(*_build_args(busybox_layout, ctx))
    assert done.returncode == 1
    assert b"did not complete successfully: exit code: 3" in done.stderr
    assert b"Dockerfile:2" in done.stderr and b"Traceback" not in done.stderr


def test_llb_from_stdin(daemon, tmp_path):
    require_runc()
    from pybk.core import llb

    state = llb.scratch().file(llb.mkfile("/hi", 0o600, "from stdin\n"))
    data = state.marshal().to_bytes()
    done = daemon.pybk("build", "--progress", "quiet", "--llb", "-", "-o",
                       f"type=local,dest={tmp_path / 'out'}", input=data)
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "out" / "hi").read_text() == "from stdin\n"
    assert (tmp_path / "out" / "hi").stat().st_mode & 0o777 == 0o600


def test_two_concurrent_builds(daemon, busybox_layout, tmp_path):
    require_runc()
    results = {}

    def build(name: str) -> None:
        ctx = _context(tmp_path / name, f"FROM busybox\nRUN sleep 1 && echo {name} > /who\n")
        results[name] = daemon.pybk(*_build_args(busybox_layout, ctx, "-o",
                                                 f"type=local,dest={tmp_path / name / 'out'}"))

    threads = [threading.Thread(target=build, args=(n,)) for n in ("one", "two")]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    for name in ("one", "two"):
        assert results[name].returncode == 0, results[name].stderr.decode()
        assert (tmp_path / name / "out" / "who").read_text() == f"{name}\n"
    assert elapsed < 10


REFUSED = (b"error: granting entitlement network.host is not allowed by build daemon "
           b"configuration (add it to insecure-entitlements in buildkitd.toml)\n")
HOST_NETWORK = "FROM busybox\nRUN --network=host ls /sys/class/net > /nets\n"


def _granting_config(tmp_path: Path) -> Path:
    path = tmp_path / "grants.toml"
    path.write_text('insecure-entitlements = ["network.host"]\n\n[worker.oci]\ngc = false\n')
    return path


def test_daemon_config_not_granting_refuses_allow(daemon, busybox_layout, tmp_path):
    require_runc()
    ctx = _context(tmp_path, HOST_NETWORK)
    out = tmp_path / "out"
    args = _build_args(busybox_layout, ctx, "--allow", "network.host", "-o",
                       f"type=local,dest={out}")
    done = daemon.pybk(*args)
    assert done.returncode == 2, done.stderr.decode()
    assert done.stderr == REFUSED
    # the client's $PYBK_CONFIG is not the daemon's configuration
    done = daemon.pybk(*args, env=_env(PYBK_CONFIG=str(_granting_config(tmp_path))))
    assert done.returncode == 2, done.stderr.decode()
    assert done.stderr == REFUSED
    assert not out.exists()


def test_daemon_config_granting_builds_with_allow(busybox_layout, tmp_path):
    require_runc()
    d = Daemon(tmp_path / "store", tmp_path / "g.sock", tmp_path / "log",
               config=_granting_config(tmp_path))
    try:
        ctx = _context(tmp_path, HOST_NETWORK)
        out = tmp_path / "out"
        done = d.pybk(*_build_args(busybox_layout, ctx, "--allow", "network.host", "-o",
                                   f"type=local,dest={out}"))
        assert done.returncode == 0, done.stderr.decode()
        assert set((out / "nets").read_text().split()) == set(os.listdir("/sys/class/net"))
        # granted is not asked for: the step still needs --allow
        done = d.pybk(*_build_args(busybox_layout, ctx))
        assert done.returncode == 1
        assert b"network.host" in done.stderr and b"Traceback" not in done.stderr
    finally:
        assert d.stop() == 0


def _mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(real + "/")]


def test_client_ctrl_c_cancels_the_build(daemon, busybox_layout, tmp_path):
    require_runc()
    ctx = _context(tmp_path, "FROM busybox\nRUN echo started && sleep 60\n")
    client = subprocess.Popen([*CLIENT, "--addr", daemon.addr,
                               *_build_args(busybox_layout, ctx, "--no-cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    seen = read_until(client, b"started", 60)
    client.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = client.communicate(timeout=30)
    assert time.monotonic() - start < 20
    assert client.returncode == 130, (seen + err).decode()
    assert b"interrupted" in err
    runc = subprocess.run(["runc", "--root", str(daemon.root / "executor" / "runc"), "list",
                           "-q"], capture_output=True, text=True)
    assert runc.stdout.strip() == ""
    assert _mounts_under(daemon.root) == []


def test_sigterm_removes_the_socket(tmp_path):
    d = Daemon(tmp_path / "store", tmp_path / "d.sock", tmp_path / "log")
    assert (tmp_path / "d.sock").is_socket()
    assert (tmp_path / "d.sock").stat().st_mode & 0o777 == 0o660
    assert d.pybk("--version").stdout == b"pybk 0.1.0\n"
    assert d.stop() == 0
    assert not (tmp_path / "d.sock").exists()
    assert "pybkd: stopped" in (tmp_path / "log").read_text()


def test_second_daemon_on_a_live_socket_is_refused(daemon, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "s"), "--addr", daemon.addr], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert done.returncode == 2
    assert "another daemon is listening" in done.stderr
    assert daemon.sock.is_socket()


def test_tcp_listen_address_without_tls_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                           str(tmp_path / "s"), "--addr", "tcp://127.0.0.1:1234"],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2
    assert "tcp://127.0.0.1:1234 has no TLS" in done.stderr


def test_warm_up_prepares_every_output_and_cache_option_class():
    """What a build's ``-o``/``--cache-to`` resolution needs is loaded before the daemon forks:
    resolving them imports nothing more (cattrs and its generated code cost ~15 ms a build)."""
    code = ("import sys\n"
            "from pybk.core.cli.daemon import _import_all, warm_packages\n"
            "from pybk.core.engine.resolve import resolve, warm_up_options\n"
            "for package in warm_packages():\n"
            "    _import_all(package)\n"
            "warm_up_options()\n"
            "before = set(sys.modules)\n"
            "resolve('exporter', {'type': 'image', 'name': 'app:1'}, where='--output')\n"
            "resolve('exporter', {'type': 'oci', 'dest': 'out.tar'}, where='--output')\n"
            "resolve('cache exporter', {'type': 'inline'}, where='--cache-to')\n"
            "print(sorted(set(sys.modules) - before))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
