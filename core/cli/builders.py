"""Builders of several ``pybkd`` nodes, on the client side: ``pybk builder
create|ls|inspect|use|rm`` and the choice of one node for ``pybk build --builder NAME``.

A builder is a name and its nodes (each a ``tcp://HOST:PORT`` endpoint with its TLS files),
kept in ``$XDG_CONFIG_HOME/pybk/builders.json`` (default ``~/.config/pybk/``; the file 0600 in
a 0700 directory, written atomically). A build is sent to one node chosen by rendezvous
(highest-random-weight) hashing of (absolute context, build file, target) over the node names:
the same project goes to the same node, and removing a node moves only the projects that
mapped to it. A node that does not answer a health check (connect and TLS handshake within
:data:`HEALTH_TIMEOUT`) is skipped for the next node in that order. With ``least-loaded``
routing the build goes to the node with the fewest running builds, as the nodes answer the
control API's ``Load`` (:mod:`pybk.core.cli.nodeload`; the question is the health check),
ties broken by the same order. ``builder create --driver kubernetes`` makes the nodes from a
StatefulSet's pods (deploy/kubernetes/render.py's). The entry point resolves
the builder to one node's ``--addr`` and TLS flags before the remote client runs
(:func:`route_build`); nothing here is imported unless a builder is involved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from pybk.core.errors import BuildError, UsageError
from pybk.core.model import Model, evolve, field

ENV_BUILDER = "PYBK_BUILDER"
#: seconds a node has to accept a connection and finish the TLS handshake
HEALTH_TIMEOUT = 2.0
ROUTINGS = ("sticky", "least-loaded")
#: how ``builder create`` finds the nodes: the ``--node`` given, or a StatefulSet's pods
DRIVERS = ("remote", "kubernetes")
#: deploy/kubernetes/render.py's StatefulSet (and headless Service) name and gRPC port
K8S_NAME = "pybkd"
K8S_PORT = 1234
_TLS_KEYS = ("--tlscacert", "--tlscert", "--tlskey", "--tlsservername", "--tlsdir")


class Node(Model, kw_only=True):
    name: str
    endpoint: str
    platforms: tuple[str, ...] = ()
    #: buildctl's TLS flags (``--tlscacert`` …) to reach the node; paths absolute
    tls: dict[str, str] = field(factory=dict)


class Builder(Model, kw_only=True):
    name: str
    nodes: tuple[Node, ...] = ()
    routing: str = "sticky"
    #: ``--cache-from`` / ``--cache-to`` values every build through the builder gets unless
    #: it names its own (the fleet's shared cache)
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pybk")


def config_file() -> str:
    return os.path.join(config_dir(), "builders.json")


def _load() -> tuple[dict[str, Builder], str | None]:
    try:
        with open(config_file(), "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {config_file()}: {exc}") from None
    builders = {}
    for item in data.get("builders", []):
        nodes = tuple(Node(name=n["name"], endpoint=n["endpoint"],
                           platforms=tuple(n.get("platforms", ())), tls=dict(n.get("tls", {})))
                      for n in item.get("nodes", []))
        builders[item["name"]] = Builder(
            name=item["name"], nodes=nodes, routing=item.get("routing", "sticky"),
            cache_from=tuple(item.get("cache_from", ())),
            cache_to=tuple(item.get("cache_to", ())))
    return builders, data.get("current")


def _save(builders: dict[str, Builder], current: str | None) -> None:
    directory = config_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    data = {"current": current, "builders": [
        {"name": b.name, "routing": b.routing, "nodes": [
            {"name": n.name, "endpoint": n.endpoint, "platforms": list(n.platforms),
             "tls": dict(n.tls)} for n in b.nodes],
         "cache_from": list(b.cache_from), "cache_to": list(b.cache_to)}
        for b in sorted(builders.values(), key=lambda b: b.name)]}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".builders.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, config_file())
    except BaseException:
        os.unlink(tmp)
        raise


def current_builder() -> str | None:
    """The builder chosen with ``pybk builder use`` (None: none, or no file)."""
    return _load()[1]


# -- rendezvous hashing ---------------------------------------------------------------------

def _score(key: str, node: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}\0{node}".encode()).digest()[:8], "big")


def rendezvous_order(key: str, nodes: Sequence[str]) -> list[str]:
    """``nodes`` from the highest weight for ``key`` to the lowest (ties by name)."""
    return sorted(nodes, key=lambda n: (-_score(key, n), n))


def routing_key(context: str | None, build_file: str | None, target: str | None) -> str:
    """What a build is routed by: the absolute context, the build file, the target."""
    ctx = context or "."
    if ctx != "-" and "://" not in ctx and not ctx.startswith("git@"):
        ctx = os.path.abspath(ctx)
    path = build_file or ""
    if path and path != "-":
        path = os.path.abspath(path)
    return f"{ctx}\0{path}\0{target or ''}"


# -- health ---------------------------------------------------------------------------------

def _tls_paths(tls: dict[str, str]) -> dict[str, str | None]:
    paths = {"ca": tls.get("--tlscacert"), "cert": tls.get("--tlscert"),
             "key": tls.get("--tlskey")}
    directory = tls.get("--tlsdir")
    if directory:
        for name, file in (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem")):
            candidate = os.path.join(directory, file)
            if paths[name] is None and os.path.exists(candidate):
                paths[name] = candidate
    return paths


def health(node: Node, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when ``node`` accepts a connection and (with TLS) completes the handshake within
    ``timeout``; else why not."""
    import socket

    host, _, port = node.endpoint[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError) as exc:
        return _reason(exc)
    try:
        paths = _tls_paths(node.tls)
        if any(paths.values()):
            import ssl

            ctx = ssl.create_default_context(cafile=paths["ca"])
            if paths["cert"]:
                ctx.load_cert_chain(paths["cert"], paths["key"])
            ctx.set_alpn_protocols(["h2"])
            with ctx.wrap_socket(sock, server_hostname=node.tls.get("--tlsservername") or host):
                pass
        return None
    except (OSError, ValueError) as exc:
        return _reason(exc)
    finally:
        sock.close()


