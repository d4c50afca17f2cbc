"""Resource limits without running anything: the config keys, what they put in the OCI spec
(``linux.resources``, ``linux.cgroupsPath``, ``process.rlimits``), the ``--ulimit`` /
``--cgroup-parent`` flags and the frontend's ``ulimit`` / ``cgroup-parent`` opts, and the
messages made from a stopped container's cgroup files."""

from __future__ import annotations

import pytest

from pybk.core.config.loader import load_config_text
from pybk.core.errors import BuildError, ConfigError, InputError, StepLimitError, UsageError
from pybk.core.interfaces import ProcessSpec
from pybk.workers import limits
from pybk.workers.limits import StepLimits
from pybk.workers.plugin import OCIWorker
from pybk.workers.spec import DEFAULT_NOFILE, generate_spec
from pybk.workers.user import ResolvedUser


def _spec(process: ProcessSpec, **kw):
    return generate_spec(process, rootfs="/r", user=ResolvedUser(0, 0, ()),
                         hosts_path="/h", resolv_conf_path="/rc", **kw)


def test_defaults_are_three_quarters_of_ram_and_4096_pids():
    config, warnings = load_config_text("")
    assert warnings == []
    step = StepLimits.from_config(config)
    assert step.memory == limits.host_memory() * 75 // 100
    assert step.pids == 4096
    assert step.cgroup_parent == ""


def test_config_keys_set_the_limits():
    config, warnings = load_config_text(
        '[pybk]\nstep-memory = "64MiB"\nstep-pids = 64\n'
        '[worker.oci]\ndefaultCgroupParent = "ci/builds"\n')
    assert warnings == []  # defaultCgroupParent is no longer "not supported yet"
    step = OCIWorker(OCIWorker.options_from_config(config), root="/nonexistent").step_limits()
    assert step == StepLimits(memory=64 << 20, pids=64, cgroup_parent="ci/builds")
    assert StepLimits.from_config(load_config_text(
        '[pybk]\nstep-memory = "10%"\n')[0]).memory == limits.host_memory() // 10


def test_a_worker_without_config_gets_the_defaults():
    step = OCIWorker(root="/nonexistent").step_limits()
    assert (step.memory, step.pids) == (limits.host_memory() * 75 // 100, 4096)


def test_zero_means_no_limit():
    step = StepLimits.from_config(load_config_text(
        "[pybk]\nstep-memory = 0\nstep-pids = 0\n")[0])
    assert (step.memory, step.pids) == (0, 0)
    resources = _spec(ProcessSpec(args=("true",)), limits=step)["linux"]["resources"]
    assert "memory" not in resources and "pids" not in resources


@pytest.mark.parametrize("text, error", [
    ('[pybk]\nstep-pids = -1\n', "must not be negative"),
    ('[pybk]\nstep-memory = "lots"\n', "invalid size"),
    ('[worker.oci]\ndefaultCgroupParent = "system.slice:pybk:"\n', "systemd cgroup paths"),
    ('[worker.oci]\ndefaultCgroupParent = "../escape"\n', '".." is not allowed'),
])
def test_bad_values_are_refused(text, error):
    with pytest.raises(ConfigError, match=error):
        load_config_text(text)


def test_limits_become_linux_resources():
    spec = _spec(ProcessSpec(args=("true",)), limits=StepLimits(memory=64 << 20, pids=64))
    resources = spec["linux"]["resources"]
    assert resources["memory"]["limit"] == 64 << 20
    if "swap" in resources["memory"]:
        assert resources["memory"]["swap"] == 64 << 20  # no swap beyond the limit
    assert resources["pids"] == {"limit": 64}
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]
    assert "cgroupsPath" not in spec["linux"]


