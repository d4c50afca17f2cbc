"""Every key of the buildkitd.toml schema does what it says: each one either has behaviour tests
(:data:`BEHAVIOUR`: key → test node ids, each checked to exist) or warns when set to anything
but its default (a config with only that key set is loaded and a warning names it). No key is
accepted silently. docs/config.md's "Every key" table says the same, row by row."""

from __future__ import annotations

import ast
import json
import re
import types
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from pybk.core.config.loader import load_config_text
from pybk.core.config.schema import Config
from pybk.core.converter import external_key, field_meta, render_path
from pybk.core.model import Factory, fields, has, resolve_types
from pybk.core.units import DiskSpace, Seconds

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "config.md"
#: a table entry and a list entry in a key's rendered name
HOST, ITEM = '"HOST"', "[]"

_NET = "tests/workers/test_network.py"
_GRPC = "tests/remote/test_grpc.py"
_UNIX = "tests/remote/test_unix_session.py"
_REG = "tests/registry/test_client.py"
_LIMITS = "tests/limits/test_limits_spec.py"
_GC = "tests/config/test_config.py::test_prune_rules_map_keep_bytes_and_honour_gc_false"
_CAPS = "tests/config/test_config.py::test_default_policies_use_the_worker_caps"
_KB = "tests/config/test_key_behaviour.py"
_RL = "tests/rootless/test_rootless_worker.py"

