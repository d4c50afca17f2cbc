"""``pybk builder create NAME --driver kubernetes``: the nodes are the pods of
deploy/kubernetes/render.py's StatefulSet, at the names its headless Service gives them, and
deploy/kubernetes/make-certs.sh's server certificate is valid for every one of them."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from support.tlsdaemon import CLIENT, client_env

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _pybk(xdg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=client_env(XDG_CONFIG_HOME=str(xdg)))


def _builders(xdg: Path) -> dict[str, dict]:
    data = json.loads((xdg / "pybk" / "builders.json").read_text())
    return {b["name"]: b for b in data["builders"]}


def _pods(*render_args: str) -> tuple[list[str], list[str], int]:
    """``(pod names, their DNS names, the gRPC port)`` of the objects render.py writes: the
    StatefulSet's pods ``NAME-i`` under its headless Service, ``NAME-i.SERVICE.NS.svc``."""
    done = subprocess.run([sys.executable, str(DEPLOY / "render.py"), *render_args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout)}
    sts, svc = kinds["StatefulSet"], kinds["Service"]
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == \
        sts["spec"]["serviceName"]
    namespace = sts["metadata"]["namespace"]
    assert svc["metadata"]["namespace"] == namespace
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    [port] = [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == port
    return pods, [f"{pod}.{svc['metadata']['name']}.{namespace}.svc" for pod in pods], port


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """make-certs.sh's certificates for namespace ``builds``, also laid out as a ``--tlsdir``."""
    out = tmp_path_factory.mktemp("certs")
    made = subprocess.run([str(DEPLOY / "make-certs.sh"), "builds", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    tlsdir = out / "tlsdir"
    tlsdir.mkdir()
    for mine, theirs in (("ca.crt", "ca.pem"), ("client.crt", "cert.pem"),
                         ("client.key", "key.pem")):
        (tlsdir / theirs).write_bytes((out / mine).read_bytes())
    return out


def _verifies(certs: Path, host: str) -> str | None:
    """None when a client trusting ``ca.crt`` accepts the server certificate for ``host`` (a
    real TLS handshake over a socket pair, OpenSSL checking the name); else why not."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs / "tls.crt", certs / "tls.key")
    client = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(b, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(a, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message
    finally:
        a.close()
        thread.join()
        b.close()


@pytest.mark.parametrize(("namespace", "replicas", "port"),
                         [("builds", 3, None), ("builds", 1, None), ("ci-east", 5, 4321)])
def test_the_nodes_are_the_statefulsets_pods(tmp_path, certs, namespace, replicas, port):
    xdg = tmp_path / "xdg"
    flags = ["--port", str(port)] if port else []
    made = _pybk(xdg, "builder", "create", "k8s", "--driver", "kubernetes",
                 "--namespace", namespace, "--replicas", str(replicas), *flags,
                 "--tlsdir", str(certs / "tlsdir"), "--platform", "linux/amd64",
                 "--routing", "least-loaded")
    assert made.returncode == 0, made.stderr
    pods, hosts, served = _pods("--namespace", namespace, "--replicas", str(replicas), *flags)
    builder = _builders(xdg)["k8s"]
    assert builder["routing"] == "least-loaded"
    assert [n["name"] for n in builder["nodes"]] == pods
    assert [n["endpoint"] for n in builder["nodes"]] == [f"tcp://{h}:{served}" for h in hosts]
    for node in builder["nodes"]:
        assert node["tls"] == {"--tlsdir": str(certs / "tlsdir")}  # no --tlsservername
        assert node["platforms"] == ["linux/amd64"]
    ls = _pybk(xdg, "builder", "ls")
    for pod, host in zip(pods, hosts, strict=True):
        [row] = [line for line in ls.stdout.splitlines() if f"\\_ {pod}\t" in line]
        assert row.split()[2] == f"tcp://{host}:{served}"
    if namespace == "builds":  # the namespace the certificates were made for
        for host in hosts:
            assert _verifies(certs, host) is None, host
    else:
        assert "mismatch" in _verifies(certs, hosts[0])


def test_the_certificate_names_every_pod_of_its_namespace_only(certs):
    _, hosts, _ = _pods("--namespace", "builds", "--replicas", "12")
    for host in hosts:
        assert _verifies(certs, host) is None, host
    for other in ("pybkd-0.pybkd.other.svc", "pybkd-0.elsewhere.builds.svc", "builds.svc"):
        assert "mismatch" in _verifies(certs, other), other


def test_statefulset_name_append_and_refusals(tmp_path, certs):
    xdg = tmp_path / "xdg"
    made = _pybk(xdg, "builder", "create", "ci", "--driver", "kubernetes", "--namespace", "b",
                 "--replicas", "2", "--statefulset", "runners", "--tlsdir", str(certs / "tlsdir"))
    assert made.returncode == 0, made.stderr
    ci = _builders(xdg)["ci"]
    assert [(n["name"], n["endpoint"]) for n in ci["nodes"]] == [
        ("runners-0", "tcp://runners-0.runners.b.svc:1234"),
        ("runners-1", "tcp://runners-1.runners.b.svc:1234")]
    assert ci["routing"] == "sticky"
    # a kubernetes builder's nodes are its pods: --append of more is refused, a name taken too
    for args, message in (
            (["--append", "--driver", "kubernetes", "--namespace", "b", "--replicas", "3"],
             "--append: a kubernetes builder's nodes are its StatefulSet's pods"),
            (["--driver", "kubernetes", "--namespace", "b", "--replicas", "3"],
             "builder 'ci' exists"),
            (["--driver", "kubernetes", "--namespace", "b", "--replicas", "3",
              "--node-name", "x"], "--node-name: --driver kubernetes makes the nodes"),
            (["--driver", "kubernetes", "--namespace", "b", "--replicas", "3",
              "--statefulset", "Runners"], "--statefulset: 'Runners' is not a Kubernetes name")):
        done = _pybk(xdg, "builder", "create", "ci", *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert _builders(xdg)["ci"] == ci
    # a node elsewhere (the remote driver) may still be appended by hand
    more = _pybk(xdg, "builder", "create", "ci", "--append", "--driver", "remote",
                 "--node", "tcp://10.0.0.9:1234",
                 "--node-name", "spare")
    assert more.returncode == 0, more.stderr
    assert [n["name"] for n in _builders(xdg)["ci"]["nodes"]] == ["runners-0", "runners-1",
                                                                   "spare"]
