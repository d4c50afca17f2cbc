"""RuncExecutor against the real runc on a busybox rootfs (root only)."""

from __future__ import annotations

import asyncio
import os
import secrets as pysecrets
import subprocess
import time
from pathlib import Path

import pytest

from pybk.core.errors import BuildError
from pybk.core.interfaces import ExecMount, Mount, SecretMount, SSHMount
from pybk.core.store.mounts import find_mounts_under, unmount
from pybk.workers.spec import ALL_CAPABILITIES, DEFAULT_CAPABILITIES, host_capability_mask

pytestmark = pytest.mark.runc


def _cap_mask(names) -> int:
    return sum(1 << ALL_CAPABILITIES.index(n) for n in names)


def _assert_clean(state_dir: Path) -> None:
    """Nothing mounted or left but the pooled network namespaces, all given back."""
    pool = str(state_dir / "net" / "ns")
    assert [m for m in find_mounts_under(str(state_dir)) if os.path.dirname(m) != pool] == []
    assert os.listdir(state_dir / "net" / "busy") == []
    assert os.listdir(state_dir / "bundles") == []
    assert os.listdir(state_dir / "runc") == []


def test_output_is_captured_per_stream(run, state_dir):
    res = run("echo hello; echo oops >&2; printf 'no newline'")
    assert res.code == 0
    assert res.stdout == "hello\nno newline"
    assert res.stderr == "oops\n"
    _assert_clean(state_dir)


def test_exit_code_is_returned(run, state_dir):
    assert run("exit 3").code == 3
    assert run("sh -c 'kill -9 $$'; exit $?").code == 137
    _assert_clean(state_dir)


def test_missing_executable_is_reported(run):
    res = run(("/no/such/binary", "x"))
    assert res.code != 0
    assert "/no/such/binary" in res.stderr and "no such file or directory" in res.stderr


def test_env_cwd_and_hostname(run, rootfs):
    res = run("echo \"$FOO|$PATH\"; pwd; hostname; cat /etc/hosts",
              env=("FOO=bar baz",), cwd="/work/new/dir", hostname="builder",
              extra_hosts=(("db.internal", "10.1.2.3"),), user="tester")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "bar baz|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert lines[1] == "/work/new/dir"
    assert lines[2] == "builder"
    assert "127.0.0.1\tlocalhost builder" in lines
    assert "10.1.2.3\tdb.internal" in lines
    # the working directory stays, created for the user; /etc/hosts left no trace
    for sub in ("work", "work/new", "work/new/dir"):
        st = os.stat(rootfs / sub)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o755)
    assert (rootfs / "etc/hosts").exists() is False


def test_existing_cwd_keeps_its_owner(run, rootfs):
    res = run("pwd; touch /tmp/ok", cwd="/etc", user="tester")
    assert res.stdout == "/etc\n"
    assert os.stat(rootfs / "etc").st_uid == 0


def test_path_from_env_is_kept(run):
    res = run(("/bin/sh", "-c", "echo $PATH"), env=("PATH=/bin",))
    assert res.stdout == "/bin\n"


@pytest.mark.parametrize(("user", "expected"), [
    ("", "uid=0(root) gid=0(root)"),
    ("tester", "uid=1000(tester) gid=1000(tester) groups=50(staff),2000(builders)"),
    ("1000", "uid=1000(tester) gid=1000(tester) groups=50(staff),2000(builders)"),
    ("1000:50", "uid=1000(tester) gid=50(staff)"),
    ("tester:builders", "uid=1000(tester) gid=2000(builders)"),
    ("nobody", "uid=65534(nobody) gid=65534(nogroup) groups=2000(builders)"),
    ("4242", "uid=4242 gid=0(root)"),
])
def test_user_from_rootfs_passwd(run, user, expected):
    res = run("id", user=user)
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == expected


def test_unknown_user_is_a_build_error(run, state_dir, rootfs):
    # "daemon" exists on the host, not in the rootfs: only the rootfs counts
    with pytest.raises(BuildError) as info:
        run("id", user="daemon")
    assert str(info.value) == "unable to find user daemon: no matching entries in passwd file"
    with pytest.raises(BuildError, match="unable to find group nope: no matching entries"):
        run("id", user="tester:nope")
    _assert_clean(state_dir)
    assert not (rootfs / "etc/hosts").exists()


