"""The scheduler and cache keys with a fake op runner (no runc, no store)."""

import asyncio

import pytest

from pybk.core import llb
from pybk.core.errors import BuildError
from pybk.core.llb.ops import ExecOp, HostIP, Meta, Mount, Op, ProxyEnv
from pybk.core.progress.events import EventRecorder, Progress
from pybk.core.solver.cachekey import cache_map, compute_key, content_selectors
from pybk.core.solver.results import Ref
from pybk.core.solver.scheduler import InFlight, OpRunner, Scheduler, VertexOutcome
from pybk.core.solver.vertex import load_graph


class FakeRunner(OpRunner):
    """Sources key by identifier; exec 'sleep N' sleeps, 'fail' fails; results in a dict."""

    def __init__(self, cache=None):
        self.cache = {} if cache is None else cache
        self.executed = []
        self.running = 0
        self.max_running = 0
        self.cancelled = []

    async def source_key(self, vertex, vp):
        return "src:" + vertex.op.op.identifier, None

    async def checksum(self, ref, selectors):
        return "sum:" + str(ref.snapshot)

    def load_cached(self, key, vertex):
        snap = self.cache.get(key)
        return None if snap is None else VertexOutcome(refs={0: Ref(snapshot=snap)}, cached=True)

    async def execute(self, vertex, key, inputs, vp):
        self.executed.append(vertex.name)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            op = vertex.op.op
            if isinstance(op, ExecOp):
                cmd = op.meta.args[-1]
                if cmd.startswith("sleep"):
                    await asyncio.sleep(float(cmd.split()[1]))
                elif cmd == "fail":
                    await asyncio.sleep(0.05)
                    raise BuildError('process "/bin/sh -c fail" did not complete successfully: '
                                     "exit code: 1")
            return VertexOutcome(refs={0: Ref(snapshot="snap-" + vertex.digest[7:19])},
                                 cached=False)
        except asyncio.CancelledError:
            self.cancelled.append(vertex.name)
            raise
        finally:
            self.running -= 1

    def save(self, key, vertex, outcome):
        self.cache[key] = outcome.refs[0].snapshot


def _graph(state, **kw):
    return load_graph(state.marshal(platform="linux/amd64"), **kw)


def _solve(graph, runner, *, parallelism=None):
    rec = EventRecorder()

    async def go():
        s = Scheduler(graph, runner, Progress(rec), max_parallelism=parallelism)
        ref, key, _ = await s.solve()
        return ref, key, s.stats()

    return asyncio.run(go()), rec


def _three_sleeps():
    base = llb.image("example.com/busybox:latest")
    outs = [base.run(f"sleep 0.2 # {i}").root() for i in range(3)]
    merged = llb.merge(outs)
    return merged


def test_independent_vertices_run_concurrently():
    runner = FakeRunner()
    (_, _, stats), rec = _solve(_graph(_three_sleeps()), runner)
    assert runner.max_running == 3
    sleeps = [v for v in rec.final_vertexes().values() if v.name.startswith("/bin/sh -c sleep")]
    assert len(sleeps) == 3
    latest_start = max(v.started for v in sleeps)
    earliest_end = min(v.completed for v in sleeps)
    assert latest_start < earliest_end  # all three overlap
    assert stats.executed == 5  # image, 3 runs, merge


def test_max_parallelism_limits_running_ops():
    runner = FakeRunner()
    _solve(_graph(_three_sleeps()), runner, parallelism=1)
    assert runner.max_running == 1


def test_second_solve_is_fully_cached_and_runs_nothing():
    cache = {}
    graph = _graph(_three_sleeps())
    (ref1, key1, _), _ = _solve(graph, FakeRunner(cache))
    runner = FakeRunner(cache)
    (ref2, key2, stats), rec = _solve(graph, runner)
    assert runner.executed == []
    assert (ref1, key1) == (ref2, key2)
    assert stats.executed == 0 and stats.cached == 5
    assert all(v.cached for v in rec.final_vertexes().values())


def test_ignore_cache_reruns_but_keeps_key():
    cache = {}
    graph = _graph(_three_sleeps())
    (_, key1, _), _ = _solve(graph, FakeRunner(cache))
    runner = FakeRunner(cache)
    (_, key2, stats), _ = _solve(_graph(_three_sleeps(), no_cache=True), runner)
    assert key1 == key2
    assert len(runner.executed) == 5