#: the keys pybk acts on, each with the tests that show it
BEHAVIOUR: dict[str, tuple[str, ...]] = {
    "root": (f"{_KB}::test_root_is_the_daemons_store",
             f"{_KB}::test_an_embedded_build_names_a_root_it_does_not_use"),
    "insecure-entitlements": (
        "tests/dockerfile_build/test_entitlements.py::test_allow_without_a_granting_config_exits_2",
        "tests/dockerfile_build/test_entitlements.py::"
        "test_granted_network_host_builds_on_the_host_network"),
    "log.format": ("tests/daemon/test_daemonlog.py::test_json_log_every_line_is_an_object",
                   "tests/daemon/test_daemonlog.py::test_text_log_keeps_its_lines"),
    "log.level": ("tests/daemon/test_daemonlog.py::test_log_level_error_writes_only_errors",),
    "grpc.address": (f"{_GRPC}::test_mtls_refuses_bad_clients_and_keeps_serving",
                     f"{_GRPC}::test_daemon_addresses_it_does_not_serve"),
    "grpc.debugAddress": ("tests/daemon/test_debugendpoint.py::test_unix_debug_address",
                          "tests/daemon/test_debugendpoint.py::"
                          "test_bad_and_public_debug_addresses"),
    "grpc.uid": (f"{_UNIX}::test_socket_is_owned_by_grpc_uid_and_gid",
                 f"{_UNIX}::test_grpc_uid_runs_commands_in_a_session"),
    "grpc.gid": (f"{_UNIX}::test_socket_is_owned_by_grpc_uid_and_gid",
                 f"{_UNIX}::test_grpc_gid_member_runs_commands_and_others_are_refused"),
    "grpc.tls.cert": (f"{_GRPC}::test_mtls_refuses_bad_clients_and_keeps_serving",
                      f"{_GRPC}::test_sighup_reloads_the_certificates"),
    "grpc.tls.key": (f"{_GRPC}::test_mtls_refuses_bad_clients_and_keeps_serving",
                     f"{_GRPC}::test_sighup_reloads_the_certificates"),
    "grpc.tls.ca": (f"{_GRPC}::test_mtls_refuses_bad_clients_and_keeps_serving",),
    "dns.nameservers": (f"{_NET}::test_dns_and_add_host_reach_the_step_but_not_the_image",
                        "tests/workers/test_spec.py::test_dns_config_replaces_only_what_it_sets"),
    "dns.options": (f"{_NET}::test_dns_and_add_host_reach_the_step_but_not_the_image",
                    "tests/workers/test_spec.py::test_dns_config_replaces_only_what_it_sets"),
    "dns.searchDomains": (f"{_NET}::test_dns_and_add_host_reach_the_step_but_not_the_image",),
    # build history: these tests come with the history feature
    "history.maxAge": ("tests/history/test_history.py::test_retention_by_max_age",),
    "history.maxEntries": ("tests/history/test_history.py::test_retention_by_max_entries",),
    "worker.oci.enabled": ("tests/workers/test_debug_workers.py::test_every_worker_disabled",
                           "tests/workers/test_selection.py::test_no_worker_left_is_a_usage_error"),
    "worker.oci.labels": ("tests/workers/test_debug_workers.py::test_embedded",
                          "tests/workers/test_selection.py::"
                          "test_config_platforms_and_labels_are_the_oci_workers"),
    "worker.oci.platforms": ("tests/workers/test_debug_workers.py::test_embedded",
                             f"{_KB}::test_platforms_set_the_build_and_default_target_platform",
                             f"{_KB}::test_platforms_choose_the_worker_of_a_platform"),
    "worker.oci.max-parallelism": ("tests/daemon/test_parallelism.py::"
                                   "test_two_builds_share_one_slot",),
    "worker.oci.defaultCgroupParent": (
        f"{_LIMITS}::test_config_keys_set_the_limits",
        "tests/workers/test_limits.py::test_default_cgroup_parent_holds_the_containers"),
    "worker.oci.gc": ("tests/daemon/test_autogc.py::test_gc_false_prunes_nothing",),
    "worker.oci.reservedSpace": (_CAPS, "tests/workers/test_debug_workers.py::test_embedded"),
    "worker.oci.maxUsedSpace": (_CAPS,),
    "worker.oci.minFreeSpace": (_CAPS,),
    "worker.oci.gcpolicy[].all": ("tests/daemon/test_autogc.py::"
                                  "test_build_prunes_what_the_policy_says", _GC),
    "worker.oci.gcpolicy[].filters": (_GC, "tests/store/test_store.py::test_gc_default_policies"),
    "worker.oci.gcpolicy[].keepDuration": ("tests/daemon/test_autogc.py::"
                                           "test_build_prunes_what_the_policy_says", _GC),
    "worker.oci.gcpolicy[].reservedSpace": (_GC,),
    "worker.oci.gcpolicy[].maxUsedSpace": ("tests/workers/test_debug_workers.py::test_embedded",),
    "worker.oci.gcpolicy[].minFreeSpace": (f"{_KB}::test_gcpolicy_min_free_space_is_a_prune_rule",),
    "worker.oci.networkMode": (f"{_NET}::test_worker_network_mode_none_and_host",
                               f"{_NET}::test_default_network_is_a_bridge_with_an_address_and_a_"
                               "way_out"),
    "worker.oci.cniConfigPath": (f"{_NET}::test_user_cni_config_with_its_own_subnet",),
    "worker.oci.cniBinaryPath": (f"{_NET}::test_user_cni_config_with_its_own_subnet",
                                 f"{_NET}::test_auto_without_plugins_falls_back_to_host_and_says_"
                                 "so_once"),
    "worker.oci.cniPoolSize": (f"{_NET}::test_cni_pool_size_bounds_the_idle_namespaces",),
    "worker.oci.bridgeName": (f"{_NET}::test_a_hundred_steps_reuse_one_namespace_and_leave_nothing",),
    "worker.oci.bridgeSubnet": (f"{_NET}::test_a_hundred_steps_reuse_one_namespace_and_leave_"
                                "nothing",),
    "worker.oci.snapshotter": (f"{_KB}::test_snapshotter_is_the_stores",
                               f"{_RL}::test_fuse_overlayfs_snapshotter"),
    "worker.oci.rootless": (f"{_RL}::test_limits_are_refused_where_cgroups_are_not_delegated",),
    "worker.oci.noProcessSandbox": (f"{_RL}::test_no_process_sandbox_shows_the_engines_"
                                    "processes",),
    "worker.oci.binary": (f"{_KB}::test_binary_is_the_runtime_steps_run_in",),
    f"registry.{HOST}.mirrors": (f"{_REG}::test_pull_through_mirror_of_unreachable_host",
                                 f"{_REG}::test_pull_through_cache_mirror_for_docker_hub"),
    f"registry.{HOST}.http": (f"{_KB}::test_registry_http_is_plain_http",),
    f"registry.{HOST}.insecure": (f"{_REG}::test_insecure_host_falls_back_to_plain_http",
                                  f"{_REG}::test_tls_with_ca_client_keypair_and_insecure"),
    f"registry.{HOST}.ca": (f"{_REG}::test_tls_with_ca_client_keypair_and_insecure",),
    f"registry.{HOST}.keypair[].key": (f"{_REG}::test_tls_with_ca_client_keypair_and_insecure",),
    f"registry.{HOST}.keypair[].cert": (f"{_REG}::test_tls_with_ca_client_keypair_and_insecure",),
    f"registry.{HOST}.tlsconfigdir": (f"{_REG}::test_tls_with_ca_client_keypair_and_insecure",),
    'frontend."dockerfile.v0".enabled': ("tests/dockerfile_build/test_frontend_disabled.py::"
                                         "test_disabled_dockerfile_frontend_refuses_builds",),
    'frontend."gateway.v0".enabled': (f"{_KB}::test_disabled_gateway_frontend_refuses_images",),
    'frontend."gateway.v0".allowedRepositories': (
        "tests/gateway/test_gateway_image.py::test_disallowed_repository_fails_before_pulling",
        "tests/gateway/test_gateway_image.py::"
        "test_allowed_repository_compares_names_without_tags"),
    "pybk.daemon": ("tests/daemon/test_autodaemon.py::"
                    "test_daemon_auto_starts_one_the_next_command_uses_and_it_stops_when_idle",
                    "tests/daemon/test_autodaemon.py::test_daemon_off_by_default_and_when_off"),
    "pybk.daemon-idle-timeout": ("tests/daemon/test_autodaemon.py::"
                                 "test_daemon_auto_starts_one_the_next_command_uses_and_it_"
                                 "stops_when_idle",),
    "pybk.tcp-without-tls": (f"{_GRPC}::test_tcp_without_tls_needs_the_config_to_say_so",),
    "pybk.step-memory": ("tests/workers/test_limits.py::test_out_of_memory_fails_with_the_limit_"
                         "named", f"{_LIMITS}::test_config_keys_set_the_limits"),
    "pybk.step-pids": ("tests/workers/test_limits.py::test_a_fork_bomb_stops_at_the_pids_limit",
                       f"{_LIMITS}::test_config_keys_set_the_limits"),
}