def test_bind_mounts_readonly_and_readwrite(run, tmp_path, rootfs):
    ro_src = tmp_path / "ro-src"
    rw_src = tmp_path / "rw-src"
    ro_src.mkdir()
    rw_src.mkdir()
    (ro_src / "data").write_text("from host\n")
    mounts = [
        ExecMount("/mnt/ro", (Mount("bind", str(ro_src), ("rbind",)),), readonly=True),
        ExecMount("/mnt/rw", (Mount("bind", str(rw_src), ("rbind",)),)),
    ]
    res = run("cat /mnt/ro/data; touch /mnt/ro/x || echo ro-refused;"
              " echo written > /mnt/rw/out", mounts=mounts)
    assert res.code == 0, res.stderr
    assert res.stdout == "from host\nro-refused\n"
    assert "Read-only file system" in res.stderr
    assert os.listdir(ro_src) == ["data"]
    assert (rw_src / "out").read_text() == "written\n"
    # the mount points runc had to create are gone again
    assert not (rootfs / "mnt").exists()


def test_mount_stubs_removed_only_when_empty(run, tmp_path, rootfs):
    src = tmp_path / "src"
    src.mkdir()
    mounts = [ExecMount("/a/b/c", (Mount("bind", str(src), ("rbind",)),), readonly=True),
              ExecMount("/x/y", (Mount("bind", str(src), ("rbind",)),), readonly=True)]
    res = run("echo keep > /a/kept", mounts=mounts)
    assert res.code == 0, res.stderr
    assert sorted(os.listdir(rootfs / "a")) == ["kept"]  # /a/b/c and /a/b removed
    assert not (rootfs / "x").exists()


def test_tmpfs_mount_is_empty_writable_and_sized(run, rootfs):
    mounts = [ExecMount("/scratch", (Mount("tmpfs", "tmpfs", ("size=2m",)),))]
    res = run("ls -A /scratch | wc -l; echo hi > /scratch/f && cat /scratch/f;"
              " df -k /scratch | tail -1", mounts=mounts)
    assert res.code == 0, res.stderr
    count, content, df = res.stdout.splitlines()
    assert count.strip() == "0"
    assert content == "hi"
    assert df.split()[1] == "2048"
    assert not (rootfs / "scratch").exists()


def test_secret_file_and_no_trace_on_disk(run, rootfs, state_dir):
    token = pysecrets.token_hex(16).encode()
    secret = SecretMount("/run/secrets/x", data=b"value-" + token, uid=1000, gid=50,
                         mode=0o440)
    res = run("cat /run/secrets/x; echo; stat -c '%a %u %g' /run/secrets/x;"
              " echo no > /run/secrets/x || echo refused", user="tester", secrets=[secret])
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines() == ["value-" + token.decode(), "440 1000 50", "refused"]
    assert not (rootfs / "run/secrets").exists()
    for base in (rootfs, state_dir):
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath, name)
                if path.stat().st_dev != Path(dirpath).stat().st_dev:
                    continue  # a pooled network namespace (nsfs), not a file
                if path.is_file() and not path.is_symlink():
                    assert token not in path.read_bytes(), path


def test_overlay_root_writes_only_to_upperdir(run, tmp_path, rootfs, state_dir):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    root = [Mount("overlay", "overlay",
                  (f"lowerdir={rootfs}", f"upperdir={upper}", f"workdir={work}"))]
    res = run("echo new > /created; echo extra:x:3000: >> /etc/group; rm /bin/vi; ls /",
              root=root)
    assert res.code == 0, res.stderr
    assert (upper / "created").read_text() == "new\n"
    assert (upper / "etc/group").read_text().endswith("extra:x:3000:\n")
    assert (upper / "bin/vi").is_char_device()  # whiteout
    assert not (rootfs / "created").exists()
    assert "extra" not in (rootfs / "etc/group").read_text()
    assert (rootfs / "bin/vi").is_symlink()
    assert sorted(os.listdir(upper)) == ["bin", "created", "etc"]
    _assert_clean(state_dir)