def test_cgroup_path_is_buildkits():
    assert limits.cgroups_path("", "pybk-1-ab") is None
    assert limits.cgroups_path("ci/builds", "pybk-1-ab") == "/ci/builds/buildkit/pybk-1-ab"
    assert limits.cgroups_path("/ci/", "pybk-1-ab") == "/ci/buildkit/pybk-1-ab"
    spec = _spec(ProcessSpec(args=("true",)), cgroups_path="/p/buildkit/x")
    assert spec["linux"]["cgroupsPath"] == "/p/buildkit/x"
    with pytest.raises(BuildError, match="systemd cgroup paths"):
        limits.cgroups_path("a.slice:b:", "x")


def test_ulimits_become_rlimits_replacing_the_default_nofile():
    spec = _spec(ProcessSpec(args=("true",)))
    assert spec["process"]["rlimits"][0]["type"] == "RLIMIT_NOFILE"
    spec = _spec(ProcessSpec(args=("true",),
                             ulimits=(("nofile", 1000, 2000), ("nproc", 50, -1))))
    assert {r["type"]: (r["soft"], r["hard"]) for r in spec["process"]["rlimits"]} == {
        "RLIMIT_NOFILE": (1000, 2000), "RLIMIT_NPROC": (50, 2**64 - 1)}
    assert DEFAULT_NOFILE == 1048576
    with pytest.raises(BuildError, match="unknown ulimit"):
        _spec(ProcessSpec(args=("true",), ulimits=(("files", 1, 1),)))
    with pytest.raises(BuildError, match="above hard limit"):
        _spec(ProcessSpec(args=("true",), ulimits=(("nofile", 5, 4),)))


def test_frontend_ulimit_opt():
    from pybk.frontends.dockerfile.frontend import parse_ulimit, ulimits

    assert ulimits({"ulimit": "nofile=1024:2048,nproc=100"}) == [
        ("nofile", 1024, 2048), ("nproc", 100, 100)]
    assert parse_ulimit("core=-1") == ("core", -1, -1)
    for bad in ("nofile", "files=1", "nofile=a", "nofile=10:5"):
        with pytest.raises(InputError):
            parse_ulimit(bad)


def test_dockerfile_runs_get_the_ulimits_and_cgroup_parent():
    from pybk.frontends.dockerfile.convert import dockerfile_to_llb

    converted = dockerfile_to_llb(b"FROM scratch\nRUN true\n", ulimits=[("nofile", 10, 20)],
                                  cgroup_parent="ci")
    definition = converted.state.marshal(None)
    metas = [op.op.meta for op in _ops(definition) if op.kind == "exec"]
    assert len(metas) == 1
    assert [(u.name, u.soft, u.hard) for u in metas[0].ulimit] == [("nofile", 10, 20)]
    assert metas[0].cgroup_parent == "ci"


def _ops(definition):
    from pybk.core.llb.ops import Op

    return [Op.unmarshal(d) for d in definition.ops]


def test_cli_flags():
    from pybk.core.cli import buildopts

    assert buildopts.parse_ulimit("nofile=1024:2048") == "nofile=1024:2048"
    with pytest.raises(UsageError, match="--ulimit"):
        buildopts.parse_ulimit("nofile:1024")
    assert buildopts.parse_cgroup_parent("ci/builds") == "ci/builds"
    with pytest.raises(UsageError, match="--cgroup-parent"):
        buildopts.parse_cgroup_parent("x.slice:a:")


