#!/usr/bin/env python3
"""Render the Kubernetes objects of a pybkd builder: a StatefulSet of N pybkd pods.

Usage: ``python3 deploy/kubernetes/render.py [--replicas N] [--namespace NS] [--image IMAGE]
[--storage SIZE] [--cpu CPU] [--memory MEM] [--tls-secret NAME] [--cache-secret NAME]
[--port PORT] [--rootless [--uid UID]] > pybkd.yaml`` then ``kubectl apply -f pybkd.yaml``. What each object is for and
how to make the secrets: docs/scale-out.md.

The objects, in apply order:

- ``ConfigMap pybkd-config``: the daemon's buildkitd.toml (a gRPC address on the port with
  mutual TLS from the mounted secret, and the unix socket the readiness probe uses);
- ``Service pybkd`` (headless, ``clusterIP: None``): a stable name per pod,
  ``pybkd-0.pybkd.NS.svc``, the addresses a builder's nodes are (``tcp://NAME:PORT``);
- ``StatefulSet pybkd``: one store volume per pod (``volumeClaimTemplates``), the TLS secret
  mounted read-only, the shared cache's credentials from a secret (optional), resource requests
  and limits, privileged (runc makes namespaces and mounts) — or, with ``--rootless``, an
  unprivileged user whose own user namespace does that (docs/rootless.md), a readiness probe that runs a
  command through the daemon (``pybk debug workers`` on its unix socket: an answered request,
  not an open port), ordered pod management off (pods start in parallel);
- ``PodDisruptionBudget pybkd``: at most one pod down at a time during voluntary disruptions.

Only PyYAML is needed to render.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

LABELS = {"app.kubernetes.io/name": "pybkd", "app.kubernetes.io/component": "builder"}
SOCKET = "/run/pybk/pybkd.sock"
STORE = "/var/lib/pybk"
TLS_DIR = "/etc/pybk/tls"


def buildkitd_toml(port: int, rootless: bool = False) -> str:
    """The daemon's config: mutual TLS on ``port``, the unix socket for the probe; rootless,
    RUN steps share the pod's network namespace and process namespace (an unprivileged pod
    has no /dev/net/tun for slirp4netns, and its /proc is masked: BuildKit's rootless pods
    run the same way)."""
    return (
        "# pybkd in Kubernetes (deploy/kubernetes/render.py)\n"
        "[grpc]\n"
        f'address = ["unix://{SOCKET}", "tcp://0.0.0.0:{port}"]\n'
        "\n[grpc.tls]\n"
        f'cert = "{TLS_DIR}/tls.crt"\n'
        f'key = "{TLS_DIR}/tls.key"\n'
        f'ca = "{TLS_DIR}/ca.crt"\n'
        "\n[worker.oci]\n"
        "gc = true\n"
        + ('networkMode = "host"\nnoProcessSandbox = true\n' if rootless else "")
    )


def security(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the container's securityContext, the pod's)``: privileged root, or (``--rootless``)
    an ordinary user with seccomp and AppArmor unconfined (a user namespace's mounts need the
    calls their default profiles refuse) and the store volume writable by its group."""
    if not args.rootless:
        return {"privileged": True}, {}
    return ({"runAsUser": args.uid, "runAsGroup": args.uid, "runAsNonRoot": True,
             "privileged": False, "seccompProfile": {"type": "Unconfined"},
             "appArmorProfile": {"type": "Unconfined"}},
            {"fsGroup": args.uid})