#: values that pass a key's checks, for keys whose type alone does not give one
SAMPLES: dict[str, Any] = {
    "insecure-entitlements": ["network.host"],
    "log.format": "json", "log.level": "debug",
    "grpc.address": ["unix:///run/example.sock"],
    "dns.nameservers": ["192.0.2.53"],
    "networkMode": "host", "bridgeName": "pybk9", "bridgeSubnet": "10.99.0.0/16",
    "platforms": ["linux/arm64"], "filters": ["type==regular"],
    "worker.oci.snapshotter": "native", "pybk.daemon": "auto",
}


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


class Key:
    """One leaf of the schema: its path (``HOST``/``ITEM`` standing for a table's or a list's
    entry), the field, and why it warns (its own or an enclosing table's ``unsupported`` or
    ``deprecated``), with the path of what carries that mark."""

    def __init__(self, path: tuple[Any, ...], field: Any, warns: str | None,
                 flagged: tuple[Any, ...] | None):
        self.path, self.field, self.warns, self.flagged = path, field, warns, flagged

    @property
    def name(self) -> str:
        out = ""
        for part in self.path:
            if part is ITEM:
                out += ITEM
            elif part is HOST:
                out += "." + HOST
            else:
                out += ("." if out else "") + render_path((part,))
        return out


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and has(tp) and tp is not DiskSpace


def walk(cl: type = Config, path: tuple[Any, ...] = (), warns: str | None = None,
         flagged: tuple[Any, ...] | None = None) -> Iterator[Key]:
    resolve_types(cl)
    for a in fields(cl):
        here = (*path, external_key(a))
        deprecated = field_meta(a, "deprecated")
        mark = field_meta(a, "unsupported") or (deprecated and f"deprecated, {deprecated}")
        own_warns, own_flagged = (warns, flagged) if warns else (
            (mark, here) if mark else (None, None))
        tp = _unwrap(a.type)
        args = typing.get_args(tp)
        if _is_model(tp):
            yield from walk(tp, here, own_warns, own_flagged)
        elif typing.get_origin(tp) is list and args and _is_model(args[0]):
            yield from walk(args[0], (*here, ITEM), own_warns, own_flagged)
        elif typing.get_origin(tp) is dict and len(args) == 2 and _is_model(args[1]):
            yield from walk(args[1], (*here, HOST), own_warns, own_flagged)
        else:
            yield Key(here, a, own_warns, own_flagged)


