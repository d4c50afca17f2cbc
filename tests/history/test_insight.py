"""Cache-miss explanations (``#N CACHE MISS: …``, ``history inspect --cache``,
``build --explain-cache``) and ``pybk history trace``, with real builds."""

from __future__ import annotations

import json

import pytest
from support.engine import need_runc
from support.storeenv import StoreEnv


class Env(StoreEnv):

    def context(self, dockerfile: str, files: dict[str, str] | None = None):
        ctx = self.tmp / "app"
        ctx.mkdir(exist_ok=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        for name, text in (files or {}).items():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx / name).write_text(text)
        return ctx

    def build(self, ctx, *args: str, layout=None) -> str:
        code, out, err = self.pybk("build", "--progress", "plain", "--build-context",
                                   f"busybox=oci-layout://{layout or self.layout}", *args,
                                   str(ctx))
        assert code == 0, err
        return err

    def cache(self, ref: str = "latest") -> list[dict]:
        code, out, err = self.pybk("history", "inspect", ref, "--cache", "--format", "json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def env(tmp_path, busybox_layout, capsys):
    need_runc()
    return Env(tmp_path, busybox_layout, capsys)


def _misses(err: str) -> dict[str, str]:
    """``{step name: reason}`` from plain progress."""
    names, out = {}, {}
    for line in err.splitlines():
        head, _, rest = line.partition(" ")
        if not head.startswith("#") or not head[1:].isdigit():
            continue
        if rest.startswith("CACHE MISS: "):
            out[names[head]] = rest[len("CACHE MISS: "):]
        elif head not in names:
            names[head] = rest
    return out


def _number(err: str, name: str) -> str:
    """The ``#N`` plain progress gave the step ``name``."""
    return next(line.split(" ", 1)[0] for line in err.splitlines()
                if line.split(" ", 1)[1:] == [name])


APP = """\
FROM busybox
ARG VERSION=1
COPY app/ /app/
RUN cat /app/main.py > /out
RUN echo "v=$VERSION" >> /out
"""


def test_one_file_change_is_named(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n", "app/util.py": "u\n"})
    first = env.build(ctx)
    assert "CACHE MISS" not in first
    (ctx / "app" / "main.py").write_text("print(2)\n")
    err = env.build(ctx)
    assert _misses(err) == {"[2/4] COPY app/ /app/": "context file app/main.py changed",
                            "[3/4] RUN cat /app/main.py > /out": "parent step #3 re-ran",
                            "[4/4] RUN echo v=1 >> /out": "parent step #4 re-ran"}
    # the line is under its step: right after the step's name
    lines = err.splitlines()
    at = lines.index("#3 [2/4] COPY app/ /app/")
    assert lines[at + 1] == "#3 CACHE MISS: context file app/main.py changed"


def test_unchanged_rebuild_and_a_file_outside_the_copy(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n", "README": "r\n"})
    env.build(ctx)
    (ctx / "README").write_text("changed\n")
    err = env.build(ctx)
    assert "CACHE MISS" not in err
    assert err.count("CACHED") == 4


def test_build_arg_change_names_the_arg_and_both_values(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx, "--build-arg", "VERSION=1")
    err = env.build(ctx, "--build-arg", "VERSION=2")
    # the ARG is in scope of both RUNs: the first is the cause, the second a consequence
    assert _misses(err) == {"[3/4] RUN cat /app/main.py > /out": "build arg VERSION changed 1 → 2",
                            "[4/4] RUN echo v=2 >> /out":
                            f"parent step {_number(err, '[3/4] RUN cat /app/main.py > /out')} "
                            "re-ran"}


def test_changed_run_text_and_its_consequence(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx)
    env.context(APP.replace("cat /app/main.py > /out", "cat /app/main.py >> /out"))
    err = env.build(ctx)
    assert _misses(err) == {"[3/4] RUN cat /app/main.py >> /out": "instruction text changed",
                            "[4/4] RUN echo v=1 >> /out":
                            f"parent step {_number(err, '[3/4] RUN cat /app/main.py >> /out')} "
                            "re-ran"}


def test_no_cache(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx)
    err = env.build(ctx, "--no-cache")
    misses = _misses(err)
    assert set(misses.values()) == {"--no-cache"}
    assert len(misses) >= 3


def test_base_image_change_names_both_digests(env, tmp_path):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    # a second base image: busybox with one more layer, as an OCI layout
    other = tmp_path / "other"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "Dockerfile").write_text("FROM busybox\nRUN echo other > /other\n")
    env.build(tmp_path / "base", "-o", f"type=oci,tar=false,dest={other}")
    index = json.loads((other / "index.json").read_text())
    new = index["manifests"][0]["digest"]
    env.build(ctx)
    old = json.loads((env.layout / "index.json").read_text())["manifests"][0]["digest"]
    err = env.build(ctx, layout=f"{other}@{new}")
    misses = _misses(err)
    image = next(name for name in misses if name.startswith("oci-layout://busybox@"))
    assert misses.pop(image) == f"base image digest changed ({old} → {new})"
    assert misses == {
        "[2/4] COPY app/ /app/": f"parent step {_number(err, image)} re-ran",
        "[3/4] RUN cat /app/main.py > /out":
            f"parent step {_number(err, '[2/4] COPY app/ /app/')} re-ran",
        "[4/4] RUN echo v=1 >> /out":
            f"parent step {_number(err, '[3/4] RUN cat /app/main.py > /out')} re-ran"}
    # back to the first image (a new file too, so nothing is cached): its layers are in the
    # store and its step is cached, so the first step built on it names the change
    (ctx / "app" / "main.py").write_text("print(3)\n")
    err = env.build(ctx)
    misses = _misses(err)
    assert not any(name.startswith("oci-layout://") for name in misses)
    assert misses["[2/4] COPY app/ /app/"] == f"base image digest changed ({new} → {old})"


def test_history_inspect_cache_and_explain_cache_table(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx)
    first = env.cache()
    assert first["compared_with"] is None
    (ctx / "app" / "main.py").write_text("print(2)\n")
    err = env.build(ctx, "--explain-cache")
    refs = env.pybk("history", "ls", "--format", "json")[1].splitlines()
    previous = json.loads(refs[1])["ref"]
    report = env.cache()
    assert report["compared_with"] == previous
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["[2/4] COPY app/ /app/"]["cached"] is False
    assert steps["[2/4] COPY app/ /app/"]["reason"] == "context file app/main.py changed"
    assert steps["[3/4] RUN cat /app/main.py > /out"]["reason"] == "parent step #3 re-ran"
    image = next(s for s in report["steps"] if s["name"].startswith("oci-layout://"))
    assert image["cached"] is True and image["reason"] == ""
    assert [s["step"] for s in report["steps"]] == list(range(1, len(report["steps"]) + 1))
    # the table at the end of the build
    tail = err[err.index(f"CACHE: compared with build {previous}"):].splitlines()
    assert tail[1].split() == ["STEP", "CACHED", "NAME", "REASON"]
    row = next(line for line in tail if "COPY app/" in line)
    assert row.split()[:2] == ["#3", "no"]
    assert row.endswith("context file app/main.py changed")
    assert any(line.split()[:2] == ["#2", "yes"] for line in tail)
    # against a named record: the first build (the same files as now? no: main.py differs)
    code, out, err = env.pybk("history", "inspect", "--cache", "latest")
    assert code == 0 and "context file app/main.py changed" in out


def test_explain_cache_ref_and_unknown_ref(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx, "--build-arg", "VERSION=1")
    first = json.loads(env.pybk("history", "ls", "--format", "json")[1].splitlines()[0])["ref"]
    env.build(ctx, "--build-arg", "VERSION=2")
    # a third build, VERSION=3, explained against the first (VERSION=1), not the second
    err = env.build(ctx, "--build-arg", "VERSION=3", "--explain-cache-ref", first[:8])
    assert _misses(err)["[3/4] RUN cat /app/main.py > /out"] == (
        "build arg VERSION changed 1 → 3")
    assert f"CACHE: compared with build {first}" in err
    code, out, err = env.pybk("build", "--explain-cache-ref", "nosuchref", str(ctx))
    assert code == 2
    assert "no build record found for ref 'nosuchref'" in err
    assert "Traceback" not in err


def test_trace(env, tmp_path):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx)
    (ctx / "app" / "main.py").write_text("print(2)\n")
    env.build(ctx)
    out = tmp_path / "trace.json"
    code, _, err = env.pybk("history", "trace", "latest", "-o", str(out))
    assert code == 0, err
    assert (out.stat().st_mode & 0o777) == 0o600
    events = json.loads(out.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    build = next(e for e in spans if e["cat"] == "build")
    steps = [e for e in spans if e is not build]
    record = json.loads(env.pybk("history", "export", "latest", "-o", "-")[1])
    assert sorted(e["args"]["digest"] for e in steps) == sorted(
        s["digest"] for s in record["steps"])
    for e in steps:
        assert build["ts"] <= e["ts"] and e["ts"] + e["dur"] <= build["ts"] + build["dur"]
        assert e["tid"] != build["tid"] and isinstance(e["dur"], int)
    by_name = {e["name"]: e for e in steps}
    image = next(e for n, e in by_name.items() if n.startswith("oci-layout://"))
    assert image["args"]["cached"] is True and image["cat"] == "cached"
    copy = by_name["[2/4] COPY app/ /app/"]
    assert copy["args"]["cached"] is False
    assert copy["args"]["cache_miss"] == "context file app/main.py changed"
    # steps on one track never overlap (Perfetto nests them otherwise)
    for tid in {e["tid"] for e in steps}:
        track = sorted((e for e in steps if e["tid"] == tid), key=lambda e: e["ts"])
        for a, b in zip(track, track[1:], strict=False):
            assert a["ts"] + a["dur"] <= b["ts"]


def test_rawjson_and_history_logs_carry_the_reason(env):
    ctx = env.context(APP, {"app/main.py": "print(1)\n"})
    env.build(ctx)
    (ctx / "app" / "main.py").write_text("print(2)\n")
    code, out, err = env.pybk("build", "--progress", "rawjson", "--build-context",
                              f"busybox=oci-layout://{env.layout}", str(ctx))
    assert code == 0, err
    vertexes = [v for line in err.splitlines() if line.startswith("{")
                for v in json.loads(line).get("vertexes", ())]
    reasons = {v["name"]: v["cacheMiss"] for v in vertexes if v.get("cacheMiss")}
    assert reasons["[2/4] COPY app/ /app/"] == "context file app/main.py changed"
    assert all(not v.get("cached") for v in vertexes if v.get("cacheMiss"))
    # the record shows it again
    code, out, err = env.pybk("history", "logs", "latest")
    assert code == 0, err
    lines = (out + err).splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith(" [2/4] COPY app/ /app/"))
    assert lines[at + 1].endswith(" CACHE MISS: context file app/main.py changed")


def test_env_change_new_step_no_cache_filter_and_pruned_result(env):
    two = """\
FROM busybox AS a
ENV COLOR=red
RUN echo "$COLOR" > /a
FROM a AS b
RUN cat /a > /b
"""
    ctx = env.context(two)
    env.build(ctx)
    for selector in ("b", "b:2"):  # the stage, or the step
        err = env.build(ctx, "--no-cache-filter", selector)
        assert _misses(err) == {"[b 2/2] RUN cat /a > /b": "--no-cache"}
    env.context(two.replace("red", "blue"))
    err = env.build(ctx)
    first = "[a 2/2] RUN echo blue > /a"
    assert _misses(err) == {first: "environment variable COLOR changed red → blue",
                            "[b 2/2] RUN cat /a > /b": f"parent step {_number(err, first)} re-ran"}
    env.context(two.replace("red", "blue") + "RUN echo new > /c\n")
    err = env.build(ctx)
    assert _misses(err) == {"[b 3/3] RUN echo new > /c":
                            "new step: the previous build had none like it"}
    code, _, perr = env.pybk("prune", "--all")
    assert code == 0, perr
    err = env.build(ctx)
    assert _misses(err)["[b 3/3] RUN echo new > /c"] == (
        "same cache key as the previous build, but its result is no longer in the cache")


def test_several_files_and_a_definition_change(env):
    ctx = env.context(APP, {"app/main.py": "m\n", "app/a.py": "a\n", "app/b.py": "b\n",
                            "app/c.py": "c\n",
                            "app/d.py": "d\n", "app/e.py": "e\n"})
    env.build(ctx)
    for name in ("a", "b", "c", "d"):
        (ctx / "app" / f"{name}.py").write_text("changed\n")
    err = env.build(ctx)
    assert _misses(err)["[2/4] COPY app/ /app/"] == (
        "context files app/a.py, app/b.py, app/c.py and 1 more changed")
    (ctx / "app" / "e.py").unlink()
    (ctx / "app" / "f.py").write_text("f\n")
    err = env.build(ctx)
    assert _misses(err)["[2/4] COPY app/ /app/"] == (
        "context files changed: app/e.py (removed), app/f.py (added)")
    # the same RUN text with a user set: neither its text nor its environment changed
    env.context(APP.replace("RUN cat", "USER root\nRUN cat"))
    err = env.build(ctx)
    assert _misses(err)["[3/4] RUN cat /app/main.py > /out"] == "the step's definition changed"


def test_cache_mount_options_and_contents(env):
    text = "FROM busybox\nRUN --mount=type=cache,target=/c,id=one date >> /c/runs\n"
    ctx = env.context(text)
    env.build(ctx)
    # what the cache mount holds changed (the step appended to it): still cached
    assert "CACHE MISS" not in env.build(ctx)
    env.context(text.replace("id=one", "id=two"))
    err = env.build(ctx)
    assert _misses(err) == {
        "[2/2] RUN --mount=type=cache,target=/c,id=two date >> /c/runs":
        "cache mount options changed (cache mounts are not part of the key: only their "
        "options are, never what they hold)"}


def test_a_step_that_failed_last_time(env):
    ctx = env.context("FROM busybox\nRUN echo one > /one\nRUN exit 3\n")
    code, _, _ = env.pybk("build", "--progress", "plain", "--build-context",
                          f"busybox=oci-layout://{env.layout}", str(ctx))
    assert code == 1
    code, _, err = env.pybk("build", "--progress", "plain", "--build-context",
                            f"busybox=oci-layout://{env.layout}", str(ctx))
    assert code == 1
    assert _misses(err) == {
        "[3/3] RUN exit 3": "same cache key as the previous build, where the step failed"}


def test_a_secret_value_in_a_build_arg_is_not_shown(env, monkeypatch, tmp_path):
    secret = "s3cr3t-insight-9a8b7c"
    monkeypatch.setenv("INSIGHT_SECRET", secret)
    ctx = env.context("FROM busybox\nARG ALSO\nRUN --mount=type=secret,id=s true\n")
    env.build(ctx, "--secret", "id=s,env=INSIGHT_SECRET", "--build-arg", "ALSO=plain")
    err = env.build(ctx, "--secret", "id=s,env=INSIGHT_SECRET", "--build-arg",
                    f"ALSO={secret}", "--explain-cache")
    assert "CACHE MISS: build arg ALSO changed plain → ****" in err
    code, trace, _ = env.pybk("history", "trace", "latest", "-o", "-")
    assert code == 0
    code, cache, _ = env.pybk("history", "inspect", "latest", "--cache", "--format", "json")
    assert code == 0
    assert secret not in err + trace + cache
    assert not [p for p in (env.root / "history").rglob("*")
                if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_downloaded_file_change_names_both_digests(env):
    import hashlib

    from support.netserver import StepServer

    body = {"now": b"one\n"}
    server = StepServer("127.0.0.1", lambda request: (200, body["now"]))
    try:
        ctx = env.context(f"FROM busybox\nADD {server.url}/f.txt /f.txt\nRUN cat /f.txt > /g\n")
        env.build(ctx)
        body["now"] = b"two\n"
        err = env.build(ctx)
    finally:
        server.close()
    one, two = (f"sha256:{hashlib.sha256(b).hexdigest()}" for b in (b"one\n", b"two\n"))
    misses = _misses(err)
    assert misses[f"[2/3] ADD {server.url}/f.txt /f.txt"] == (
        f"downloaded file changed ({one} → {two})")
    assert misses["[3/3] RUN cat /f.txt > /g"].startswith("parent step #")


def test_a_new_git_commit_names_both_commits(env, tmp_path):
    from support.githttp import GitHTTPServer, bare_repo, git, require_git_http_backend

    require_git_http_backend()
    root = tmp_path / "git"
    root.mkdir()
    first = bare_repo(root, "app.git", {"main.py": "1\n"})
    server = GitHTTPServer(root)
    try:
        ctx = env.context(f"FROM busybox\nADD {server.url}/app.git /src\nRUN cat /src/main.py\n")
        env.build(ctx)
        work = tmp_path / "work-app.git"
        (work / "main.py").write_text("2\n")
        git(work, "commit", "-q", "-am", "two")
        second = git(work, "rev-parse", "HEAD")
        git(work, "push", "-q", str(root / "app.git"), "main")
        err = env.build(ctx)
    finally:
        server.close()
    misses = _misses(err)
    assert misses[f"[2/3] ADD {server.url}/app.git /src"] == (
        f"git commit changed ({first} → {second})")