def test_first_failure_cancels_running_siblings():
    base = llb.image("example.com/busybox:latest")
    slow = base.run("sleep 5").root()
    bad = base.run("fail").root()
    graph = _graph(llb.merge([slow, bad]))
    runner = FakeRunner()
    rec = EventRecorder()

    async def go():
        with pytest.raises(BuildError) as info:
            await Scheduler(graph, runner, Progress(rec)).solve()
        return info.value

    err = asyncio.run(go())
    assert "exit code: 1" in str(err)
    assert runner.cancelled == ["/bin/sh -c sleep 5"]
    final = {v.name: v for v in rec.final_vertexes().values()}
    assert final["/bin/sh -c sleep 5"].error == "context canceled"
    assert "exit code: 1" in final["/bin/sh -c fail"].error
    assert final["merge"].started is None  # never started


def test_concurrent_builds_share_identical_work():
    cache = {}
    graph = _graph(llb.image("example.com/busybox:latest").run("sleep 0.2").root())
    runner_a, runner_b = FakeRunner(cache), FakeRunner(cache)

    async def go():
        a = Scheduler(graph, runner_a, Progress())
        b = Scheduler(graph, runner_b, Progress())
        return await asyncio.gather(a.solve(), b.solve())

    (ra, ka, _), (rb, kb, _) = asyncio.run(go())
    assert ra == rb and ka == kb
    assert sorted(runner_a.executed + runner_b.executed) == sorted(
        ["docker-image://example.com/busybox:latest", "/bin/sh -c sleep 0.2"])


def test_inflight_cancels_only_when_every_waiter_left():
    async def go():
        started = asyncio.Event()
        finished = []

        async def job():
            started.set()
            await asyncio.sleep(0.2)
            finished.append(1)
            return 42

        t1 = asyncio.ensure_future(InFlight.run("k", job))
        await started.wait()
        t2 = asyncio.ensure_future(InFlight.run("k", job))
        await asyncio.sleep(0.01)
        t1.cancel()
        value, joined = await t2
        return value, joined, finished

    assert asyncio.run(go()) == (42, True, [1])


def _exec_op(**meta):
    return Op(op=ExecOp(meta=Meta(args=("true",), **meta),
                        mounts=(Mount(input=0, dest="/", output=0),
                                Mount(input=1, dest="/src", selector="/a", readonly=True,
                                      output=-1))))


def test_cache_map_leaves_out_selectors_proxy_env_and_host_ips():
    a = _exec_op(extra_hosts=(HostIP("db", "10.0.0.1"),), proxy_env=ProxyEnv(http_proxy="x"))
    b = _exec_op(extra_hosts=(HostIP("db", "10.9.9.9"),))
    assert cache_map(a) == cache_map(b)
    assert a.digest != b.digest
    c = _exec_op(extra_hosts=(HostIP("cache", "10.0.0.1"),))
    assert cache_map(a) != cache_map(c)
    assert "selector" not in str(cache_map(a))


def test_content_selectors_for_readonly_mounts_and_copy_sources():
    sels = content_selectors(_exec_op())
    assert list(sels) == [1] and sels[1][0].path == "/a"
    ctx = llb.local("context")
    st = llb.image("example.com/busybox").file(llb.copy(ctx, "/app", "/dst"))
    graph = _graph(st)
    fileop = next(v for v in graph.vertices.values() if v.op.kind == "file")
    sels = content_selectors(fileop.op)
    src_index = next(i for i, inp in enumerate(fileop.inputs)
                     if graph.vertices[inp.digest].name == "local://context")
    assert list(sels) == [src_index]
    assert sels[src_index][0].path == "/app"


def test_compute_key_depends_on_every_part():
    m = cache_map(_exec_op())
    k = compute_key(m, ["a#0", "content:x"])
    assert k.startswith("sha256:")
    assert k != compute_key(m, ["a#0", "content:y"])
    assert k == compute_key(dict(m), ["a#0", "content:x"])


def test_vertex_names_use_custom_name_or_op():
    st = llb.image("example.com/busybox").run("echo hi", custom_name="[1/2] RUN echo hi").root()
    graph = _graph(st.file(llb.mkdir("/x", 0o755)))
    names = sorted(v.name for v in graph.vertices.values())
    assert names == ["[1/2] RUN echo hi", "docker-image://example.com/busybox:latest",
                     "mkdir /x"]