def _reason(exc: BaseException) -> str:
    import socket

    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or \
        type(exc).__name__


def _parallel(func: Any, items: Sequence[Any]) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(func, items))


# -- pybk build --builder -------------------------------------------------------------------

def split_builder(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(--builder's value, argv without it)``, looked for after the ``build`` command."""
    out: list[str] = []
    name = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg == "--builder":
            if i + 1 >= len(argv):
                raise UsageError("expected one argument", flag="--builder")
            name = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--builder="):
            name = arg.partition("=")[2]
            i += 1
            continue
        out.append(arg)
        i += 1
    if name is not None and not name:
        raise UsageError("needs a builder's name", flag="--builder")
    return name, out


def _parse_build(build_args: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    from pybk.core.cli.commands import _Parser, add_build_flags

    parser = _Parser(prog="pybk build")
    add_build_flags(parser)
    return parser, parser.parse_args(build_args)


def choose_node(builder: Builder, key: str, out: Any = None) -> Node:
    """The node a build with routing key ``key`` goes to: with ``sticky`` routing the first
    node in rendezvous order that answers the health check, with ``least-loaded`` the node
    answering ``Load`` with the fewest running builds (ties: rendezvous order). A line on
    ``out`` for each node skipped; BuildError when none answers."""
    out = out or sys.stderr
    by_name = {n.name: n for n in builder.nodes}
    if builder.routing == "least-loaded":
        return _least_loaded(builder, [by_name[name] for name in
                                       rendezvous_order(key, list(by_name))], out)
    skipped: list[tuple[Node, str]] = []
    for name in rendezvous_order(key, list(by_name)):
        node = by_name[name]
        reason = health(node)
        if reason is None:
            for down, why in skipped:
                print(f"builder {builder.name}: node {down.name} ({down.endpoint}) did not "
                      f"answer ({why}); building on node {node.name}", file=out)
            return node
        skipped.append((node, reason))
    raise BuildError(f"builder {builder.name}: no node answered: " + "; ".join(
        f"{n.name} ({n.endpoint}): {why}" for n, why in skipped))


def load(node: Node, timeout: float = HEALTH_TIMEOUT) -> tuple[str | None, Any]:
    """``(None, NodeLoad)`` when ``node`` answers the control API's ``Load`` within
    ``timeout``; ``(why not, None)`` otherwise (:mod:`pybk.core.cli.nodeload`)."""
    from pybk.core.cli.nodeload import query_load

    return query_load(node.endpoint, node.tls, timeout)


def _least_loaded(builder: Builder, ordered: Sequence[Node], out: Any) -> Node:
    """Of ``ordered`` (rendezvous order), the node with the fewest running builds (the first
    in that order among equals; a node that does not report its load comes after those that
    do), asked as :func:`pybk.core.cli.nodeload.least_loaded` does; a line on ``out`` for
    each node that did not answer."""
    from pybk.core.cli.nodeload import least_loaded

    chosen, answers = least_loaded([(node.endpoint, node.tls) for node in ordered],
                                   HEALTH_TIMEOUT)
    skipped = [(node, answer[0]) for node, answer in zip(ordered, answers, strict=True)
               if answer is not None and answer[0] is not None]
    if chosen is None:
        raise BuildError(f"builder {builder.name}: no node answered: " + "; ".join(
            f"{n.name} ({n.endpoint}): {why}" for n, why in skipped))
    for down, why in skipped:
        print(f"builder {builder.name}: node {down.name} ({down.endpoint}) did not "
              f"answer ({why}); building on node {ordered[chosen].name}", file=out)
    return ordered[chosen]


def route_build(name: str, argv: list[str], at: int
                ) -> tuple[str, list[str], dict[str, str]] | int:
    """``(address, argv, tls)`` of the node of builder ``name`` that runs ``pybk build``
    (``argv[at]`` is ``build``; ``--builder`` already taken out) — or, when the build's
    platforms go to several nodes, its exit code (:mod:`pybk.core.cli.multinode` ran it)."""
    builders, _ = _load()
    builder = builders.get(name)
    if builder is None:
        raise UsageError(f"no builder {name!r} (pybk builder ls lists them)", flag="--builder")
    if not builder.nodes:
        raise UsageError(f"builder {name!r} has no nodes", flag="--builder")
    parser, ns = _parse_build(argv[at + 1:])  # (the builder's cache flags change no output)
    key = routing_key(ns.context, ns.file, ns.target)
    project = project_cache_name(key)
    argv = with_default_caches(builder, argv, at, project)
    platforms = _platforms(ns.platform)
    if platforms and any(n.platforms for n in builder.nodes):
        from pybk.core.cli import multinode

        chosen: list[Node] = []

        def sticky() -> Node:
            if not chosen:
                chosen.append(choose_node(builder, key))
            return chosen[0]

        by_name = {n.name: n for n in builder.nodes}
        order = [by_name[n] for n in rendezvous_order(key, list(by_name))]
        groups = multinode.plan(builder, platforms, order, health, sticky, sys.stderr)
        if len(groups) > 1:
            return multinode.run(builder, groups, ns, parser, argv[at + 1:], project)
        node = groups[0].node
    else:
        node = choose_node(builder, key)
    return node.endpoint, argv, dict(node.tls)


def _platforms(values: Sequence[str]) -> list[str]:
    """The build's ``--platform`` values, normalised as builder nodes record theirs."""
    from pybk.core.cli.buildopts import parse_platforms
    from pybk.core.platform import parse_platform

    out: list[str] = []
    for item in parse_platforms(values or ()):
        if str(parse_platform(item)) not in out:
            out.append(str(parse_platform(item)))
    return out


#: a builder's cache of these types without its own name (``name=``; gha: ``scope=``) gets the
#: project's: one name for every project would let each export replace the others' records
_NAMED_CACHES = {"s3": "name", "azblob": "name", "gha": "scope"}


def project_cache_name(key: str) -> str:
    """The cache name of the project of routing key ``key`` (:func:`routing_key`)."""
    return "pybk-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def with_default_caches(builder: Builder, argv: list[str], at: int,
                        project: str | None = None) -> list[str]:
    """``argv`` with the builder's ``--cache-from``/``--cache-to`` after ``build``, each only
    when the build names none of its own; an S3, Azure Blob or GitHub Actions cache that
    names no ``name=`` (``scope=``) gets ``project``'s (:func:`project_cache_name`)."""
    added: list[str] = []
    for flag, values in (("--cache-from", builder.cache_from), ("--cache-to", builder.cache_to)):
        given = any(a == flag or a.startswith(flag + "=") for a in argv[at + 1:])
        if values and not given:
            for value in values:
                added += [flag, _project_named(value, project)]
    return [*argv[:at + 1], *added, *argv[at + 1:]]


def _project_named(value: str, project: str | None) -> str:
    if project is None:
        return value
    keys = {item.partition("=")[0].strip().strip('"') for item in value.split(",")}
    kind = next((item.partition("=")[2] for item in value.split(",")
                 if item.partition("=")[0].strip() == "type"), "")
    key = _NAMED_CACHES.get(kind)
    return value if key is None or key in keys else f"{value},{key}={project}"


# -- pybk builder ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from pybk.core.cli.commands import _Parser

    parser = _Parser(prog="pybk builder")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = sub.add_parser("create", help="create a builder, or --append a node to one")
    create.add_argument("name")
    create.add_argument("--driver", choices=DRIVERS, default="remote",
                        help="remote: the --node given; kubernetes: the pods of a StatefulSet")
    create.add_argument("--node", metavar="tcp://HOST:PORT")
    create.add_argument("--node-name")
    create.add_argument("--namespace", help="--driver kubernetes: the StatefulSet's namespace")
    create.add_argument("--replicas", type=int, help="--driver kubernetes: its pods")
    create.add_argument("--statefulset", default=None, metavar="NAME",
                        help=f"--driver kubernetes: the StatefulSet and headless Service "
                             f"(default {K8S_NAME})")
    create.add_argument("--port", type=int, default=None,
                        help=f"--driver kubernetes: the pods' gRPC port (default {K8S_PORT})")
    create.add_argument("--platform", default="")
    for flag in _TLS_KEYS:
        create.add_argument(flag)
    create.add_argument("--append", action="store_true")
    create.add_argument("--routing", choices=ROUTINGS)
    create.add_argument("--cache-from", action="append", default=None, metavar="CSV",
                        help="a --cache-from every build through the builder gets (repeatable)")
    create.add_argument("--cache-to", action="append", default=None, metavar="CSV",
                        help="a --cache-to every build through the builder gets (repeatable)")
    sub.add_parser("ls", help="list builders and their nodes")
    inspect = sub.add_parser("inspect", help="a builder's nodes, status, platforms, version")
    inspect.add_argument("name", nargs="?")
    use = sub.add_parser("use", help="the builder of pybk build")
    use.add_argument("name", nargs="?")
    use.add_argument("--default", action="store_true")
    rm = sub.add_parser("rm", help="remove a builder")
    rm.add_argument("name")
    return parser


def builder_main(argv: list[str]) -> int:
    """``pybk builder ARGS`` (run in this process, whatever ``--addr`` says)."""
    from pybk.core.cli.errors import run_reported

    def run() -> int:
        ns = _parser().parse_args(argv)
        return {"create": _create, "ls": _ls, "inspect": _inspect, "use": _use,
                "rm": _rm}[ns.action](ns)

    return run_reported(run)


def _node_from(ns: argparse.Namespace, index: int) -> Node:
    from pybk.core.platform import parse_platform

    endpoint = ns.node
    host, colon, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not endpoint.startswith("tcp://") or not colon or not host or not port.isdigit():
        raise UsageError(f"{endpoint!r}: a node is tcp://HOST:PORT", flag="--node")
    platforms = tuple(str(parse_platform(p.strip()))
                      for p in ns.platform.split(",") if p.strip())
    tls: dict[str, str] = {}
    for flag in _TLS_KEYS:
        value = getattr(ns, flag[2:])
        if value is None:
            continue
        if flag != "--tlsservername":
            value = os.path.abspath(value)
            if not os.path.exists(value):
                raise UsageError(f"{value} does not exist", flag=flag)
        tls[flag] = value
    paths = _tls_paths(tls)
    if bool(paths["cert"]) != bool(paths["key"]):
        raise UsageError("--tlscert and --tlskey go together")
    if tls.get("--tlsservername") and not any(paths.values()):
        raise UsageError("--tlsservername needs TLS (--tlscacert or --tlsdir)")
    name = ns.node_name or f"{ns.name}{index}"
    return Node(name=name, endpoint=endpoint, platforms=platforms, tls=tls)


def _create(ns: argparse.Namespace) -> int:
    if not ns.name or "/" in ns.name:
        raise UsageError(f"{ns.name!r} is not a builder name")
    if ns.driver == "kubernetes":
        return _create_kubernetes(ns)
    for flag in ("namespace", "replicas", "statefulset", "port"):
        if getattr(ns, flag) is not None:
            raise UsageError("only with --driver kubernetes", flag=f"--{flag}")
    if ns.node is None:
        raise UsageError("the node's address is needed (or --driver kubernetes)",
                         flag="--node")
    builders, current = _load()
    existing = builders.get(ns.name)
    if existing is not None and not ns.append:
        raise UsageError(f"builder {ns.name!r} exists (--append adds a node to it)")
    if existing is None and ns.append:
        raise UsageError(f"no builder {ns.name!r} to append to", flag="--append")
    nodes = existing.nodes if existing else ()
    index = len(nodes)
    while any(n.name == f"{ns.name}{index}" for n in nodes):
        index += 1
    node = _node_from(ns, index)
    if any(n.name == node.name for n in nodes):
        raise UsageError(f"builder {ns.name!r} has a node {node.name!r}", flag="--node-name")
    if any(n.endpoint == node.endpoint for n in nodes):
        raise UsageError(f"builder {ns.name!r} has a node at {node.endpoint}", flag="--node")
    caches = _checked_caches(ns)
    if existing is None:
        builders[ns.name] = Builder(name=ns.name, nodes=(node,), routing=ns.routing or "sticky",
                                    **caches)
    else:
        builders[ns.name] = evolve(existing, nodes=(*nodes, node),
                                   routing=ns.routing or existing.routing, **caches)
    _save(builders, current)
    print(ns.name)
    return 0


def kubernetes_endpoints(namespace: str, replicas: int, name: str = K8S_NAME,
                         port: int = K8S_PORT) -> list[tuple[str, str]]:
    """``(pod name, tcp://POD.NAME.NAMESPACE.svc:PORT)`` of each pod of StatefulSet ``name``
    with its headless Service of the same name (deploy/kubernetes/render.py's objects)."""
    return [(f"{name}-{i}", f"tcp://{name}-{i}.{name}.{namespace}.svc:{port}")
            for i in range(replicas)]


def _create_kubernetes(ns: argparse.Namespace) -> int:
    """``builder create NAME --driver kubernetes --namespace NS --replicas N``: one node per
    pod of the StatefulSet, named as the pod, its stable name the address."""
    if ns.node is not None or ns.node_name is not None:
        flag = "--node" if ns.node is not None else "--node-name"
        raise UsageError("--driver kubernetes makes the nodes from the StatefulSet's pods",
                         flag=flag)
    if ns.append:
        raise UsageError("a kubernetes builder's nodes are its StatefulSet's pods: pybk "
                         "builder rm it and create it again with the new --replicas",
                         flag="--append")
    if not ns.namespace:
        raise UsageError("--driver kubernetes needs the StatefulSet's --namespace")
    label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
    name = ns.statefulset or K8S_NAME
    for flag, value in (("--namespace", ns.namespace), ("--statefulset", name)):
        if not label.fullmatch(value):
            raise UsageError(f"{value!r} is not a Kubernetes name (lower-case letters, digits "
                             "and '-', at most 63)", flag=flag)
    if ns.replicas is None or ns.replicas < 1:
        raise UsageError("needs at least 1 (the StatefulSet's replicas)", flag="--replicas")
    port = K8S_PORT if ns.port is None else ns.port
    if not 0 < port < 65536:
        raise UsageError(f"{port}: a port is 1-65535", flag="--port")
    builders, current = _load()
    if ns.name in builders:
        raise UsageError(f"builder {ns.name!r} exists")
    nodes = []
    for pod, endpoint in kubernetes_endpoints(ns.namespace, ns.replicas, name, port):
        node = _node_from(argparse.Namespace(**{**vars(ns), "node": endpoint,
                                                "node_name": pod}), 0)
        nodes.append(node)
    builders[ns.name] = Builder(name=ns.name, nodes=tuple(nodes),
                                routing=ns.routing or "sticky", **_checked_caches(ns))
    _save(builders, current)
    print(ns.name)
    return 0


def _checked_caches(ns: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The ``--cache-from``/``--cache-to`` given to ``create``, checked as ``pybk build``
    checks them (the backends' own options are checked by the node that runs the build)."""
    from pybk.core.cli.buildopts import parse_cache

    out: dict[str, tuple[str, ...]] = {}
    for flag, values in (("--cache-from", ns.cache_from), ("--cache-to", ns.cache_to)):
        if values is None:
            continue
        for value in values:
            spec = parse_cache(value, flag=flag)
            if spec.type == "local":
                raise UsageError("a builder's cache must be reachable from every node: "
                                 "type=local is the client's directory", flag=flag)
        out[flag[2:].replace("-", "_")] = tuple(values)
    return out


def _ls(ns: argparse.Namespace) -> int:
    from pybk.core.cli.diskusage import tabwrite

    builders, current = _load()
    everything = [n for b in sorted(builders.values(), key=lambda b: b.name) for n in b.nodes]
    status = dict(zip([id(n) for n in everything], _parallel(health, everything), strict=True))
    lines = ["NAME/NODE\tENDPOINT\tSTATUS\tPLATFORMS",
             f"default{' *' if current is None else ''}\t\t\t"]
    for builder in sorted(builders.values(), key=lambda b: b.name):
        lines.append(f"{builder.name}{' *' if builder.name == current else ''}\t\t\t")
        for node in builder.nodes:
            state = "running" if status[id(node)] is None else "unreachable"
            lines.append(f" \\_ {node.name}\t{node.endpoint}\t{state}\t{','.join(node.platforms)}")
    sys.stdout.write(tabwrite(lines))
    return 0


def _workers(node: Node) -> tuple[str | None, list[str], str]:
    """``(why unreachable or None, the workers' platforms, the daemon's version)``, from
    ``pybk debug workers -v`` run through the node."""
    import subprocess

    reason = health(node)
    if reason is not None:
        return reason, [], ""
    flags = [x for key, value in node.tls.items() for x in (key, value)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pybk.core.cli.entry", "--addr", node.endpoint, *flags,
             "debug", "workers", "-v"], capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", ENV_BUILDER)})
    except subprocess.TimeoutExpired:
        return "debug workers timed out", [], ""
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return (lines[-1] if lines else f"debug workers exited {done.returncode}"), [], ""
    platforms: list[str] = []
    version = ""
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        if key == "Platforms":
            platforms += [p for p in value.strip().split(",") if p and p not in platforms]
        elif key == "BuildKit" and not version:
            version = value.strip()
    return None, platforms, version


def _inspect(ns: argparse.Namespace) -> int:
    builders, current = _load()
    name = ns.name or current
    if name is None:
        raise UsageError("no builder named and none in use (pybk builder use NAME)")
    builder = builders.get(name)
    if builder is None:
        raise UsageError(f"no builder {name!r}")
    print(f"Name:\t{builder.name}")
    print(f"Routing:\t{builder.routing}")
    for label, values in (("Cache from", builder.cache_from), ("Cache to", builder.cache_to)):
        for value in values:
            print(f"{label}:\t{_redacted(value)}")
    print("")
    print("Nodes:")
    for node, ((reason, platforms, version), found) in zip(
            builder.nodes, _parallel(_inspected, builder.nodes), strict=True):
        print(f"Name:\t{node.name}")
        print(f"Endpoint:\t{node.endpoint}")
        print(f"Status:\t{'running' if reason is None else f'unreachable: {reason}'}")
        if node.platforms:
            print(f"Platforms (configured):\t{','.join(node.platforms)}")
        if reason is None:
            print(f"Platforms:\t{','.join(platforms)}")
            print(f"Version:\t{version}")
            if found is not None:
                shown = (str(found.builds), str(found.others)) if found.known else \
                    ("unknown (the node does not report its load)",) * 2
                print(f"Builds running:\t{shown[0]}")
                print(f"Other commands running:\t{shown[1]}")
        print("")
    return 0


def _inspected(node: Node) -> tuple[tuple[str | None, list[str], str], Any]:
    """What ``inspect`` shows of ``node``: its load (asked first, so that the ``debug
    workers`` command run next is not counted in it) and :func:`_workers`."""
    _, found = load(node)
    return _workers(node), found


def _redacted(csv: str) -> str:
    """A cache flag's value as shown: secret keys' values hidden."""
    parts = []
    for item in csv.split(","):
        key, eq, value = item.partition("=")
        hide = eq and any(word in key.lower() for word in ("secret", "token", "password"))
        parts.append(f"{key}=****" if hide else item)
    return ",".join(parts)


def _use(ns: argparse.Namespace) -> int:
    builders, _ = _load()
    if ns.default == (ns.name is not None):
        raise UsageError("use NAME or --default")
    if ns.name is not None and ns.name not in builders:
        raise UsageError(f"no builder {ns.name!r}")
    _save(builders, None if ns.default else ns.name)
    return 0


def _rm(ns: argparse.Namespace) -> int:
    builders, current = _load()
    if ns.name not in builders:
        raise UsageError(f"no builder {ns.name!r}")
    del builders[ns.name]
    _save(builders, None if current == ns.name else current)
    return 0
