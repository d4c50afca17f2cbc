"""``pybk`` without ``--addr``: the command goes to the daemon on the store's socket when that
daemon would do exactly what the command would do in its own process, and runs embedded
otherwise; ``[pybk] daemon = "auto"`` starts a daemon on demand, which stops when idle."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.pybkd import process_gone

from pybk.core.cli.daemon import Served, installed
from pybk.core.cli.remote import Request, auto_target, identity, run_auto
from pybk.core.paths import SYSTEM_ROOT, SYSTEM_SOCKET, store_socket

CLIENT = [sys.executable, "-c", "import sys; from pybk.core.cli.entry import main; sys.exit(main())"]
DAEMON = [sys.executable, "-m", "pybk.core.cli.daemon"]
#: what conftest.py's configuration says, plus pybk's own table
BASE_CONFIG = '[worker.oci]\ngc = false\nnetworkMode = "none"\n'


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}
    return {**env, **extra}


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class StoreDaemon:
    """A ``pybkd --debug`` (it logs every command it runs) on a store, on the store's socket
    unless ``addr`` says otherwise."""

    def __init__(self, root: Path, log: Path, *extra: str):
        self.root, self.log = root, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*DAEMON, "--root", str(root), "--debug", *extra],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=_env())
        _wait(lambda: "pybkd: serving" in log.read_text() or self.proc.poll() is not None,
              "pybkd did not start")
        assert self.proc.poll() is None, log.read_text()

    def ran(self, pid: int) -> bool:
        """Whether the daemon ran a command for the client process ``pid``."""
        return f"pybkd: pid {pid} (uid" in self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        return self.proc.returncode


def pybk(*args: str, cwd=None, env=None) -> tuple[int, str, str]:
    """``pybk ARGS`` without --addr: (its pid, stdout, stderr); it must succeed."""
    proc = subprocess.Popen([*CLIENT, *args], cwd=cwd, env=env or _env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return proc.pid, out, err


@pytest.fixture(scope="module")
def long_root(tmp_path_factory):
    """A store whose socket path is longer than a socket address may be (108 bytes)."""
    root = tmp_path_factory.mktemp("auto") / ("a-store-with-a-long-name-" * 4)
    assert len(str(root / "pybkd.sock")) > 108
    return root


@pytest.fixture(scope="module")
def daemon(long_root, tmp_path_factory):
    d = StoreDaemon(long_root, tmp_path_factory.mktemp("autolog") / "pybkd.log")
    assert (long_root / "pybkd.sock").is_socket()
    yield d
    assert d.stop() == 0


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (ctx / "a").write_text("from the context\n")
    return ctx


# -- which socket, which store ------------------------------------------------------------------


def test_store_socket_is_the_system_one_for_the_system_store_else_in_the_store(tmp_path):
    assert store_socket(SYSTEM_ROOT) == SYSTEM_SOCKET == "/run/pybk/pybkd.sock"
    assert store_socket(str(tmp_path / "s")) == str(tmp_path / "s" / "pybkd.sock")
    (tmp_path / "link").symlink_to(tmp_path / "s")
    assert store_socket(str(tmp_path / "link")) == str(tmp_path / "s" / "pybkd.sock")


def test_auto_target_reads_plain_global_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYBK_ROOT", "/srv/store")
    monkeypatch.setenv("PYBK_CONFIG", "c.toml")
    assert auto_target(["du"]) == ("/srv/store", str(tmp_path / "c.toml"))
    assert auto_target(["--root", "s", "--config=/etc/x.toml", "--debug", "build", "--root",
                        "z"]) == (str(tmp_path / "s"), "/etc/x.toml")
    assert auto_target(["--root=/a", "--root", "/b", "--version"]) == ("/b", str(tmp_path /
                                                                                "c.toml"))
    monkeypatch.delenv("PYBK_CONFIG")
    assert auto_target(["--help"]) == ("/srv/store", None)
    # anything the scan does not know for sure runs embedded: abbreviations, empty values …
    for argv in (["--ro", "/x", "du"], ["--conf", "c", "du"], ["--root", "", "du"],
                 ["--root"], ["--", "du"], ["-v", "du"]):
        assert auto_target(argv) is None, argv


# -- auto-use -----------------------------------------------------------------------------------


def test_command_runs_in_the_store_daemon_without_any_flag(daemon, long_root, tmp_path):
    ctx = _context(tmp_path)
    pid, out, err = pybk("--root", str(long_root), "build", "--progress", "quiet", "-o",
                         "type=local,dest=out", ".", cwd=ctx)
    assert daemon.ran(pid), daemon.log.read_text()
    assert (ctx / "out" / "a").read_text() == "from the context\n"  # the client's cwd
    # the store named by $PYBK_ROOT, or relative to the client's directory
    pid, out, _ = pybk("du", env=_env(PYBK_ROOT=str(long_root)))
    assert daemon.ran(pid) and out.startswith("ID\t")
    pid, _, _ = pybk("--root", long_root.name, "du", cwd=long_root.parent)
    assert daemon.ran(pid)


def test_client_imports_almost_nothing_when_the_daemon_answers(daemon, long_root):
    done = subprocess.run([sys.executable, "-X", "importtime", *CLIENT[1:], "--root",
                           str(long_root), "--version"], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert done.returncode == 0 and done.stdout == "pybk 0.1.0\n", done.stderr
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert {m for m in modules if m.startswith("pybk")} == {
        "pybk", "pybk.core", "pybk.core.cli", "pybk.core.cli.entry", "pybk.core.cli.remote",
        "pybk.core.paths"}
    assert not {"argparse", "attr", "tomllib", "pluggy", "asyncio"} & modules


def test_empty_addr_and_empty_pybk_host_run_embedded(daemon, long_root):
    pid, out, _ = pybk("--addr", "", "--root", str(long_root), "du")
    assert out.startswith("ID\t") and not daemon.ran(pid)
    pid, out, _ = pybk("--addr=", "--root", str(long_root), "du")
    assert out.startswith("ID\t") and not daemon.ran(pid)
    pid, out, _ = pybk("--root", str(long_root), "du", env=_env(PYBK_HOST=""))
    assert out.startswith("ID\t") and not daemon.ran(pid)


def test_another_config_runs_embedded(daemon, long_root, tmp_path):
    config = tmp_path / "other.toml"
    config.write_text(BASE_CONFIG)  # the same text, another file: not the daemon's
    pid, out, _ = pybk("--root", str(long_root), "--config", str(config), "du")
    assert out.startswith("ID\t") and not daemon.ran(pid)
    assert (f"not running the command of pid {pid} automatically: its config file {config} "
            "is not the daemon's") in daemon.log.read_text()
    pid, _, _ = pybk("--root", str(long_root), "du", env=_env(PYBK_PLUGINS="nothing"))
    assert not daemon.ran(pid)
    assert f"pid {pid} automatically: its $PYBK_PLUGINS" in daemon.log.read_text()


def test_another_users_daemon_is_never_used(daemon, long_root, monkeypatch):
    """The client checks the daemon's user (SO_PEERCRED) before sending anything: to a user
    who is not the daemon's, the daemon is someone else's."""
    before = daemon.log.read_text()
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    assert run_auto(str(long_root / "pybkd.sock"), ["--root", str(long_root), "du"]) == (
        None, True)
    monkeypatch.undo()
    assert daemon.log.read_text() == before  # nothing was even sent
    code, listening = run_auto(str(long_root / "pybkd.sock"), ["--root", str(long_root),
                                                               "--version"])
    assert (code, listening) == (0, True)


def test_a_daemon_serving_another_store_is_not_used(tmp_path):
    other, mine = tmp_path / "other", tmp_path / "mine"
    d = StoreDaemon(other, tmp_path / "pybkd.log", "--addr", f"unix://{mine}/pybkd.sock")
    try:
        pid, out, _ = pybk("--root", str(mine), "du")
        assert out.startswith("ID\t") and not d.ran(pid)
        assert (f"pid {pid} automatically: its store {mine} is not the daemon's"
                in d.log.read_text())
        assert (mine / "metadata.db").exists()  # the embedded command opened its own store
    finally:
        assert d.stop() == 0
    assert not (mine / "pybkd.sock").exists()


def test_stale_socket_and_no_socket_fall_back_quickly(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(root / "pybkd.sock"))
    stale.close()  # the file stays, nobody listens
    start = time.perf_counter()
    assert run_auto(str(root / "pybkd.sock"), ["du"]) == (None, False)
    assert run_auto(str(tmp_path / "none" / "pybkd.sock"), ["du"]) == (None, False)
    assert time.perf_counter() - start < 0.05
    _, out, _ = pybk("--root", str(root), "du")
    assert out.startswith("ID\t")


def test_refusal_reasons(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text(BASE_CONFIG)
    monkeypatch.delenv("PYBK_ROOT", raising=False)
    monkeypatch.delenv("PYBK_CONFIG", raising=False)
    served = Served(str(tmp_path / "s"), str(config), config.read_bytes())
    me, mine = os.geteuid(), identity()

    def refusal(*argv, uid=me, who=mine):
        return served.refusal(uid, Request([], "auto", who, list(argv), {}))

    same = ("--root", str(tmp_path / "s"), "--config", str(config), "du")
    assert refusal(*same) == (None, False)
    assert refusal(*same, uid=me + 1)[0].startswith("the client's user")
    assert refusal(*same, who="cpython-00 /elsewhere/pybk")[0].startswith("the client runs "
                                                                          "another pybk")
    assert refusal("--root", str(tmp_path / "t"), "--config", str(config), "du")[0].startswith(
        f"its store {tmp_path / 't'}")
    assert refusal("--root", str(tmp_path / "s"), "du")[0] == (
        "its config file (none) is not the daemon's")
    assert refusal("--ro", str(tmp_path / "s"), "du")[0].startswith("its global options")
    config.write_text(BASE_CONFIG + "# edited\n")
    assert refusal(*same) == (f"{config} changed since the daemon started", True)
    config.write_text(BASE_CONFIG)
    served.installed = [*installed()[:-1], ("/nowhere", 1)]
    assert refusal(*same) == ("packages were installed or removed since the daemon started",
                              True)


# -- on demand ----------------------------------------------------------------------------------


def _auto_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "auto.toml"
    config.write_text(BASE_CONFIG + '\n[log]\nlevel = "debug"\n\n[pybk]\ndaemon = "auto"\n'
                      'daemon-idle-timeout = "1500ms"\n' + extra)
    return config


@pytest.fixture
def started():
    """``started(log)``: the pid of the daemon started on demand that logs to ``log``, once it
    serves; stopped after the test if it is still running."""
    pids = []

    def wait_for(log: Path) -> int:
        _wait(lambda: log.exists() and "pybkd: serving" in log.read_text(),
              "no daemon started", timeout=60)
        pids.append(int(re.search(r"pybkd: serving .* pid (\d+)\)", log.read_text()).group(1)))
        return pids[-1]

    yield wait_for
    for pid in pids:
        if not process_gone(pid):
            os.kill(pid, signal.SIGTERM)


def test_daemon_auto_starts_one_the_next_command_uses_and_it_stops_when_idle(tmp_path, started):
    root, config = tmp_path / "store", _auto_config(tmp_path)
    root.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(root / "pybkd.sock"))
    stale.close()
    env = _env(PYBK_CONFIG=str(config))
    first, out, _ = pybk("--root", str(root), "du", env=env)  # embedded, starts the daemon
    assert out.startswith("ID\t")
    log = root / "pybkd.log"
    pid = started(log)
    assert f"pybkd: pid {first} " not in log.read_text()
    second, out, _ = pybk("--root", str(root), "du", env=env)
    assert out.startswith("ID\t")
    assert f"pybkd: pid {second} (uid {os.geteuid()}): pybk --root {root} du: exit 0" in (
        log.read_text())
    # the same daemon answers again; none other was started
    third, _, _ = pybk("du", env=_env(PYBK_CONFIG=str(config), PYBK_ROOT=str(root)))
    assert f"pybkd: pid {third} " in log.read_text()
    assert log.read_text().count("pybkd: serving") == 1
    # no command for daemon-idle-timeout: it stops by itself
    _wait(lambda: process_gone(pid), "the idle daemon did not stop", timeout=30)
    assert not (root / "pybkd.sock").exists()
    text = log.read_text()
    assert "pybkd: stopping: no command for 1.5s" in text and text.endswith("pybkd: stopped\n")


def test_on_demand_daemon_retires_when_its_config_file_changes(tmp_path, started):
    root = tmp_path / "store"
    config = _auto_config(tmp_path).read_text().replace("1500ms", "10m")
    (tmp_path / "auto.toml").write_text(config)
    env = _env(PYBK_CONFIG=str(tmp_path / "auto.toml"))
    pybk("--root", str(root), "du", env=env)
    pid = started(root / "pybkd.log")
    _wait((root / "pybkd.sock").exists, "no socket")
    (tmp_path / "auto.toml").write_text(config + "# edited\n")
    client, out, _ = pybk("--root", str(root), "du", env=env)  # embedded: the file changed
    assert out.startswith("ID\t")
    _wait(lambda: process_gone(pid), "the out-of-date daemon did not stop", timeout=30)
    text = (root / "pybkd.log").read_text()
    assert f"pid {client} automatically: {tmp_path / 'auto.toml'} changed since the daemon " \
           "started" in text
    assert "pybkd: stopping: SIGUSR1 (asked, or out of date)" in text
    assert not (root / "pybkd.sock").exists()


def test_daemon_off_by_default_and_when_off(tmp_path):
    for name, text in (("default.toml", BASE_CONFIG),
                       ("off.toml", BASE_CONFIG + '\n[pybk]\ndaemon = "off"\n')):
        root = tmp_path / name
        (tmp_path / f"{name}.toml").write_text(text)
        pybk("--root", str(root), "du", env=_env(PYBK_CONFIG=str(tmp_path / f"{name}.toml")))
        time.sleep(0.3)
        assert not (root / "pybkd.log").exists() and not (root / "pybkd.sock").exists()


@pytest.mark.parametrize("setting, message", [
    ('daemon = "yes"', '6: pybk.daemon: "yes" is not one of "off", "auto"'),
    ('daemon = "auto"\ndaemon-idle-timeout = "ten minutes"',
     '7: pybk.daemon-idle-timeout: invalid duration "ten minutes"'),
    ('daemon = "auto"\ndaemon-idle-timeout = -5',
     "7: pybk.daemon-idle-timeout: invalid duration -5: must not be negative"),
], ids=["daemon", "idle-timeout", "negative"])
def test_bad_values_are_refused_naming_the_file(tmp_path, setting, message):
    config = tmp_path / "bad.toml"
    config.write_text(f"{BASE_CONFIG}\n[pybk]\n{setting}\n")
    root = tmp_path / "store"
    done = subprocess.run([*CLIENT, "--root", str(root), "--config", str(config), "du"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 2
    assert f"{config}:{message}" in done.stderr, done.stderr
    log = root / "pybkd.log"
    if 'daemon = "auto"' in setting:  # the daemon started for it refuses the file too
        _wait(lambda: log.exists() and "error:" in log.read_text(),
              "the daemon did not refuse the file")
        assert f"{config}:{message}" in log.read_text()
    else:
        time.sleep(0.3)
        assert not log.exists()
    assert not (root / "pybkd.sock").exists()