@pytest.mark.parametrize(("network", "flags", "count"), [
    ("none", "0x9", 1),      # loopback (up) only, as BuildKit's none
    ("sandbox", "0x9", 2),   # the worker's default network (bridge here): loopback and eth0
])
def test_network_modes(run, network, flags, count):
    res = run("ls /sys/class/net | wc -l; cat /sys/class/net/lo/flags; cat /etc/resolv.conf",
              network=network)
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert int(lines[0]) == count
    assert lines[1] == flags
    if network == "none":
        assert not any(ln.startswith("nameserver") for ln in lines[2:])


def test_host_network_sees_host_interfaces(run):
    res = run("ls /sys/class/net", network="host")
    assert sorted(res.stdout.split()) == sorted(os.listdir("/sys/class/net"))


@pytest.mark.parametrize("security", ["sandbox", "insecure"])
def test_capabilities(run, security):
    res = run("grep CapEff /proc/self/status", security=security)
    effective = int(res.stdout.split()[1], 16)
    names = ALL_CAPABILITIES if security == "insecure" else DEFAULT_CAPABILITIES
    assert effective == _cap_mask(names) & host_capability_mask()
    if security == "sandbox":
        assert effective == 0xA80425FB


def test_sandbox_filters_namespace_and_keyring_calls(run):
    # an unprivileged user namespace would give the step every capability inside it
    script = ("unshare -U true && echo user-ns-created; unshare -m true || echo denied;"
              " echo a pipeline | wc -w")
    sandbox, insecure = run(script), run(script, security="insecure")
    assert "Operation not permitted" in sandbox.stderr
    assert sandbox.stdout.split("\n")[:2] == ["denied", "2"]
    assert insecure.stdout.split("\n")[:2] == ["user-ns-created", "2"]


def test_insecure_unmasks_proc_and_passes_host_devices(run):
    from pybk.workers.spec import host_devices

    script = "wc -c < /proc/timer_list; ls /dev"
    sandbox, insecure = run(script), run(script, security="insecure")
    assert sandbox.stdout.splitlines()[0] == "0"  # masked
    assert int(insecure.stdout.splitlines()[0]) > 0
    default = set(sandbox.stdout.splitlines()[1:])
    extra = {d["path"].removeprefix("/dev/") for d in host_devices()} - default
    extra = {name for name in extra if "/" not in name}
    assert extra and extra <= set(insecure.stdout.splitlines()[1:])


