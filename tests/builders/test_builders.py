"""Builders of several nodes (``pybk builder …``, ``pybk build --builder``): three real pybkd
nodes on 127.0.0.1, each with mutual TLS from its own CA, and the client's builders.json."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest
from support.fleet import NAMES, Nodes
from support.fleet import context as _context

from pybk.core.cli.builders import rendezvous_order, routing_key


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    n = Nodes(tmp_path_factory.mktemp("builders"))
    yield n
    n.stop()


def _create(nodes: Nodes, name: str, *, append: bool = False) -> subprocess.CompletedProcess:
    return nodes.pybk("builder", "create", "fleet", "--node", nodes.daemons[name].addr,
                      "--node-name", name, "--tlsdir", str(nodes.pki[name].good),
                      "--platform", "linux/amd64", *(["--append"] if append else []))


def test_create_append_ls_inspect_use_and_the_file(nodes):
    first = _create(nodes, "alpha")
    assert first.returncode == 0, first.stderr
    again = _create(nodes, "beta")
    assert again.returncode == 2 and "exists (--append adds a node to it)" in again.stderr
    assert "Traceback" not in again.stderr
    for name in ("beta", "gamma"):
        done = _create(nodes, name, append=True)
        assert done.returncode == 0, done.stderr
    path = nodes.config / "pybk" / "builders.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    [fleet] = data["builders"]
    assert [n["name"] for n in fleet["nodes"]] == list(NAMES)
    assert all(os.path.isabs(n["tls"]["--tlsdir"]) for n in fleet["nodes"])

    ls = nodes.pybk("builder", "ls")
    assert ls.returncode == 0, ls.stderr
    lines = ls.stdout.splitlines()
    assert lines[0].split() == ["NAME/NODE", "ENDPOINT", "STATUS", "PLATFORMS"]
    assert lines[1].split() == ["default", "*"]
    for name in NAMES:
        [row] = [line for line in lines if f"\\_ {name}" in line]
        assert row.split()[2:] == [nodes.daemons[name].addr, "running", "linux/amd64"]

    inspect = nodes.pybk("builder", "inspect", "fleet")
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout.count("Status:\trunning") == 3
    assert inspect.stdout.count("Platforms:\tlinux/") == 3
    assert inspect.stdout.count("Version:\tpybk ") == 3
    assert inspect.stdout.count("Builds running:\t0\n") == 3  # the nodes' Load
    for name in NAMES:
        assert f"Endpoint:\t{nodes.daemons[name].addr}" in inspect.stdout

    assert nodes.pybk("builder", "use", "fleet").returncode == 0
    assert json.loads(path.read_text())["current"] == "fleet"
    assert nodes.pybk("builder", "ls").stdout.splitlines()[2].split() == ["fleet", "*"]
    assert nodes.pybk("builder", "use", "--default").returncode == 0
    assert json.loads(path.read_text())["current"] is None


def test_bad_flags_are_refused(nodes, tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cases = [
        (["builder", "create", "x", "--node", "unix:///run/x.sock"], "a node is tcp://HOST:PORT"),
        (["builder", "create", "x", "--node", "tcp://127.0.0.1:1", "--append"],
         "no builder 'x' to append to"),
        (["builder", "create", "x", "--node", "tcp://127.0.0.1:1", "--tlscert", "/nonexistent"],
         "/nonexistent does not exist"),
        (["builder", "create", "x"], "--node: the node's address is needed"),
        (["builder", "create", "x", "--node", "tcp://127.0.0.1:1", "--namespace", "b"],
         "--namespace: only with --driver kubernetes"),
        (["builder", "create", "x", "--node", "tcp://127.0.0.1:1", "--replicas", "2"],
         "--replicas: only with --driver kubernetes"),
        (["builder", "create", "x", "--driver", "kubernetes", "--namespace", "b",
          "--replicas", "2", "--node", "tcp://127.0.0.1:1"],
         "--node: --driver kubernetes makes the nodes from the StatefulSet's pods"),
        (["builder", "create", "x", "--driver", "kubernetes", "--namespace", "b",
          "--replicas", "0"], "--replicas: needs at least 1"),
        (["builder", "create", "x", "--driver", "kubernetes", "--replicas", "2"],
         "--driver kubernetes needs the StatefulSet's --namespace"),
        (["builder", "create", "x", "--driver", "kubernetes", "--namespace", "Builds!",
          "--replicas", "2"], "--namespace: 'Builds!' is not a Kubernetes name"),
        (["builder", "create", "x", "--driver", "kubernetes", "--namespace", "b",
          "--replicas", "2", "--port", "70000"], "--port: 70000: a port is 1-65535"),
        (["builder", "create", "x", "--driver", "docker", "--node", "tcp://127.0.0.1:1"],
         "invalid choice: 'docker'"),
        (["builder", "create", "x", "--node", "tcp://127.0.0.1:1", "--routing", "fastest"],
         "invalid choice: 'fastest'"),
        (["builder", "use", "nosuch"], "no builder 'nosuch'"),
        (["builder", "rm", "nosuch"], "no builder 'nosuch'"),
        (["build", "--builder", "nosuch", "."], "no builder 'nosuch'"),
        (["--addr", "tcp://127.0.0.1:1", "build", "--builder", "fleet", "."],
         "--builder and --addr cannot be used together"),
        (["--tlsdir", str(tmp_path), "build", "--builder", "fleet", "."],
         "--tlsdir: a builder's nodes have their own TLS files"),
        (["build", "--builder"], "--builder: expected one argument"),
    ]
    for args, message in cases:
        done = nodes.pybk(*args, cwd=tmp_path, **env)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    assert not (tmp_path / "xdg" / "pybk" / "builders.json").exists()


def test_sticky_routing_by_rendezvous_hash(nodes, tmp_path):
    contexts = [_context(tmp_path, f"ctx{i}") for i in range(6)]
    expected = {ctx: rendezvous_order(routing_key(str(ctx), None, None), list(NAMES))[0]
                for ctx in contexts}
    assert len(set(expected.values())) > 1  # six projects spread over more than one node
    for ctx in [*contexts, contexts[0]]:  # the first twice: the same node again
        before = {name: nodes.builds(name) for name in NAMES}
        done = nodes.pybk("build", "--builder", "fleet", "-q", str(ctx))
        assert done.returncode == 0, done.stderr
        after = {name: nodes.builds(name) for name in NAMES}
        grew = [name for name in NAMES if after[name] > before[name]]
        assert grew == [expected[ctx]], (ctx, before, after)
        assert "did not answer" not in done.stderr
    # $PYBK_BUILDER and the builder in use route the same way; PYBK_HOST wins over both
    ctx = contexts[1]
    before = nodes.builds(expected[ctx])
    assert nodes.pybk("build", "-q", str(ctx), PYBK_BUILDER="fleet").returncode == 0
    assert nodes.pybk("builder", "use", "fleet").returncode == 0
    try:
        assert nodes.pybk("build", "-q", str(ctx)).returncode == 0
        assert nodes.builds(expected[ctx]) == before + 2
        here = nodes.pybk("--root", str(tmp_path / "store"), "build", "-q", str(ctx),
                          PYBK_HOST="")
        assert here.returncode == 0, here.stderr
        assert nodes.builds(expected[ctx]) == before + 2
        assert (tmp_path / "store").is_dir()
    finally:
        assert nodes.pybk("builder", "use", "--default").returncode == 0


def test_a_node_down_is_skipped_then_every_node_down_fails(nodes, tmp_path):
    ctx = _context(tmp_path, "project")
    order = rendezvous_order(routing_key(str(ctx), None, None), list(NAMES))
    first, second = order[0], order[1]
    nodes.daemons[first].stop()
    before = nodes.builds(second)
    started = time.monotonic()
    done = nodes.pybk("build", "--builder", "fleet", "-q", str(ctx))
    assert done.returncode == 0, done.stderr
    assert (f"builder fleet: node {first} ({nodes.daemons[first].addr}) did not answer "
            f"(Connection refused); building on node {second}") in done.stderr
    assert nodes.builds(second) == before + 1
    print(f"failover build: {time.monotonic() - started:.2f}s")

    inspect = nodes.pybk("builder", "inspect", "fleet")
    assert inspect.returncode == 0, inspect.stderr
    block = inspect.stdout.split(f"Name:\t{first}\n")[1].split("\n\n")[0]
    assert "Status:\tunreachable: Connection refused" in block
    assert inspect.stdout.count("Status:\trunning") == 2
    ls = nodes.pybk("builder", "ls")
    [row] = [line for line in ls.stdout.splitlines() if f"\\_ {first}" in line]
    assert "unreachable" in row.split()

    for name in order[1:]:
        nodes.daemons[name].stop()
    down = nodes.pybk("build", "--builder", "fleet", "-q", str(ctx))
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "builder fleet: no node answered:" in down.stderr
    for name in NAMES:
        assert f"{name} ({nodes.daemons[name].addr}): Connection refused" in down.stderr

    assert nodes.pybk("builder", "rm", "fleet").returncode == 0
    assert json.loads((nodes.config / "pybk" / "builders.json").read_text())["builders"] == []


def test_removing_a_node_moves_only_its_keys():
    keys = [routing_key(f"/src/project{i}", None, None) for i in range(2000)]
    names = ["n0", "n1", "n2", "n3", "n4"]
    before = {key: rendezvous_order(key, names)[0] for key in keys}
    counts = {name: sum(1 for v in before.values() if v == name) for name in names}
    assert all(300 <= c <= 500 for c in counts.values()), counts
    after = {key: rendezvous_order(key, [n for n in names if n != "n2"])[0] for key in keys}
    for key in keys:
        if before[key] != "n2":
            assert after[key] == before[key]
        else:
            # the next node in the full order takes it
            assert after[key] == rendezvous_order(key, names)[1]
    assert routing_key("ctx", "Dockerfile", "t") != routing_key("ctx", None, "t")


def test_a_builders_shared_cache_reaches_a_node_that_never_saw_the_project(tmp_path, moto_s3):
    """Builder ``one`` (node alpha) and builder ``two`` (node beta) share one S3 cache: the
    project built through ``one`` is, through ``two``, on a fresh store, cached step by step."""
    (tmp_path / "fleet").mkdir()
    nodes = Nodes(tmp_path / "fleet")
    try:
        _shared_cache(nodes, tmp_path, moto_s3)
    finally:
        nodes.stop()


def _shared_cache(nodes, tmp_path, moto_s3):
    attrs = ",".join(f"{k}={v}" for k, v in moto_s3.attrs(name="shared").items())
    for builder, node in (("one", "alpha"), ("two", "beta")):
        made = nodes.pybk("builder", "create", builder, "--node", nodes.daemons[node].addr,
                          "--node-name", node, "--tlsdir", str(nodes.pki[node].good),
                          "--cache-from", f"type=s3,{attrs}",
                          "--cache-to", f"type=s3,{attrs},mode=max")
        assert made.returncode == 0, made.stderr
    shown = nodes.pybk("builder", "inspect", "one").stdout
    assert "Cache to:\ttype=s3," in shown and "secret_access_key=****" in shown
    ctx = tmp_path / "proj"
    ctx.mkdir()
    (ctx / "a.txt").write_text("shared\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a\nCOPY a.txt /b\n")
    first = nodes.pybk("build", "--builder", "one", "--progress", "plain", str(ctx))
    assert first.returncode == 0, first.stderr
    assert "exporting cache" in first.stderr or "writing cache" in first.stderr.lower()
    beta_before = nodes.builds("beta")
    second = nodes.pybk("build", "--builder", "two", "--progress", "plain", str(ctx))
    assert second.returncode == 0, second.stderr
    assert nodes.builds("beta") == beta_before + 1  # it ran on beta
    cached = [line for line in second.stderr.splitlines() if line.endswith(" CACHED")]
    assert len(cached) == 2, second.stderr  # both COPY steps came from the shared cache
    # a build naming its own cache flags gets none of the builder's
    from pybk.core.cli.builders import Builder, with_default_caches

    b = Builder(name="x", cache_from=("type=s3,bucket=a",), cache_to=("type=s3,bucket=a",))
    argv = ["build", "--cache-to", "type=registry,ref=r", "."]
    assert with_default_caches(b, argv, 0) == ["build", "--cache-from", "type=s3,bucket=a",
                                                "--cache-to", "type=registry,ref=r", "."]
    assert with_default_caches(Builder(name="y"), argv, 0) == argv
    refused = nodes.pybk("builder", "create", "three", "--node", nodes.daemons["gamma"].addr,
                         "--cache-to", f"type=local,dest={tmp_path}/c")
    assert refused.returncode == 2 and "type=local" in refused.stderr
    _a_cache_name_per_project(nodes, tmp_path, moto_s3)


def _a_cache_name_per_project(nodes, tmp_path, moto_s3):
    """A builder's S3 cache without name=: each project under its own name, so the second
    project's export does not replace the first's records."""
    from pybk.core.cli.builders import Builder, project_cache_name, with_default_caches

    attrs = {k: v for k, v in moto_s3.attrs().items() if k != "name"}
    csv = ",".join(f"{k}={v}" for k, v in attrs.items())
    for builder, node in (("p-one", "alpha"), ("p-two", "beta")):
        made = nodes.pybk("builder", "create", builder, "--node", nodes.daemons[node].addr,
                          "--node-name", node, "--tlsdir", str(nodes.pki[node].good),
                          "--cache-from", f"type=s3,{csv}", "--cache-to",
                          f"type=s3,{csv},mode=max")
        assert made.returncode == 0, made.stderr
    projects = []
    for name in ("first", "second"):
        ctx = tmp_path / f"named-{name}"
        ctx.mkdir()
        (ctx / "a.txt").write_text(f"{name} project\n")
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a\nCOPY a.txt /b\n")
        projects.append(ctx)
        done = nodes.pybk("build", "--builder", "p-one", "--progress", "plain", str(ctx))
        assert done.returncode == 0, done.stderr
    names = {p.rsplit("/", 1)[1] for p in moto_s3.filesystem().find(f"{moto_s3.bucket}/manifests/")}
    for ctx in projects:
        assert project_cache_name(routing_key(str(ctx), None, None)) in names, names
        done = nodes.pybk("build", "--builder", "p-two", "--progress", "plain", str(ctx))
        assert done.returncode == 0, done.stderr
        cached = [line for line in done.stderr.splitlines() if line.endswith(" CACHED")]
        assert len(cached) == 2, done.stderr  # the first project's records were kept
    b = Builder(name="x", cache_from=("type=s3,bucket=a", "type=gha,url=u",
                                      "type=registry,ref=r"),
                cache_to=("type=azblob,name=mine",))
    assert with_default_caches(b, ["build", "."], 0, "pybk-p") == [
        "build", "--cache-from", "type=s3,bucket=a,name=pybk-p",
        "--cache-from", "type=gha,url=u,scope=pybk-p", "--cache-from", "type=registry,ref=r",
        "--cache-to", "type=azblob,name=mine", "."]