@cache
def every_key() -> tuple[Key, ...]:
    return tuple(walk())


# --------------------------------------------------------------------------------------------
# A config with one key set
# --------------------------------------------------------------------------------------------


def _default(a: Any) -> Any:
    return a.default.factory() if isinstance(a.default, Factory) else a.default


def sample(key: Key) -> Any:
    """A value of ``key`` other than its default that passes its checks."""
    for name in (key.name, key.path[-1]):
        if name in SAMPLES:
            return SAMPLES[name]
    tp, default = _unwrap(key.field.type), _default(key.field)
    if tp is bool:
        return default is not True
    if tp is Seconds:
        return "1h"
    if tp is DiskSpace:
        return "1GB"
    if tp is int:
        return 3
    if tp is str:
        return "example"
    origin = typing.get_origin(tp)
    if origin is list:
        return ["example"]
    if origin is dict:
        return {"example": "value"}
    raise AssertionError(f"{key.name}: no sample value for {tp}")


def _required(cl: type) -> dict[str, Any]:
    """Values for the fields of ``cl`` that have no default (a keypair's key and cert)."""
    from pybk.core.model import NOTHING

    return {external_key(a): "/example" for a in fields(cl) if a.default is NOTHING}


def raw_config(key: Key) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The TOML data setting only ``key``, and its concrete path (``HOST`` → ``example.test``,
    ``ITEM`` → index 0)."""
    data: dict[str, Any] = {}
    node, cl, concrete = data, Config, []
    parts = list(key.path)
    for i, part in enumerate(parts):
        if part is ITEM or part is HOST:
            continue
        concrete.append(part)
        if i == len(parts) - 1:
            node[part] = sample(key)
            break
        nxt = parts[i + 1]
        resolve_types(cl)
        tp = _unwrap(next(f for f in fields(cl) if external_key(f) == part).type)
        if nxt is ITEM:
            cl = typing.get_args(tp)[0]
            entry = _required(cl)
            node[part] = [entry]
            node = entry
            concrete.append(0)
        elif nxt is HOST:
            cl = typing.get_args(tp)[1]
            entry = _required(cl)
            node[part] = {"example.test": entry}
            node = entry
            concrete.append("example.test")
        else:
            cl = tp
            node = node.setdefault(part, {})
    return data, tuple(p for p in concrete if p not in (ITEM, HOST))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(data: dict[str, Any]) -> str:
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in data.items())


def load_one(key: Key) -> tuple[tuple[Any, ...], list[str]]:
    data, concrete = raw_config(key)
    _, warnings = load_config_text(toml_text(data), "one.toml")
    return concrete, warnings


# --------------------------------------------------------------------------------------------
# Test node ids
# --------------------------------------------------------------------------------------------


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return frozenset(n for n in names if n.rpartition("::")[2].startswith("test"))


def node_exists(node_id: str) -> bool:
    """Whether ``path::name`` (or ``path::Class::name``, parameters aside) is a test function
    of that file."""
    path, _, name = node_id.partition("::")
    file = REPO / path
    if not file.is_file():
        return False
    return name.split("[", 1)[0] in _test_names(file)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_every_key_has_behaviour_tests_or_warns():
    unaccounted = [k.name for k in every_key() if k.name not in BEHAVIOUR and not k.warns]
    assert unaccounted == []
    names = {k.name for k in every_key()}
    assert sorted(set(BEHAVIOUR) - names) == []  # no row for a key the schema does not have


@pytest.mark.parametrize("key", [k for k in every_key() if k.warns], ids=lambda k: k.name)
def test_a_key_that_is_not_acted_on_warns_naming_it(key):
    concrete, warnings = load_one(key)
    assert key.flagged is not None
    flagged = render_path(_concrete_prefix(concrete, key.flagged))
    prefix = _concrete_prefix(concrete, key.flagged)
    # a warning on an enclosing table lists what was set under it (its first part)
    below = str(concrete[len(prefix)]) if len(concrete) > len(prefix) else ""
    named = [w for w in warnings if f" {flagged}: " in w and below in w]
    assert named, (key.name, warnings)


def _concrete_prefix(concrete: tuple[Any, ...], flagged: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of the concrete path that the flagged (abstract) path covers."""
    n = len([p for p in flagged if p not in (ITEM, HOST)])
    out, seen = [], 0
    for part in concrete:
        if seen == n:
            break
        out.append(part)
        if not isinstance(part, int) and part != "example.test":
            seen += 1
    return tuple(out)