def test_messages_from_cgroup_files(tmp_path):
    memory, pids = tmp_path / "memory", tmp_path / "pids"
    memory.mkdir()
    pids.mkdir()
    step = StepLimits(memory=64 << 20, pids=64)
    paths = {"memory": str(memory), "pids": str(pids)}
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (pids / "pids.events").write_text("max 0\n")
    assert limits.inspect_cgroups(paths, step) is None
    (pids / "pids.events").write_text("max 3\n")
    (pids / "pids.max").write_text("64\n")
    assert limits.inspect_cgroups(paths, step) == (
        "the step hit its process limit: 3 fork(s) refused (limit 64 processes and threads, "
        "[pybk] step-pids)")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert limits.inspect_cgroups(paths, step) == (  # a fork bomb may hit both
        "the step ran out of memory (limit 64 MiB, [pybk] step-memory); the step hit its "
        "process limit: 3 fork(s) refused (limit 64 processes and threads, [pybk] step-pids)")
    (pids / "pids.events").write_text("max 0\n")
    assert limits.inspect_cgroups(paths, step) == (
        "the step ran out of memory (limit 64 MiB, [pybk] step-memory)")
    assert limits.inspect_cgroups(paths, StepLimits()) == (
        "the step ran out of memory (killed by the kernel's OOM killer)")
    error = StepLimitError("/bin/sh -c x", 137, "the step ran out of memory")
    assert str(error) == ('process "/bin/sh -c x" did not complete successfully: '
                          "exit code: 137: the step ran out of memory")
    assert error.exit_code == 1


def test_cgroup_paths_come_from_runcs_state(tmp_path):
    (tmp_path / "state.json").write_text('{"cgroup_paths": {"memory": "/sys/fs/cgroup/m/x"}}')
    assert limits.cgroup_paths(str(tmp_path)) == {"memory": "/sys/fs/cgroup/m/x"}
    assert limits.cgroup_paths(str(tmp_path / "missing")) == {}


def test_resource_flag_becomes_frontend_opts():
    from pybk.core.cli import buildopts

    assert buildopts.parse_resources(["memory=32m,cpu-quota=50000", "cpuset-cpus=0",
                                      "memory-swap=-1"]) == (
        "memory=33554432", "cpuquota=50000", "cpusetcpus=0", "memswap=-1")
    for bad in ("mem=1", "memory", "cpu-quota=lots", "memory=huge"):
        with pytest.raises(UsageError, match="--resource"):
            buildopts.parse_resources([bad])


def test_resource_opts_become_every_runs_linux_resources():
    from pybk.core import llb
    from pybk.frontends.dockerfile.convert import dockerfile_to_llb
    from pybk.frontends.dockerfile.frontend import linux_resources

    assert linux_resources({}) is None
    wanted = llb.LinuxResources(memory=32 << 20, memory_swap=-1, cpu_quota=50000,
                                cpuset_cpus="0")
    assert linux_resources({"memory": "32m", "memswap": "-1", "cpuquota": "50000",
                            "cpusetcpus": "0"}) == wanted
    with pytest.raises(InputError, match="invalid cpuquota"):
        linux_resources({"cpuquota": "x"})
    definition = dockerfile_to_llb(b"FROM scratch\nRUN true\nRUN false\n",
                                   linux_resources=wanted).state.marshal(None)
    execs = [op for op in _ops(definition) if op.kind == "exec"]
    assert len(execs) == 2
    for op in execs:
        assert definition.metadata[op.digest].linux_resources == wanted


def test_a_steps_resources_lower_the_daemons_limit_never_raise_it():
    daemon = StepLimits(memory=64 << 20, pids=64)
    lower = daemon.for_step((("memory", 32 << 20), ("cpu_quota", 50000), ("cpu_period", 100000)))
    assert (lower.memory, lower.memory_source) == (32 << 20, "--resource memory")
    resources = _spec(ProcessSpec(args=("true",)), limits=lower)["linux"]["resources"]
    assert resources["memory"]["limit"] == 32 << 20
    assert resources["cpu"] == {"quota": 50000, "period": 100000}
    higher = daemon.for_step((("memory", 1 << 30), ("memory_swap", -1)))
    assert (higher.memory, higher.memory_source) == (64 << 20, "[pybk] step-memory")
    assert higher.requested == ()
    unlimited = StepLimits().for_step((("memory", 1 << 30), ("memory_swap", -1)))
    assert _spec(ProcessSpec(args=("true",)), limits=unlimited)["linux"]["resources"][
        "memory"] == {"limit": 1 << 30, "swap": -1}
