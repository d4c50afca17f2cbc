"""Image references, platforms, WWW-Authenticate parsing and Docker config credentials."""

from __future__ import annotations

import os
import stat

import pytest

from pybk.core.errors import ConfigError, InputError
from pybk.core.fs.archive import layer_compression
from pybk.core.platform import (
    Platform,
    host_platform,
    normalize,
    parse_platform,
    select_best,
)
from pybk.core.registry.auth import (
    DockerCredentialStore,
    normalize_auth_key,
    parse_www_authenticate,
)
from pybk.core.registry.reference import parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected", "domain", "path"),
    [
        ("busybox", "docker.io/library/busybox:latest", "docker.io", "library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "docker.io", "library/busybox"),
        ("me/app", "docker.io/me/app:latest", "docker.io", "me/app"),
        ("index.docker.io/library/alpine", "docker.io/library/alpine:latest", "docker.io", "library/alpine"),
        ("docker.io/alpine", "docker.io/library/alpine:latest", "docker.io", "library/alpine"),
        ("localhost/app", "localhost/app:latest", "localhost", "app"),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c"),
        ("ghcr.io/o/r", "ghcr.io/o/r:latest", "ghcr.io", "o/r"),
        ("Upper/app", "Upper/app:latest", "Upper", "app"),
        (f"host:5000/repo:tag@{DIGEST}", f"host:5000/repo:tag@{DIGEST}", "host:5000", "repo"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}", "docker.io", "library/busybox"),
        ("a__b/c-d--e/f.g_h", "docker.io/a__b/c-d--e/f.g_h:latest", "docker.io", "a__b/c-d--e/f.g_h"),
    ],
)
def test_parse_reference_normalises_like_docker(text, expected, domain, path):
    ref = parse_reference(text)
    assert str(ref) == expected
    assert (ref.domain, ref.path) == (domain, path)


def test_reference_properties():
    ref = parse_reference(f"busybox:1@{DIGEST}")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.object == DIGEST
    assert ref.familiar == f"busybox:1@{DIGEST}"
    assert str(ref.with_tag("2")) == "docker.io/library/busybox:2"
    local = parse_reference("127.0.0.1:5000/x")
    assert (local.api_host, local.object, local.repository) == ("127.0.0.1:5000", "latest", "127.0.0.1:5000/x")
    assert parse_reference("x", default_tag=False).tag is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Me/app", "must be lowercase"),
        ("repo:bad tag", "whitespace"),
        ("repo:-tag", "bad tag"),
        ("repo@sha256:1234", "bad digest"),
        ("repo@sha256:" + "A" * 64, "lowercase hex"),
        ("repo@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("host:5000/", "bad repository name component"),
        ("a//b", "bad repository name component"),
        ("-host.io/x", "invalid registry host"),
        (":tag", "no repository name"),
    ],
)
def test_parse_reference_rejects_malformed(text, fragment):
    with pytest.raises(InputError) as info:
        parse_reference(text)
    assert fragment in str(info.value)
    assert "invalid reference format" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("LINUX/I686", "linux/386"),
        ("arm64", "linux/arm64"),
        ("windows/amd64", "windows/amd64"),
    ],
)
def test_parse_platform_normalises(text, expected):
    assert str(parse_platform(text)) == expected


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "/amd64"])
def test_parse_platform_rejects(text):
    with pytest.raises(InputError, match="invalid platform"):
        parse_platform(text)


def test_platform_dict_round_trip_and_host():
    p = Platform.from_dict({"os": "linux", "architecture": "aarch64", "variant": "v8"})
    assert p == parse_platform("linux/arm64")
    assert p.effective_variant == "v8"
    assert parse_platform("linux/arm/v6").to_dict() == {"os": "linux", "architecture": "arm", "variant": "v6"}
    host = host_platform()
    assert host.os == "linux" and host == normalize(host)
    assert host.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}