@pytest.mark.parametrize("key", [k for k in every_key() if not k.warns], ids=lambda k: k.name)
def test_a_key_that_is_acted_on_loads_without_a_warning(key):
    concrete, warnings = load_one(key)
    assert not [w for w in warnings if render_path(concrete) in w], warnings


def test_every_behaviour_test_exists():
    missing = [(key, node) for key, nodes in BEHAVIOUR.items() for node in nodes
               if not node_exists(node)]
    assert missing == []
    assert all(nodes for nodes in BEHAVIOUR.values())


# --------------------------------------------------------------------------------------------
# docs/config.md
# --------------------------------------------------------------------------------------------

DOCS_HEADING = "## Every key"
_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<status>.+) \|$")


def docs_status(key: Key) -> str:
    """The status column of ``key``'s row in docs/config.md."""
    if key.name in BEHAVIOUR:
        tests = ", ".join(f"`{n}`" for n in BEHAVIOUR[key.name])
        return f"supported (test: {tests})"
    assert key.warns
    where = "" if key.flagged == key.path else f" (warning on `{_abstract_name(key.flagged)}`)"
    return f"accepted, warns: {key.warns}{where}"


def _abstract_name(path: tuple[Any, ...]) -> str:
    return Key(path, None, None, None).name


def docs_table() -> str:
    """The table docs/config.md carries under :data:`DOCS_HEADING`."""
    rows = ["| Key | Status |", "|---|---|"]
    rows += [f"| `{k.name}` | {docs_status(k)} |" for k in every_key()]
    return "\n".join(rows) + "\n"


def _docs_rows() -> dict[str, str]:
    text = DOCS.read_text()
    assert DOCS_HEADING in text, f"docs/config.md has no {DOCS_HEADING!r} section"
    section = text.split(DOCS_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = _ROW.match(line)
        if m:
            assert m["key"] not in rows, f"{m['key']}: two rows"
            rows[m["key"]] = m["status"]
    return rows


def test_docs_table_has_every_key_and_every_supported_row_names_its_tests():
    rows = _docs_rows()
    assert sorted(rows) == sorted(k.name for k in every_key())
    for key in every_key():
        status = rows[key.name]
        if status.startswith("supported"):
            named = re.findall(r"`([^`]+::[^`]+)`", status)
            assert named, f"{key.name}: supported without a test"
            assert key.name in BEHAVIOUR and set(named) == set(BEHAVIOUR[key.name]), key.name
            assert all(node_exists(n) for n in named), key.name
        else:
            assert status.startswith("accepted, warns: ") and key.warns, (key.name, status)
    assert all(rows[k.name] == docs_status(k) for k in every_key()), (
        "docs/config.md's table differs: regenerate it with "
        "`python3 tests/config/test_every_key.py`")


if __name__ == "__main__":
    print(docs_table(), end="")


def test_no_table_in_the_config_docs_says_supported_without_a_test():
    """Every table row of docs/config.md (the sections' tables too) whose status is
    "supported" names the tests behind it, and each of them exists."""
    bare = []
    for number, line in enumerate(DOCS.read_text().splitlines(), 1):
        if not line.startswith("|"):
            continue
        last = line.rstrip().rstrip("|").rsplit("|", 1)[-1].strip()
        if last.startswith("supported"):
            named = re.findall(r"`(tests/[^`]+::[^`]+)`", last)
            if not named or not all(node_exists(n) for n in named):
                bare.append(f"docs/config.md:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)
