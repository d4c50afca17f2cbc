"""deploy/kubernetes: the objects render for 1 and 5 replicas, pass Kubernetes' own schemas
(strict), agree with each other, and the daemon configuration they carry serves mutual TLS
with the certificates deploy/kubernetes/make-certs.sh makes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.pybkd import CLIENT, Pybkd, client_env, free_port

from pybk.core.config.loader import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _render(*args: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(DEPLOY / "render.py"), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def _validator():
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("kubernetes-validate is not installed (CI=true: required)")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.parametrize("replicas", [1, 5])
def test_objects_pass_the_kubernetes_schemas_and_agree(replicas):
    kv = _validator()
    docs = _render("--replicas", str(replicas), "--namespace", "builds")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "StatefulSet",
                                         "PodDisruptionBudget"]
    for doc in docs:
        kv.validate(doc, kv.latest_version(), strict=True)
        assert doc["metadata"]["namespace"] == "builds"
    kinds = _by_kind(docs)
    sts, svc = kinds["StatefulSet"], kinds["Service"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert sts["spec"]["replicas"] == replicas
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] == "pybkd"
    assert svc["spec"]["clusterIP"] == "None"  # headless: pybkd-N.pybkd.builds.svc
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == labels == sts["spec"]["selector"]["matchLabels"]
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    volumes = {v["name"] for v in pod["volumes"]} | {
        c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in container["volumeMounts"]} == volumes
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == \
        kinds["ConfigMap"]["metadata"]["name"]
    # the probe asks the daemon, on the unix socket its config serves
    toml = kinds["ConfigMap"]["data"]["buildkitd.toml"]
    socket = re.search(r'"unix://([^"]+)"', toml).group(1)
    assert container["readinessProbe"]["exec"]["command"] == [
        "pybk", "--addr", f"unix://{socket}", "debug", "workers"]
    assert container["securityContext"] == {"privileged": True}
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]] == \
        ["pybkd-cache"] * 3


def test_the_validation_is_strict_and_bad_options_are_refused():
    kv = _validator()
    sts = _by_kind(_render())["StatefulSet"]
    sts["spec"]["replica"] = 2  # misspelt
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, kv.latest_version(), strict=True)
    for bad in (["--replicas", "0"], ["--port", "70000"]):
        done = subprocess.run([sys.executable, str(DEPLOY / "render.py"), *bad],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "render.py:" in done.stderr
    no_cache = _by_kind(_render("--cache-secret", ""))["StatefulSet"]
    assert no_cache["spec"]["template"]["spec"]["containers"][0]["env"] == []


def test_the_config_serves_mutual_tls_with_the_made_certificates(tmp_path):
    certs = tmp_path / "certs"
    made = subprocess.run([str(DEPLOY / "make-certs.sh"), "builds", str(certs)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert oct(os.stat(certs / "tls.key").st_mode & 0o777) == "0o600"
    toml = _by_kind(_render("--namespace", "builds"))["ConfigMap"]["data"]["buildkitd.toml"]
    config = tmp_path / "k8s.toml"
    config.write_text(toml)
    _, warnings = load_config(str(config))
    assert warnings == []  # every key it sets is one pybkd acts on
    port = free_port()
    local = (toml.replace("/etc/pybk/tls", str(certs))
             .replace("tcp://0.0.0.0:1234", f"tcp://127.0.0.1:{port}")
             .replace("unix:///run/pybk/pybkd.sock", f"unix://{tmp_path}/run/pybkd.sock")
             + '\nnetworkMode = "none"\n')
    daemon = Pybkd(tmp_path, config=local, addr=False)
    try:
        probe = daemon.pybk("debug", "workers")  # what the readiness probe runs
        assert probe.returncode == 0, probe.stderr
        remote = subprocess.run(
            [*CLIENT, "--addr", f"tcp://127.0.0.1:{port}", "--tlscacert", str(certs / "ca.crt"),
             "--tlscert", str(certs / "client.crt"), "--tlskey", str(certs / "client.key"),
             "--tlsservername", "pybkd-3.pybkd.builds.svc", "debug", "workers"],
            capture_output=True, text=True, timeout=120, env=client_env())
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout.splitlines()[0].split()[:2] == \
            probe.stdout.decode().splitlines()[0].split()[:2]
        # another namespace's name is not in the certificate; no client certificate: refused
        other = subprocess.run(
            [*CLIENT, "--addr", f"tcp://127.0.0.1:{port}", "--tlscacert", str(certs / "ca.crt"),
             "--tlscert", str(certs / "client.crt"), "--tlskey", str(certs / "client.key"),
             "--tlsservername", "pybkd-0.pybkd.other.svc", "debug", "workers"],
            capture_output=True, text=True, timeout=120, env=client_env())
        anonymous = subprocess.run(
            [*CLIENT, "--addr", f"tcp://127.0.0.1:{port}", "--tlscacert", str(certs / "ca.crt"),
             "--tlsservername", "pybkd-0.pybkd.builds.svc", "debug", "workers"],
            capture_output=True, text=True, timeout=120, env=client_env())
        assert other.returncode != 0 and anonymous.returncode != 0
    finally:
        daemon.stop()


def test_every_option_lands_in_the_objects():
    kinds = _by_kind(_render("--image", "reg.example/pybkd:1", "--storage", "200Gi",
                             "--cpu", "4", "--memory", "8Gi", "--cpu-limit", "6",
                             "--memory-limit", "12Gi", "--tls-secret", "certs", "--port", "4321"))
    sts = kinds["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "reg.example/pybkd:1"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == \
        {"storage": "200Gi"}
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"},
                                      "limits": {"cpu": "6", "memory": "12Gi"}}
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "certs"
    assert container["ports"][0]["containerPort"] == 4321
    assert kinds["Service"]["spec"]["ports"][0]["port"] == 4321
    assert "tcp://0.0.0.0:4321" in kinds["ConfigMap"]["data"]["buildkitd.toml"]


@pytest.mark.parametrize("replicas", ["1", "5"])
def test_rootless_objects_run_an_ordinary_user_unprivileged(replicas, tmp_path):
    kv = _validator()
    docs = _render("--rootless", "--uid", "1234", "--replicas", replicas)
    for doc in docs:
        kv.validate(doc, kv.latest_version(), strict=True)
    kinds = _by_kind(docs)
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "runAsUser": 1234, "runAsGroup": 1234, "runAsNonRoot": True, "privileged": False,
        "seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}}
    assert pod["securityContext"] == {"fsGroup": 1234}
    # the store is a directory of the volume, which pybk keeps 0700
    assert container["args"][-2:] == ["--root", "/var/lib/pybk/store"]
    toml = kinds["ConfigMap"]["data"]["buildkitd.toml"]
    config = tmp_path / "rootless.toml"
    config.write_text(toml)
    loaded, warnings = load_config(str(config))
    assert warnings == []
    assert loaded.worker.oci.no_process_sandbox is True
    assert loaded.worker.oci.network_mode == "host"
    default = _by_kind(_render())["StatefulSet"]["spec"]["template"]["spec"]
    assert default["containers"][0]["securityContext"] == {"privileged": True}
    assert "securityContext" not in default
    assert _render("--rootless")[2]["spec"]["template"]["spec"]["securityContext"] == \
        {"fsGroup": 1000}


def test_rootless_options_are_checked():
    for args, words in ((["--uid", "5"], "--uid needs --rootless"),
                        (["--rootless", "--uid", "0"], "is not root")):
        done = subprocess.run([sys.executable, str(DEPLOY / "render.py"), *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and words in done.stderr, done.stderr