def objects(args: argparse.Namespace) -> list[dict[str, Any]]:
    meta = {"namespace": args.namespace, "labels": dict(LABELS)}
    config = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "pybkd-config", **meta},
        "data": {"buildkitd.toml": buildkitd_toml(args.port, args.rootless)},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "pybkd", **meta},
        "spec": {"clusterIP": "None", "selector": dict(LABELS), "publishNotReadyAddresses": False,
                 "ports": [{"name": "grpc", "port": args.port, "targetPort": "grpc",
                            "protocol": "TCP"}]},
    }
    env: list[dict[str, Any]] = []
    if args.cache_secret:
        env = [{"name": key, "valueFrom": {"secretKeyRef": {
                    "name": args.cache_secret, "key": key, "optional": True}}}
               for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")]
    container_security, pod_security = security(args)
    # rootless, the store is a directory of the volume (the volume's root is the group's;
    # pybk keeps its store 0700, its user's)
    store = f"{STORE}/store" if args.rootless else STORE
    container = {
        "name": "pybkd",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["pybkd", "--config", "/etc/pybk/buildkitd.toml", "--root", store],
        "ports": [{"name": "grpc", "containerPort": args.port, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": args.cpu, "memory": args.memory},
                      "limits": {"cpu": args.cpu_limit or args.cpu,
                                 "memory": args.memory_limit or args.memory}},
        "securityContext": container_security,
        "readinessProbe": {
            "exec": {"command": ["pybk", "--addr", f"unix://{SOCKET}", "debug", "workers"]},
            "initialDelaySeconds": 3, "periodSeconds": 10, "timeoutSeconds": 5,
            "failureThreshold": 3},
        "livenessProbe": {
            "exec": {"command": ["pybk", "--addr", f"unix://{SOCKET}", "debug", "workers"]},
            "initialDelaySeconds": 30, "periodSeconds": 30, "timeoutSeconds": 10,
            "failureThreshold": 5},
        "volumeMounts": [
            {"name": "store", "mountPath": STORE},
            {"name": "config", "mountPath": "/etc/pybk/buildkitd.toml",
             "subPath": "buildkitd.toml", "readOnly": True},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "run", "mountPath": "/run/pybk"},
        ],
    }
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "pybkd", **meta},
        "spec": {
            "serviceName": "pybkd",
            "replicas": args.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(LABELS)},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    **({"securityContext": pod_security} if pod_security else {}),
                    "containers": [container],
                    "terminationGracePeriodSeconds": 60,
                    "volumes": [
                        {"name": "config", "configMap": {"name": "pybkd-config"}},
                        {"name": "tls", "secret": {"secretName": args.tls_secret,
                                                   "defaultMode": 0o400}},
                        {"name": "run", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "store", "labels": dict(LABELS)},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": args.storage}}},
            }],
        },
    }
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "pybkd", **meta},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(LABELS)}},
    }
    return [config, service, statefulset, budget]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--replicas", type=int, default=3, help="pybkd pods (default 3)")
    p.add_argument("--namespace", default="pybk", help="namespace (default pybk)")
    p.add_argument("--image", default="pybkd:latest",
                   help="an image holding pybk and runc (default pybkd:latest)")
    p.add_argument("--storage", default="50Gi", help="store volume per pod (default 50Gi)")
    p.add_argument("--cpu", default="2", help="CPU request (default 2)")
    p.add_argument("--memory", default="4Gi", help="memory request (default 4Gi)")
    p.add_argument("--cpu-limit", default="", help="CPU limit (default: the request)")
    p.add_argument("--memory-limit", default="", help="memory limit (default: the request)")
    p.add_argument("--tls-secret", default="pybkd-tls",
                   help="secret with tls.crt, tls.key, ca.crt (default pybkd-tls)")
    p.add_argument("--cache-secret", default="pybkd-cache",
                   help="secret with the shared cache's AWS_* keys ('' for none)")
    p.add_argument("--port", type=int, default=1234, help="gRPC port (default 1234)")
    p.add_argument("--rootless", action="store_true",
                   help="run pybkd as an ordinary user (--uid), not privileged")
    p.add_argument("--uid", type=int, default=None,
                   help="the user (and group) of a rootless pybkd (default 1000; the image "
                        "needs its /etc/subuid and /etc/subgid ranges)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.replicas < 1:
        print("render.py: --replicas must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print("render.py: --port must be 1-65535", file=sys.stderr)
        return 2
    if args.uid is not None and not args.rootless:
        print("render.py: --uid needs --rootless", file=sys.stderr)
        return 2
    if args.rootless:
        args.uid = 1000 if args.uid is None else args.uid
        if args.uid < 1:
            print("render.py: --uid of a rootless pybkd is not root (1 or more)",
                  file=sys.stderr)
            return 2
    sys.stdout.write(yaml.safe_dump_all(objects(args), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
