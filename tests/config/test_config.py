"""buildkitd.toml loading: the seed example, every key, every broken file, GC defaults."""

import io
import json
from pathlib import Path

import attrs
import pytest

from pybk.core.cli.configcmd import debug_config_command
from pybk.core.config.filters import Selector, parse_filter
from pybk.core.config.gc import PruneRule, default_gc_policies, gc_prune_rules
from pybk.core.config.loader import config_to_json, load_config, load_config_text
from pybk.core.config.schema import Config, GCPolicy, OCIConfig, RegistryConfig
from pybk.core.converter import external_key, get_converter
from pybk.core.errors import ConfigError
from pybk.core.units import DiskSpace, Seconds

HERE = Path(__file__).parent
DATA = HERE / "data"
BROKEN = sorted((HERE / "broken").glob("*.toml"))
DOCS = HERE.parent.parent / "docs" / "config.md"
GIB = 1 << 30


def _schema_keys(cl: type, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """BuildKit key paths of every field of the schema (table values of dicts included)."""
    attrs.resolve_types(cl)
    keys = set()
    for a in attrs.fields(cl):
        key = (*prefix, external_key(a))
        keys.add(key)
        for tp in (a.type, *getattr(a.type, "__args__", ())):
            if isinstance(tp, type) and attrs.has(tp) and tp is not DiskSpace:
                keys |= _schema_keys(tp, key)
    return keys


# --------------------------------------------------------------------------------------------
# The seed example and a file with every key
# --------------------------------------------------------------------------------------------


def test_seed_example_loads_as_written():
    config, warnings = load_config(DATA / "seed-buildkitd.toml")
    assert config.root == "/var/lib/buildkit"
    assert config.insecure_entitlements == ["network.host", "security.insecure"]
    assert config.grpc.address == ["tcp://0.0.0.0:1234"]
    assert config.grpc.debug_address == "0.0.0.0:6060"
    assert (config.grpc.uid, config.grpc.gid) == (0, 0)
    assert config.grpc.tls.ca == "/etc/buildkit/tlsca.crt"
    assert config.history.max_age == 172800 and config.history.max_entries == 50
    oci = config.worker.oci
    assert oci.enabled is True and oci.snapshotter == "auto" and oci.binary == ""
    assert oci.platforms == ["linux/amd64", "linux/arm64"]
    assert oci.max_parallelism == 4
    assert oci.labels == {"foo": "bar"}
    assert oci.gc_keep_storage == DiskSpace(bytes=9000)
    assert oci.gc_policy[0] == GCPolicy(
        keep_bytes=DiskSpace(bytes=512000000), keep_duration=Seconds(172800),
        filters=["type==source.local", "type==exec.cachemount", "type==source.git.checkout"])
    assert oci.gc_policy[1] == GCPolicy(all=True, keep_bytes=DiskSpace(bytes=1024000000))
    hub = config.registry["docker.io"]
    assert hub.mirrors == ["yourmirror.local:5000", "core.harbor.domain/proxy.docker.io"]
    assert hub.http is True and hub.insecure is True and hub.ca == ["/etc/config/myca.pem"]
    assert [(k.key, k.cert) for k in hub.keypair] == [("/etc/config/key.pem",
                                                       "/etc/config/cert.pem")]
    assert config.registry["yourmirror.local:5000"] == RegistryConfig(http=True)
    assert config.log.level == "debug"  # from the deprecated debug = true
    joined = "\n".join(warnings)
    assert "seed-buildkitd.toml:1: debug: deprecated" in joined
    assert "worker.oci.gckeepstorage: deprecated, use reservedSpace" in joined
    assert config.worker.oci.cni_pool_size == 16 and "cniPoolSize" not in joined  # honoured
    assert "worker.containerd: pybk has no containerd worker" in joined
    # options pybk honours do not warn
    assert "max-parallelism" not in joined and "registry" not in joined


def test_seed_json_has_every_section():
    text, code = debug_config_command(DATA / "seed-buildkitd.toml", stderr=io.StringIO())
    assert code == 0
    data = json.loads(text)
    assert set(data) == {external_key(a) for a in attrs.fields(Config)}
    assert set(data) >= {"root", "insecure-entitlements", "log", "grpc", "otel", "cdi", "dns",
                         "history", "worker", "registry", "frontend", "system", "cache"}
    assert set(data["worker"]) == {"oci", "containerd"}
    assert data["worker"]["oci"]["max-parallelism"] == 4
    assert data["worker"]["oci"]["gcpolicy"][0]["keepDuration"] == "48h0m0s"
    assert data["worker"]["oci"]["gcpolicy"][1]["keepBytes"] == 1024000000
    assert data["registry"]["docker.io"]["keypair"] == [
        {"key": "/etc/config/key.pem", "cert": "/etc/config/cert.pem"}]
    assert set(data["frontend"]) == {"dockerfile.v0", "gateway.v0"}
    assert data["history"] == {"maxAge": "48h0m0s", "maxEntries": 50}


def test_every_key_loads_and_unsupported_ones_warn():
    config, warnings = load_config(DATA / "all-keys.toml")
    assert config.root == "/srv/pybk"
    assert config.log.level == "warn" and config.log.format == "json"
    assert config.worker.oci.binary == "crun"
    assert config.worker.oci.reserved_space == DiskSpace(percentage=10)
    assert config.worker.oci.snapshotter == "auto"  # stargz is not supported: normalised
    assert (config.worker.oci.network_mode, config.worker.oci.cni_config_path,
            config.worker.oci.cni_binary_path, config.worker.oci.cni_pool_size,
            config.worker.oci.bridge_name, config.worker.oci.bridge_subnet) == (
        "cni", "/etc/cni.json", "/opt/cni/bin", 8, "pybk0", "10.10.0.0/16")
    assert config.worker.containerd.runtime.options == {"BinaryName": "runc"}
    assert config.dns.nameservers == ["1.1.1.1", "2606:4700:4700::1111"]
    assert config.system.max_registry_concurrency == 4
    assert config.cache.gha.sign.command == ["cosign", "sign-blob", "-"]
    assert config.cache.gha.verify.policy.build_signer_uri.startswith("https://github.com/")
    assert (config.pybk.daemon, config.pybk.daemon_idle_timeout) == ("auto", 90)
    expected = [
        "proxyNetwork: not supported", "provenanceEnvDir: not supported",
        'grpc.address[2]: "fd" listeners', "grpc.securityDescriptor:",
        "otel: not supported by pybk yet; ignored (set: socketPath)",
        "cdi: not supported", 'worker.oci.snapshotter: "stargz" is not supported',
        "worker.oci.selinux:",
        "worker.oci.apparmor-profile:", "worker.oci.stargzSnapshotter:",
        "worker.containerd: pybk has no containerd worker",
        'registry."docker.io".capabilities:', "system.platformsCacheMaxAge:",
        "cache.gha: not supported", "insecure-entitlements[2]: the device entitlement",
        "trace: deprecated",
    ]
    for text in expected:
        assert any(text in w for w in warnings), text
    for key in ("networkMode", "cniConfigPath", "cniBinaryPath", "cniPoolSize", "bridgeName",
                "bridgeSubnet", "dns"):  # the network keys are honoured: no warning
        assert not any(f"worker.oci.{key}" in w or w.split(": ")[1].startswith(key)
                       for w in warnings), key
    lines = [int(w.split(":")[1]) for w in warnings]
    assert lines == sorted(lines)  # in file order


def test_every_schema_key_is_documented():
    if not DOCS.exists():
        pytest.skip("docs/config.md is not present")
    text = DOCS.read_text()
    forms = ("`{}`", "[{}", ".{}]", '"{}"')
    missing = [k for k in _schema_keys(Config)
               if not any(form.format(k[-1]) in text for form in forms)]
    assert missing == []


def test_defaults_are_buildkits():
    config, warnings = load_config(None)
    assert warnings == []
    assert config.history.max_age == 48 * 3600 and config.history.max_entries == 50
    assert config.worker.oci.snapshotter == "auto" and config.worker.oci.max_parallelism == 0
    assert config.worker.oci.gc_enabled
    assert config.log.level == "info" and config.log.format == "text"
    assert config.registry == {}
    assert (config.pybk.daemon, config.pybk.daemon_idle_timeout) == ("off", 600)
    assert load_config_text("", "empty.toml") == (config, [])


def test_json_round_trips_through_the_converter():
    config, _ = load_config(DATA / "all-keys.toml")
    data = config_to_json(config)
    assert get_converter().structure(json.loads(json.dumps(data)), Config) == config


def test_keys_differing_in_case_load_with_a_warning():
    config, warnings = load_config_text(
        '[worker.oci]\nMaxUsedSpace = "1GB"\nSnapshotter = "native"\n', "case.toml")
    assert config.worker.oci.max_used_space == DiskSpace(bytes=GIB)
    assert config.worker.oci.snapshotter == "native"
    assert warnings == [
        'case.toml:2: worker.oci.MaxUsedSpace: matched "maxUsedSpace" ignoring case; '
        'write "maxUsedSpace"',
        'case.toml:3: worker.oci.Snapshotter: matched "snapshotter" ignoring case; '
        'write "snapshotter"',
    ]


def test_trace_wins_over_debug_and_log_level_wins_over_both():
    assert load_config_text("debug = true\ntrace = true\n")[0].log.level == "trace"
    text = 'debug = true\n[log]\nlevel = "Error"\n'
    assert load_config_text(text)[0].log.level == "error"


def test_disabled_unsupported_sections_do_not_warn():
    text = '[worker.containerd]\nenabled = false\naddress = "/run/containerd.sock"\n'
    assert load_config_text(text)[1] == []


def test_gc_filter_warnings_name_fields_and_record_types():
    text = ('[[worker.oci.gcpolicy]]\n'
            'filters = ["typ==source.local", "type==source.locl", "inuse", "id~=^abc"]\n')
    _, warnings = load_config_text(text, "f.toml")
    assert warnings == [
        'f.toml:2: worker.oci.gcpolicy[0].filters[0]: filter field "typ" never matches a '
        'cache record (did you mean "type"?)',
        'f.toml:2: worker.oci.gcpolicy[0].filters[1]: "source.locl" is not a cache record '
        'type (did you mean "source.local"?)',
    ]


# --------------------------------------------------------------------------------------------
# Broken files: every problem, with its key path and line, exit 2, no traceback
# --------------------------------------------------------------------------------------------


def _expectations(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [line[len("# expect: "):] for line in text.splitlines()
            if line.startswith("# expect: ")]


def test_there_are_enough_broken_files():
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_file_reports_every_problem(path):
    expected = _expectations(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    text, code = debug_config_command(path, stderr=io.StringIO())
    assert code == 2
    assert "Traceback" not in text
    lines = text.splitlines()
    assert lines[0] == f"invalid config {path}:"
    prefix = f"  {path}:"
    reported = [line[len(prefix):] for line in lines[1:] if line.startswith(prefix)]
    assert reported == expected


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_file_raises_config_error_with_all_messages(path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert len(info.value.messages) == len(_expectations(path))
    assert info.value.exit_code == 2


def test_toml_syntax_error_shows_the_line_and_a_caret():
    with pytest.raises(ConfigError) as info:
        load_config_text('[worker.oci]\n  gc = yes\n', "x.toml")
    (message,) = info.value.messages
    assert message.splitlines() == ["x.toml:2:8: invalid TOML: Invalid value",
                                    "      gc = yes", "           ^"]


def test_missing_file_is_a_config_error(tmp_path):
    text, code = debug_config_command(tmp_path / "nope.toml")
    assert code == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory" in text


def test_debug_config_writes_warnings_to_stderr(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[otel]\nsocketPath = "/run/otel.sock"\n[worker.oci]\nbinary = "crun"\n')
    err = io.StringIO()
    text, code = debug_config_command(path, stderr=err)
    assert code == 0
    assert json.loads(text)["worker"]["oci"]["binary"] == "crun"
    assert err.getvalue() == (f"warning: {path}:1: otel: not supported by pybk yet; ignored "
                              "(set: socketPath)\n")


# --------------------------------------------------------------------------------------------
# GC policies (§6.2)
# --------------------------------------------------------------------------------------------


def test_default_policies_use_the_worker_caps():
    worker = OCIConfig(reserved_space=DiskSpace(bytes=GIB), max_used_space=DiskSpace(
        percentage=50), min_free_space=DiskSpace(bytes=5 * GIB))
    policies = default_gc_policies(worker, 100 * GIB)
    assert [p.all for p in policies] == [False, False, False, True]
    first = policies[0]
    assert first.filters == ["type==source.local", "type==exec.cachemount",
                             "type==source.git.checkout"]
    assert first.keep_duration == 48 * 3600 and first.max_used_space == DiskSpace(
        bytes=512_000_000)
    assert first.reserved_space.is_unset and first.min_free_space.is_unset
    assert policies[1].keep_duration == 60 * 24 * 3600
    for policy in policies[1:]:
        assert (policy.reserved_space, policy.max_used_space, policy.min_free_space) == (
            DiskSpace(bytes=GIB), DiskSpace(percentage=50), DiskSpace(bytes=5 * GIB))
    assert policies[2].keep_duration == 0 and policies[3].keep_duration == 0


def test_default_policies_fall_back_to_gckeepstorage():
    worker = OCIConfig(gc_keep_storage=DiskSpace(bytes=7 * GIB))
    caps = default_gc_policies(worker, 100 * GIB)[2]
    assert caps == GCPolicy(reserved_space=DiskSpace(bytes=7 * GIB))


def test_default_policies_detect_caps_from_the_disk():
    small = default_gc_policies(OCIConfig(), 50 * GIB)[3]
    # 10 % of 50 GiB -> 6 GB (< 10 GB), 80 % -> 41 GB (< 100 GB), 20 % kept as a percentage
    assert small.reserved_space == DiskSpace(percentage=10)
    assert small.max_used_space == DiskSpace(percentage=80)
    assert small.min_free_space == DiskSpace(percentage=20)
    big = default_gc_policies(OCIConfig(), 1000 * GIB)[3]
    assert big.reserved_space == DiskSpace(bytes=10 * 10**9)
    assert big.max_used_space == DiskSpace(bytes=100 * 10**9)
    rules = gc_prune_rules(OCIConfig(), 50 * GIB)
    assert rules[3] == PruneRule(all=True, reserved_space=6 * 10**9,
                                 max_used_space=41 * 10**9, min_free_space=11 * 10**9)


def test_prune_rules_map_keep_bytes_and_honour_gc_false():
    config, _ = load_config(DATA / "seed-buildkitd.toml")
    rules = gc_prune_rules(config.worker.oci, 100 * GIB)
    assert rules == [
        PruneRule(filters=("type==source.local", "type==exec.cachemount",
                           "type==source.git.checkout"),
                  keep_duration=172800.0, reserved_space=512000000),
        PruneRule(all=True, reserved_space=1024000000),
    ]
    off, _ = load_config_text("[worker.oci]\ngc = false\n")
    assert gc_prune_rules(off.worker.oci, 100 * GIB) == []


# --------------------------------------------------------------------------------------------
# Filter syntax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "selectors"),
    [
        ("type==source.local", [Selector(("type",), "==", "source.local")]),
        ("type!=regular,inuse", [Selector(("type",), "!=", "regular"), Selector(("inuse",), "")]),
        ("description~=/^pulled .*/", [Selector(("description",), "~=", "^pulled .*")]),
        ('labels."a.b"==x', [Selector(("labels", "a.b"), "==", "x")]),
        (" id == abc , shared ", [Selector(("id",), "==", "abc"), Selector(("shared",), "")]),
        ("", []),
    ],
)
def test_parse_filter(text, selectors):
    assert parse_filter(text) == selectors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("type=x", 'expected an operator ("==", "!=" or "~=") at position 5'),
        ("type===x", "got \"===\""),
        ("type==", "expected a value"),
        ("type==x,", "expected a field name at position 9"),
        ("==x", 'expected a field name at position 1, got "="'),
        ("type==x y", 'unexpected "y" at position 9'),
        ('"open', "not terminated"),
        ("id~=(", "invalid regular expression"),
    ],
)
def test_parse_filter_errors(text, message):
    with pytest.raises(ValueError) as info:
        parse_filter(text)
    assert message in str(info.value)