def test_platform_matching_prefers_exact_then_closest_older_variant():
    candidates = [
        (parse_platform("linux/arm/v5"), "v5"),
        (parse_platform("linux/arm/v6"), "v6"),
        (parse_platform("linux/arm64"), "arm64"),
        (parse_platform("linux/amd64"), "amd64"),
        (None, "unknown"),
    ]
    assert select_best(parse_platform("linux/arm/v7"), candidates) == "v6"
    assert select_best(parse_platform("linux/arm/v6"), candidates) == "v6"
    assert select_best(parse_platform("linux/arm/v5"), candidates) == "v5"
    assert select_best(parse_platform("linux/arm64/v8"), candidates) == "arm64"
    assert select_best(parse_platform("linux/amd64/v3"), candidates) == "amd64"
    assert select_best(parse_platform("linux/s390x"), candidates) is None
    assert not parse_platform("linux/amd64").matches(parse_platform("linux/amd64/v2"))
    assert parse_platform("linux/amd64/v2").matches(parse_platform("linux/amd64"))


def test_layer_compression_by_media_type():
    assert layer_compression("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert layer_compression("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert layer_compression("application/vnd.oci.image.layer.v1.tar") == "none"
    with pytest.raises(ValueError):
        layer_compression("application/json")


def test_parse_www_authenticate():
    header = ('Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:a/b:pull,push", Basic realm="x y"')
    assert parse_www_authenticate(header) == [
        ("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                    "scope": "repository:a/b:pull,push"}),
        ("basic", {"realm": "x y"}),
    ]
    assert parse_www_authenticate('Basic realm="a\\"b"') == [("basic", {"realm": 'a"b'})]
    assert parse_www_authenticate("") == []


def test_normalize_auth_key():
    assert normalize_auth_key("https://index.docker.io/v1/") == "docker.io"
    assert normalize_auth_key("registry-1.docker.io") == "docker.io"
    assert normalize_auth_key("http://127.0.0.1:5000/v2/") == "127.0.0.1:5000"


def test_docker_config_credentials(docker_config):
    docker_config.write({"127.0.0.1:5000": ("alice", "pw:with:colons"),
                         "https://index.docker.io/v1/": ("hub", "hubpw")})
    store = DockerCredentialStore()  # finds it through $DOCKER_CONFIG
    assert store.path == docker_config.path
    creds = store.get("127.0.0.1:5000")
    assert (creds.username, creds.password) == ("alice", "pw:with:colons")
    assert store.get("docker.io").username == "hub"
    assert store.get("other.example") is None
    assert "pw" not in repr(creds)


def test_docker_config_plain_fields_and_explicit_path(docker_config, tmp_path):
    path = docker_config.write({"h.example": ("bob", "secret")}, plain=True)
    other = tmp_path / "elsewhere.json"
    other.write_text(path.read_text())
    creds = DockerCredentialStore(other).get("h.example")
    assert (creds.username, creds.password) == ("bob", "secret")
    assert DockerCredentialStore(tmp_path / "missing.json").get("h.example") is None


def test_docker_config_credential_helper(docker_config, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-pybktest"
    helper.write_text('#!/bin/sh\nread server\n[ "$server" = "helped.example" ] || exit 1\n'
                      'echo \'{"ServerURL":"helped.example","Username":"carol","Secret":"s3"}\'\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    docker_config.write(raw={"credHelpers": {"helped.example": "pybktest"}})
    creds = DockerCredentialStore().get("helped.example")
    assert (creds.username, creds.password) == ("carol", "s3")
    docker_config.write(raw={"credsStore": "missing-helper-xyz"})
    with pytest.raises(ConfigError, match="docker-credential-missing-helper-xyz"):
        DockerCredentialStore().get("anything.example")


def test_docker_config_errors_are_located(docker_config):
    docker_config.directory.mkdir(parents=True, exist_ok=True)
    docker_config.path.write_text("{not json")
    with pytest.raises(ConfigError) as info:
        DockerCredentialStore().get("x")
    assert str(docker_config.path) in str(info.value)
    docker_config.write(raw={"auths": {"h": {"auth": "bm9jb2xvbg=="}}})  # "nocolon"
    with pytest.raises(ConfigError, match="no ':'"):
        DockerCredentialStore().get("h")
