"""``check_entitlements``: what a build asks for must be well formed and granted by the
configuration's ``insecure-entitlements``; the Python API checks it before anything runs."""

from __future__ import annotations

import re

import pytest

from pybk.core import llb
from pybk.core.config.loader import load_config_text
from pybk.core.config.schema import Config, check_entitlements
from pybk.core.engine.client import Client
from pybk.core.errors import ConfigError, UsageError

REFUSED = ("granting entitlement {} is not allowed by build daemon configuration "
           "(add it to insecure-entitlements in buildkitd.toml)")


def test_nothing_asked_nothing_needed():
    assert check_entitlements((), Config()) == frozenset()
    assert check_entitlements((), None) == frozenset()


def test_default_config_grants_nothing():
    for name in ("network.host", "security.insecure"):
        with pytest.raises(UsageError) as info:
            check_entitlements([name], Config())
        assert str(info.value) == REFUSED.format(name)


def test_every_request_must_be_granted():
    config = Config(insecure_entitlements=["network.host"])
    assert check_entitlements(["network.host"], config) == {"network.host"}
    with pytest.raises(UsageError, match=f"^{re.escape(REFUSED.format('security.insecure'))}$"):
        check_entitlements(iter(["network.host", "security.insecure"]), config)


def test_device_requests_compare_by_name():
    config = Config(insecure_entitlements=["device=gpu0"])
    assert check_entitlements(["device=gpu1,alias=x"], config) == {"device"}
    with pytest.raises(UsageError, match="granting entitlement device "):
        check_entitlements(["device=gpu0"], Config(insecure_entitlements=["network.host"]))


@pytest.mark.parametrize("value,message", [
    ("security.insecure=yes", "security.insecure takes no value"),
    ("network.host=1", "network.host takes no value"),
    ("network.hots", 'did you mean "network.host"?'),
    ("device=", "missing device name"),
])
def test_malformed_requests_are_usage_errors(value, message):
    granted = Config(insecure_entitlements=["network.host", "security.insecure", "device"])
    with pytest.raises(UsageError, match=message):
        check_entitlements([value], granted)


def test_malformed_config_entry_is_a_config_error():
    text = 'insecure-entitlements = [\n  "network.host",\n  "security.insecure=yes",\n]\n'
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pybkd.toml")
    assert info.value.messages == [
        'pybkd.toml:3: insecure-entitlements[1]: invalid entitlement "security.insecure=yes": '
        "security.insecure takes no value"]


def test_client_without_config_refuses_before_solving(tmp_path):
    state = llb.scratch().file(llb.mkfile("/f", 0o644, b"x"))
    with Client(root=tmp_path / "store") as client:
        with pytest.raises(UsageError, match=re.escape(REFUSED.format("network.host"))):
            client.solve(state, progress=None, entitlements=["network.host"])
        assert client._worker is None  # the store was never opened
    assert not (tmp_path / "store").exists()
