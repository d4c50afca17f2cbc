"""``pybk build`` flag parsing: malformed values exit 2 with a message naming the flag."""

import pytest

from pybk.core.cli import buildopts as bo
from pybk.core.cli.commands import main
from pybk.core.engine.request import CacheSpec, OutputSpec, SecretSpec
from pybk.core.errors import UsageError


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("PYBK_SECRET_UNSET", raising=False)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return tmp_path


BAD = [
    (["-o", "dest=out"], "--output", "type= is required"),
    (["-o", "type=nope,dest=x"], "--output", "unknown output type 'nope'"),
    (["-o", "type=locl,dest=x"], "--output", "did you mean 'local'"),
    (["-o", "type=local"], "--output", "dest"),
    (["-o", "type=local,dest"], "--output", "expected key=value"),
    (["-o", 'type=local,dest="unterminated'], "--output", "unterminated quote"),
    (["-o", "type=local,dest=a,dest=b"], "--output", "duplicate key"),
    (["-o", "type=local,output=x"], "--output", "output= is not supported"),
    (["-o", ""], "--output", "empty value"),
    (["-o", "type=local,=x,dest=y"], "--output", "expected key=value"),
    (["--cache-to", "type=nosuch,dest=x"], "--cache-to", "unknown cache type 'nosuch'"),
    (["--cache-from", "type=bogus,src=x"], "--cache-from", "unknown cache type 'bogus'"),
    (["--cache-to", "mode=max"], "--cache-to", "type= is required"),
    (["--cache-from", ""], "--cache-from", "empty value"),
    (["--secret", "src=/etc/hostname"], "--secret", "id= is required"),
    (["--secret", "id=a,src=/no/such/file"], "--secret", "not found"),
    (["--secret", "id=a,type=disk"], "--secret", "invalid type 'disk'"),
    (["--secret", "id=a,src=/etc/hostname,env=X"], "--secret", "mutually exclusive"),
    (["--secret", "id=a,color=red"], "--secret", "unknown key 'color'"),
    (["--secret", "id"], "--secret", "expected key=value"),
    (["--secret", "id=PYBK_SECRET_UNSET,type=file"], "--secret", "not found"),
    (["--ssh", "default"], "--ssh", "SSH_AUTH_SOCK is not set"),
    (["--ssh", "bad id"], "--ssh", "invalid ssh id"),
    (["--ssh", "key=/no/such/key"], "--ssh", "does not exist"),
    (["--ssh", "key="], "--ssh", "expected a socket or key path"),
    (["--build-context", "noequals"], "--build-context", "expected name=value"),
    (["--build-context", "base=docker-image://"], "--build-context", "needs an image reference"),
    (["--build-context", "base=/no/such/dir"], "--build-context", "not found"),
    (["--build-context", "base=ftp://x/y"], "--build-context", "unsupported scheme"),
    (["--allow", "network.everything"], "--allow",
     'unknown entitlement "network.everything" (did you mean "network.host"?)'),
    (["--allow", "security.insecure=yes"], "--allow",
     'invalid entitlement "security.insecure=yes": security.insecure takes no value'),
    (["--allow", "network.host=1"], "--allow", "network.host takes no value"),
    (["--allow", "device="], "--allow", "missing device name"),
    (["--allow", "device=gpu,color=red"], "--allow", 'unknown device option "color=red"'),
    (["--platform", "amd64"], "--platform", "expected os/arch"),
    (["--progress", "fancy"], "--progress", "invalid value 'fancy'"),
    (["--network", "bridge"], "--network", "invalid value 'bridge'"),
    (["--build-arg", "=x"], "--build-arg", "invalid build argument"),
    (["--add-host", "justhost"], "--add-host", "expected host:ip"),
    (["--label", "novalue"], "--label", "expected key=value"),
    (["--call", "explode"], "--call", "invalid value 'explode'"),
    (["-f", "/no/such/Dockerfile"], "--file", "not found"),
    (["--push"], "--output", "needs name="),
]


@pytest.mark.parametrize("args,flag,text", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_malformed_flag_exits_2_naming_it(ctx, capsys, args, flag, text):
    code = main(["build", *args, str(ctx)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and flag in err and text in err, err
    assert "Traceback" not in err


def test_unknown_flag_and_missing_context(capsys):
    assert main(["build", "--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err
    assert main(["build"]) == 2
    assert "build context is required" in capsys.readouterr().err


def test_csv_quoted_values_stay_whole():
    spec = bo.parse_output('type=local,dest="out,dir"', ["local"])
    assert spec == OutputSpec("local", {"dest": "out,dir"})
    assert bo.split_csv('type=image,"name=a,b",push=true', flag="-o") == [
        "type=image", "name=a,b", "push=true"]
    assert bo.parse_output("-", ["tar"]) == OutputSpec("tar", {"dest": "-"})
    assert bo.parse_output("outdir", ["local"]) == OutputSpec("local", {"dest": "outdir"})
    assert bo.parse_output("type=registry,name=x", ["image"]).attrs["push"] == "true"


def test_secret_sources(tmp_path, monkeypatch):
    f = tmp_path / "tok"
    f.write_bytes(b"s3cr3t")
    spec = bo.parse_secret(f"id=tok,src={f}")
    assert (spec.type, spec.read()) == ("file", b"s3cr3t")
    monkeypatch.setenv("MYTOKEN", "from-env")
    assert bo.parse_secret("id=MYTOKEN").read() == b"from-env"
    assert bo.parse_secret("id=x,env=MYTOKEN") == SecretSpec("x", "env", "MYTOKEN")


def test_build_context_kinds(tmp_path):
    assert bo.parse_build_context(f"src={tmp_path}").kind == "local"
    assert bo.parse_build_context("b=docker-image://alpine:3").value == "alpine:3"
    assert bo.parse_build_context("b=oci-layout:///x/y:tag").kind == "oci-layout"
    assert bo.parse_build_context("b=https://github.com/a/b.git#main").kind == "git"
    assert bo.parse_build_context("b=https://example.com/x.tar").kind == "http"
    assert bo.parse_build_context("b=target:base").kind == "target"


def test_cache_legacy_form_and_modes():
    assert bo.parse_cache("registry.local/cache", flag="--cache-from") == CacheSpec(
        "registry", {"ref": "registry.local/cache"})
    with pytest.raises(UsageError, match="invalid mode"):
        bo.parse_cache("type=local,dest=x,mode=medium", flag="--cache-to")


def test_platforms_normalised():
    assert bo.parse_platforms(["linux/amd64,linux/arm64/v8"]) == ("linux/amd64", "linux/arm64/v8")
    assert bo.parse_platforms(["local"])[0].startswith("linux/")