def test_ssh_socket_forwarded_with_owner_and_mode(run, tmp_path):
    agent = tmp_path / "agent.sock"

    async def scenario():
        async def reply(reader, writer):
            writer.write(b"pong:" + await reader.read(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(reply, str(agent))
        try:
            return await run.arun(
                "stat -c '%F %u %g %a' /run/buildkit/ssh_agent.0",
                user="tester", ssh=[SSHMount("/run/buildkit/ssh_agent.0", str(agent),
                                             uid=1000, gid=1000, mode=0o600)])
        finally:
            server.close()

    res = asyncio.run(scenario())
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "socket 1000 1000 600"


def test_agent_proxy_forwards_bytes(tmp_path):
    from pybk.workers.runc import AgentProxy

    agent = tmp_path / "agent.sock"
    proxy_path = tmp_path / "proxy.sock"

    async def scenario():
        async def reply(reader, writer):
            writer.write(b"pong:" + await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(reply, str(agent))
        proxy = AgentProxy(str(agent))
        await proxy.start(str(proxy_path), os.getuid(), os.getgid(), 0o600)
        try:
            reader, writer = await asyncio.open_unix_connection(str(proxy_path))
            writer.write(b"ping")
            await writer.drain()
            answer = await reader.read()
            writer.close()
            return answer, os.stat(proxy_path).st_mode & 0o777
        finally:
            await proxy.close()
            server.close()

    assert asyncio.run(scenario()) == (b"pong:ping", 0o600)


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_cancellation_kills_container_and_cleans_up(run, state_dir, tmp_path):
    marker = "987.654"
    mounts = [ExecMount("/scratch", (Mount("tmpfs", "tmpfs", ()),))]
    secret = SecretMount("/run/secrets/s", data=b"x")

    async def scenario():
        started = asyncio.Event()
        out: list[bytes] = []

        def on_out(chunk: bytes) -> None:
            out.append(chunk)
            started.set()

        task = asyncio.ensure_future(run.executor.run(
            run.process(f"echo started; exec sleep {marker}", network="none"), run.root,
            mounts, secrets=[secret], stdout=on_out))
        await asyncio.wait_for(started.wait(), 10)
        # "started" is echoed before the shell execs sleep: wait for the sleep to exist
        deadline = time.monotonic() + 10
        while not _processes_with(marker) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert _processes_with(marker)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    elapsed = asyncio.run(scenario())
    assert elapsed < 5
    assert _processes_with(marker) == []
    _assert_clean(state_dir)
    listed = subprocess.run(["runc", "--root", str(state_dir / "runc"), "list", "-q"],
                            capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == ""


def test_concurrent_runs(run, state_dir, tmp_path):
    # each run gets its own writable root, as snapshots give them, over one shared lower dir
    roots = []
    for i in range(4):
        upper, work = tmp_path / f"upper{i}", tmp_path / f"work{i}"
        upper.mkdir()
        work.mkdir()
        roots.append([Mount("overlay", "overlay", (f"lowerdir={run.rootfs}",
                                                   f"upperdir={upper}", f"workdir={work}"))])

    async def scenario():
        return await asyncio.gather(*(run.arun(f"echo {i} > /out; cat /out", root=root)
                                      for i, root in enumerate(roots)))

    results = asyncio.run(scenario())
    assert [(r.code, r.stdout) for r in results] == [(0, f"{i}\n") for i in range(4)]
    assert [(tmp_path / f"upper{i}/out").read_text() for i in range(4)] == [
        f"{i}\n" for i in range(4)]
    _assert_clean(state_dir)


def test_reap_stale_cleans_dead_process_leftovers(executor, state_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    bundle = state_dir / "bundles" / f"pybk-{dead.pid}-0123456789abcdef"
    (bundle / "rootfs").mkdir(parents=True)
    from pybk.core.store.mounts import mount

    mount(Mount("tmpfs", "tmpfs", ("size=1m",)), str(bundle / "rootfs"))
    live = state_dir / "bundles" / f"pybk-{os.getpid()}-fedcba9876543210"
    live.mkdir()
    try:
        assert executor.reap_stale() == [bundle.name]
        assert not bundle.exists()
        assert live.exists()
        assert find_mounts_under(str(state_dir)) == []
    finally:
        for path in find_mounts_under(str(state_dir)):
            unmount(path, lazy=True)
        live.rmdir()


def test_runtime_binary_missing(run, state_dir):
    from pybk.core.errors import NotAvailableError

    run.executor.binary = "/nonexistent/runc"
    with pytest.raises(NotAvailableError, match="OCI runtime '/nonexistent/runc' not found"):
        run("true")
    _assert_clean(state_dir)


@pytest.mark.parametrize("delay", [0, 0.005, 0.02])
def test_cancellation_at_any_moment_leaves_nothing(run, state_dir, delay):
    async def scenario():
        task = asyncio.ensure_future(run.arun("exec sleep 30", network="none",
                                              secrets=[SecretMount("/s", b"x")]))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    _assert_clean(state_dir)
    assert not (run.rootfs / "s").exists()


def test_etc_stubs_removed_from_minimal_root(run, tmp_path):
    minimal = tmp_path / "minimal"
    (minimal / "bin").mkdir(parents=True)
    (run.rootfs / "bin/busybox").rename(minimal / "bin/busybox")
    res = run(("/bin/busybox", "cat", "/etc/hosts"), root=[Mount("bind", str(minimal),
                                                               ("rbind",))])
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("127.0.0.1\tlocalhost pybk\n")
    assert not (minimal / "etc").exists()
