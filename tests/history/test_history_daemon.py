"""The build history through a running ``pybkd``: builds made by the daemon are recorded in
its store, and ``pybk history`` runs there, on its unix socket and over ``tcp://``."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from support.engine import need_runc
from support.pybkd import BASE_CONFIG, CLIENT, Pybkd, client_env, free_port


@pytest.fixture(scope="session")
def registry_required():
    """The Distribution registry the remote build pulls from: a skip without it, a failure
    under ``CI=true``."""
    from support.registry import registry_available

    if not registry_available() and os.environ.get("CI") == "true":
        pytest.fail("Distribution registry not installed (CI=true: required)")


@pytest.fixture
def daemon(tmp_path):
    need_runc()
    port = free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    d = Pybkd(tmp_path, BASE_CONFIG + "[pybk]\ntcp-without-tls = true\n", extra=["--addr", tcp])
    d.tcp = tcp
    yield d
    assert d.stop() == 0


def _run(addr: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, "--addr", addr, *args], capture_output=True,
                          env=client_env(), cwd=cwd, timeout=180, input=b"")


def test_history_through_pybkd_unix_and_tcp(daemon, tmp_path, busybox_layout):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo through-the-daemon\n")
    done = daemon.pybk("build", "--progress", "plain", "--build-arg", "WHO=daemon",
                       "--build-context", f"busybox=oci-layout://{busybox_layout}", str(ctx))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # the record is in the daemon's store
    (path,) = (daemon.root / "history").iterdir()
    ref = path.name.removesuffix(".json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for addr in (daemon.addr, daemon.tcp):
        ls = _run(addr, "history", "ls", "--format", "json")
        assert ls.returncode == 0, ls.stderr.decode()
        (row,) = [json.loads(line) for line in ls.stdout.splitlines()]
        assert row["ref"] == ref and row["status"] == "Completed" and row["name"] == "ctx"
        table = _run(addr, "history", "ls").stdout.decode().splitlines()
        assert table[0].startswith("BUILD ID") and table[1].startswith(ref)
        inspect = _run(addr, "history", "inspect", ref[:7], "--format", "json")
        data = json.loads(inspect.stdout)
        assert data["Ref"] == ref and {"Name": "WHO", "Value": "daemon"} in data["BuildArgs"]
        logs = _run(addr, "history", "logs", ref)
        assert logs.returncode == 0 and b"through-the-daemon" in logs.stdout
        # export writes the client's file, relative to the client's directory
        out = tmp_path / ("unix" if addr == daemon.addr else "tcp")
        out.mkdir()
        exported = _run(addr, "history", "export", ref, "-o", "record.json", cwd=out)
        assert exported.returncode == 0, exported.stderr.decode()
        assert json.loads((out / "record.json").read_text())["record"]["ref"] == ref
        assert stat.S_IMODE((out / "record.json").stat().st_mode) == 0o600
        missing = _run(addr, "history", "inspect", "nosuchref")
        assert missing.returncode == 2
        assert b"no build record found for ref 'nosuchref'" in missing.stderr
        assert b"Traceback" not in missing.stderr
        failed = _run(addr, "history", "export", "nosuchref", "-o", "gone.json", cwd=out)
        assert failed.returncode == 2 and not (out / "gone.json").exists()
    assert _run(daemon.tcp, "history", "rm", ref).returncode == 0
    assert list((daemon.root / "history").iterdir()) == []


def test_secret_of_a_remote_build_is_not_recorded(registry_required, busybox_ref, daemon,
                                                  tmp_path):
    """A build over tcp:// reads its secret through the session; its record has ``****``
    where a step printed it, and the value is nowhere in the daemon's store."""
    secret = "remote-s3cr3t-41a7"
    (tmp_path / "tok").write_text(secret)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN --mount=type=secret,id=tok "
                                    "cat /run/secrets/tok\n")
    done = _run(daemon.tcp, "build", "--no-cache", "--progress", "plain", "--secret",
                f"id=tok,src={tmp_path / 'tok'}", str(ctx))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    logs = _run(daemon.tcp, "history", "logs", "latest")
    assert logs.returncode == 0 and b"****" in logs.stdout
    exported = _run(daemon.tcp, "history", "export", "latest", "-o", "-")
    assert exported.returncode == 0 and exported.stdout.startswith(b"{")
    for text in (logs.stdout, exported.stdout):
        assert secret.encode() not in text
    assert [p for p in daemon.root.rglob("*") if p.is_file() and not p.is_socket()
            and secret.encode() in p.read_bytes()] == []


def test_cache_misses_and_trace_through_pybkd(daemon, tmp_path, busybox_layout):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY main.py /\nRUN cat /main.py\n")
    (ctx / "main.py").write_text("1\n")
    args = ("build", "--progress", "plain", "--build-context",
            f"busybox=oci-layout://{busybox_layout}", str(ctx))
    first = daemon.pybk(*args)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    (ctx / "main.py").write_text("2\n")
    again = daemon.pybk(*args[:-1], "--explain-cache", str(ctx))
    err = again.stderr.decode()
    assert again.returncode == 0, err[-2000:]
    assert "CACHE MISS: context file main.py changed" in err
    assert "CACHE: compared with build " in err
    assert any(line.endswith("context file main.py changed") and line.split()[1] == "no"
               for line in err.splitlines() if line.startswith("#") and "COPY" in line)
    for addr in (daemon.addr, daemon.tcp):
        out = tmp_path / ("trace-unix" if addr == daemon.addr else "trace-tcp")
        out.mkdir()
        traced = _run(addr, "history", "trace", "latest", "-o", "trace.json", cwd=out)
        assert traced.returncode == 0, traced.stderr.decode()
        events = json.loads((out / "trace.json").read_text())["traceEvents"]
        copy = next(e for e in events if e.get("name") == "[2/3] COPY main.py /")
        assert copy["args"]["cache_miss"] == "context file main.py changed"
        assert stat.S_IMODE((out / "trace.json").stat().st_mode) == 0o600
