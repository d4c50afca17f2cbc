"""The build history: every ``pybk build`` leaves a record (``ROOT/history``), ``[history]``
retention, and ``pybk history ls|inspect|logs|rm|export`` (buildx's ``history`` commands)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from support.engine import need_runc
from support.storeenv import StoreEnv

from pybk.core.history.recorder import RECORD_LOG_LIMIT, STEP_LOG_LIMIT, Recorder
from pybk.core.history.store import HistoryStore
from pybk.core.progress.events import SolveStatus, Vertex, VertexLog


class Env(StoreEnv):
    """A store, a config file and a busybox build context for ``pybk`` run in this process."""

    def context(self, name: str, dockerfile: str):
        ctx = self.tmp / name
        ctx.mkdir(exist_ok=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        return ctx

    def build(self, ctx, *args: str) -> tuple[int, str, str]:
        return self.pybk("build", "--progress", "plain", "--build-context",
                         f"busybox=oci-layout://{self.layout}", *args, str(ctx))

    def inspect(self, ref: str = "latest") -> dict:
        code, out, err = self.pybk("history", "inspect", ref, "--format", "json")
        assert code == 0, err
        return json.loads(out)

    def refs(self) -> list[str]:
        code, out, err = self.pybk("history", "ls", "--format", "json")
        assert code == 0, err
        return [json.loads(line)["ref"] for line in out.splitlines()]


@pytest.fixture
def env(tmp_path, busybox_layout, capsys):
    need_runc()
    return Env(tmp_path, busybox_layout, capsys)


OK_DOCKERFILE = """\
FROM busybox AS base
ARG A
RUN echo "hello-from-step $A" && echo "to-stderr" >&2
FROM base AS final
LABEL team=history
RUN echo second > /second
"""


def test_record_of_a_successful_build(env):
    ctx = env.context("app", OK_DOCKERFILE)
    meta = env.tmp / "meta.json"
    code, _, err = env.build(ctx, "--build-arg", "A=one", "--build-arg", "UNUSED=x",
                             "--target", "final", "--platform",
                             "linux/amd64", "-t", "hist.example/app:1", "--provenance",
                             "mode=max", "--metadata-file", str(meta))
    assert code == 0, err
    data = env.inspect()
    assert data["Status"] == "completed" and "Error" not in data
    assert data["Name"] == "app (final)" and data["Target"] == "final"
    assert data["Platform"] == ["linux/amd64"]
    assert {"Name": "A", "Value": "one"} in data["BuildArgs"]
    assert data["NumWarnings"] == 1  # the frontend's: UNUSED was not consumed
    assert data["Frontend"] == "dockerfile.v0"
    assert data["NumTotalSteps"] >= 3
    assert data["NumCompletedSteps"] == data["NumTotalSteps"] and data["NumCachedSteps"] == 0
    assert data["Duration"] > 0 and data["StartedAt"] <= data["CompletedAt"]
    # the exporter's response, as --metadata-file has it
    digest = json.loads(meta.read_text())["containerimage.digest"]
    (output,) = data["Outputs"]
    assert output["Type"] == "image" and output["Response"]["containerimage.digest"] == digest
    assert output["Response"]["image.name"] == "hist.example/app:1"
    assert data["Provenance"] == ["https://slsa.dev/provenance/v0.2"]
    assert data["Materials"][0]["URI"] == "oci-layout://busybox"
    assert data["Materials"][0]["Digests"][0].startswith("sha256:")
    # each step: name, cached, times; logs as --progress plain shows them
    _, details = HistoryStore(env.root).load(data["Ref"])
    assert "UNUSED" in details["warnings"][0]["short"]
    run = next(s for s in details["steps"] if "hello-from-step" in s["name"])
    assert not run["cached"] and run["duration"] > 0 and run["started"] <= run["completed"]
    assert {chunk[0] for chunk in run["logs"]} == {1, 2}  # stdout and stderr
    code, out, _ = env.pybk("history", "logs", data["Ref"][:6])
    assert code == 0
    assert "hello-from-step one" in out and "to-stderr" in out
    assert any(line.startswith("#") and line.endswith("DONE " + line.rsplit(" ", 1)[-1])
               for line in out.splitlines())
    assert "RUN echo second > /second" in out
    # private, like the rest of the store
    directory = env.root / "history"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (path,) = directory.iterdir()
    assert path.name == data["Ref"] + ".json" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_record_of_a_failing_build_has_the_error_and_its_location(env):
    ctx = env.context("bad", "FROM busybox\nRUN echo before-failing\nRUN echo last-words && exit 3\n")
    code, _, _ = env.build(ctx)
    assert code == 1
    data = env.inspect()
    assert data["Status"] == "failed"
    error = data["Error"]
    assert "did not complete successfully: exit code: 3" in error["Message"]
    assert error["Location"] == {"Filename": "Dockerfile", "Line": 3, "EndLine": 3}
    assert error["Logs"] == ["last-words"] and "exit 3" in error["Name"]
    sources = __import__("base64").b64decode(error["Sources"]).decode()
    assert sources.startswith("Dockerfile:3\n") and ">>> RUN echo last-words" in sources
    assert data["NumCompletedSteps"] == data["NumTotalSteps"] - 1
    code, out, _ = env.pybk("history", "inspect")
    assert code == 0
    assert "Error:" in out and "exit code: 3" in out and " 3 | >>> RUN echo last-words" in out
    assert "> => [3/3] RUN echo last-words && exit 3:\n> last-words\n" in out
    # an error before any step runs (the Dockerfile itself) is recorded with its line too
    ctx = env.context("parse", "FROM busybox\nNOTANINSTRUCTION x\n")
    code, _, err = env.build(ctx)
    assert code == 2 and "Traceback" not in err
    data = env.inspect()
    assert data["Status"] == "failed" and data["Error"]["Location"]["Line"] == 2
    assert data["Error"]["Location"]["Filename"].endswith("Dockerfile")
    # --check that finds problems: a failed build too
    ctx = env.context("lint", "FROM busybox as base\nRUN true\n")
    assert env.pybk("build", "--check", str(ctx))[0] == 1
    data = env.inspect()
    assert data["Status"] == "failed" and "1 warning" in data["Error"]["Message"]
    assert {"Name": "requestid", "Value": "frontend.lint"} in data["Config"]["RestRaw"]


def test_record_of_a_cached_build(env):
    ctx = env.context("cached", "FROM busybox\nRUN echo cached-step > /f\n")
    assert env.build(ctx)[0] == 0
    code, _, err = env.build(ctx)
    assert code == 0, err
    first, second = env.refs()[::-1]
    assert first != second
    data = env.inspect(second)
    assert data["Status"] == "completed"
    assert data["NumCachedSteps"] == data["NumTotalSteps"] == data["NumCompletedSteps"] > 0
    assert env.inspect(first)["NumCachedSteps"] == 0
    code, out, _ = env.pybk("history", "logs", second)
    assert "CACHED" in out and "DONE" not in out


def test_step_logs_are_bounded(env, monkeypatch):
    monkeypatch.setenv("BUILDKIT_STEP_LOG_MAX_SPEED", "-1")
    ctx = env.context("loud", "FROM busybox\nRUN head -c 300000 /dev/zero | tr '\\0' x"
                              " && echo && echo END-MARKER\n")
    code, _, err = env.build(ctx)
    assert code == 0, err
    ref = env.refs()[0]
    _, details = HistoryStore(env.root).load(ref)
    loud = next(s for s in details["steps"] if "END-MARKER" in s["name"])
    kept = "".join(chunk[2] for chunk in loud["logs"])
    assert len(kept.encode()) <= STEP_LOG_LIMIT and kept.endswith("END-MARKER\n")
    assert loud["logs_dropped"] == 300000 + len("\nEND-MARKER\n") - len(kept.encode())
    assert os.path.getsize(env.root / "history" / f"{ref}.json") < STEP_LOG_LIMIT + 16384
    data = env.inspect(ref)
    assert data["LogBytesDropped"] == loud["logs_dropped"]
    code, out, _ = env.pybk("history", "logs", ref)
    assert f"[history: the first {loud['logs_dropped']} bytes of this step's output" in out
    assert "END-MARKER" in out


def test_a_record_keeps_at_most_a_mebibyte_of_logs(tmp_path):
    """40 steps of 64 KiB each: the steps that ended last keep theirs, the record stays under
    its bound."""
    recorder = Recorder(str(tmp_path), max_age=3600, max_entries=50)
    for i in range(40):
        digest = f"sha256:{i:064x}"
        recorder(SolveStatus(vertexes=(Vertex(digest=digest, name=f"step {i}",
                                              started=1000.0 + i),)))
        recorder(SolveStatus(logs=(VertexLog(vertex=digest, stream=1, data=b"y" * 70000,
                                             timestamp=1000.0 + i),)))
        recorder(SolveStatus(vertexes=(Vertex(digest=digest, name=f"step {i}",
                                              started=1000.0 + i, completed=1000.5 + i),)))
    recorder.finish()
    record, details = HistoryStore(tmp_path).load(recorder.ref)
    sizes = [sum(len(c[2]) for c in s["logs"]) for s in details["steps"]]
    assert sum(sizes) == record.log_bytes <= RECORD_LOG_LIMIT
    assert sizes[-1] == STEP_LOG_LIMIT and sizes[0] == 0  # the newest kept, the oldest not
    assert record.log_bytes + record.log_bytes_dropped == 40 * 70000


def test_retention_by_max_entries(env):
    """``maxEntries = 2``: with the default ``maxAge`` (48h) nothing is old enough to go
    (BuildKit deletes only records beyond maxEntries *and* older than maxAge); with
    ``maxAge = 0`` every record beyond the newest two goes when the next is added."""
    ctx = env.context("many", "FROM busybox\nRUN echo many > /f\n")
    env.configure("[history]\nmaxEntries = 2\n")
    for _ in range(3):
        assert env.build(ctx)[0] == 0
    assert len(env.refs()) == 3
    before = env.refs()
    env.configure("[history]\nmaxEntries = 2\nmaxAge = \"0s\"\n")
    assert env.build(ctx)[0] == 0
    after = env.refs()
    assert len(after) == 2 and after[1] == before[0] and after[0] not in before
    assert sorted(p.name for p in (env.root / "history").iterdir()) == sorted(
        f"{ref}.json" for ref in after)


def test_retention_by_max_age(env):
    """``maxAge = "2s"``, ``maxEntries = 0``: a record goes once it ended more than two seconds
    ago, when the next record is added and with the automatic GC."""
    from pybk.core.config.loader import load_config
    from pybk.core.engine.client import Client

    ctx = env.context("aging", "FROM busybox\nRUN echo aging > /f\n")
    env.configure("[history]\nmaxEntries = 0\nmaxAge = \"2s\"\n")
    assert env.build(ctx)[0] == 0
    (old,) = env.refs()
    # a writer killed outright leaves its temporary file: gone an hour later
    stale, fresh = env.root / "history" / ".a.1.tmp", env.root / "history" / ".b.2.tmp"
    stale.write_text("{}")
    fresh.write_text("{}")
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    time.sleep(2.5)
    assert env.build(ctx)[0] == 0
    (new,) = env.refs()
    assert new != old
    assert not stale.exists() and fresh.exists()
    time.sleep(2.5)
    config, _ = load_config(str(env.config))
    with Client(root=str(env.root), config=config) as client:
        client.worker()
        client.collect_garbage()
    assert env.refs() == []


def test_history_commands_text_and_json(env):
    ctx = env.context("cmds", "FROM busybox\nRUN echo cmds > /f\n")
    assert env.build(ctx)[0] == 0
    assert env.build(ctx)[0] == 0
    refs = env.refs()
    newest, oldest = refs[0], refs[-1]
    # ls: buildx's columns, newest first
    code, out, _ = env.pybk("history", "ls")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("BUILD ID ")
    for header in ("BUILD ID", "NAME", "STATUS", "CREATED AT", "DURATION"):
        assert header in lines[0]
    assert [line.split()[0] for line in lines[1:]] == refs
    assert "cmds" in lines[-1] and "Completed" in lines[-1] and " ago " in lines[-1]
    code, out, _ = env.pybk("history", "ls", "--format", "json")
    row = json.loads(out.splitlines()[-1])
    assert set(row) == {"ref", "name", "status", "created_at", "completed_at", "total_steps",
                        "completed_steps", "cached_steps"}
    assert row["ref"] == oldest and row["status"] == "Completed" and row["name"] == "cmds"
    # inspect: pretty and JSON, by a prefix, by ^N
    code, out, _ = env.pybk("history", "inspect", oldest[:5])
    assert code == 0 and f"Ref:        {oldest}" in out and "Build Steps:" in out
    assert f"Print build logs: pybk history logs {oldest}" in out
    assert env.inspect(f"^{len(refs) - 1}")["Ref"] == oldest
    assert env.inspect("^0")["Ref"] == newest
    # logs: rawjson is one SolveStatus per line
    code, out, _ = env.pybk("history", "logs", oldest, "--progress", "rawjson")
    statuses = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and any("vertexes" in s for s in statuses)
    # export: one JSON document, private
    dest = env.tmp / "record.json"
    code, _, err = env.pybk("history", "export", oldest, "-o", str(dest))
    assert code == 0, err
    exported = json.loads(dest.read_text())
    assert exported["mediaType"] == "application/vnd.pybk.history.v1+json"
    assert exported["record"]["ref"] == oldest and exported["steps"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    # unknown refs and bad flags: exit 2, a clear message, no traceback
    for args, message in ((("inspect", "zzzzzz"), "no build record found for ref 'zzzzzz'"),
                          (("logs", "^99"), "no build record at offset '^99'"),
                          (("rm", "nope"), "no build record found for ref 'nope'"),
                          (("export", "zzz", "-o", str(dest)), "no build record found"),
                          (("ls", "--format", "yaml"), "--format: unknown format 'yaml'"),
                          (("rm",), "give at least one ref, or --all"),
                          ((), "choose one of ls, inspect, logs, rm, export")):
        code, out, err = env.pybk("history", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    # a long name (buildx's BUILDKIT_BUILD_NAME) is shortened from the left unless --no-trunc
    long_name = "a-rather-long-build-name-" + "x" * 30
    assert env.build(ctx, "--build-arg", f"BUILDKIT_BUILD_NAME={long_name}")[0] == 0
    named = env.refs()[0]
    table = env.pybk("history", "ls")[1]
    assert f"..{long_name[-34:]}   Completed" in table and long_name not in table
    assert f"{named}   {long_name}   Completed" in env.pybk("history", "ls", "--no-trunc")[1]
    assert env.pybk("history", "rm", named)[0] == 0
    # rm by prefix, then --all
    assert env.pybk("history", "rm", oldest[:8])[0] == 0
    assert oldest not in env.refs() and newest in env.refs()
    assert env.pybk("history", "rm", "--all")[0] == 0
    assert env.refs() == [] and env.pybk("history", "ls")[1].splitlines()[1:] == []


def test_secrets_appear_nowhere_in_the_history(env, monkeypatch):
    secret = "s3cr3t-value-6f1e2d"
    monkeypatch.setenv("HIST_SECRET", secret)
    ctx = env.context("secret", (
        "FROM busybox\n"
        "RUN --mount=type=secret,id=s test \"$(cat /run/secrets/s)\" = " + secret + "\n"
        "RUN --mount=type=secret,id=s,env=TOKEN echo token-is-$TOKEN\n"
        "RUN --mount=type=secret,id=s cat /run/secrets/s; echo; exit 5\n"))
    code, out, err = env.build(ctx, "--secret", "id=s,env=HIST_SECRET",
                               "--build-arg", f"ALSO={secret}")
    assert code == 1
    ref = env.refs()[0]
    found = [p for p in (env.root / "history").rglob("*")
             if p.is_file() and secret.encode() in p.read_bytes()]
    assert found == []
    outputs = []
    for args in (("ls",), ("ls", "--format", "json"), ("inspect", ref),
                 ("inspect", ref, "--format", "json"), ("logs", ref),
                 ("logs", ref, "--progress", "rawjson"), ("export", ref, "-o", "-")):
        code, out, err = env.pybk("history", *args)
        assert code == 0, err
        outputs.append(out + err)
    assert not any(secret in text for text in outputs)
    logs = outputs[4]
    assert "token-is-****" in logs and "\n#4 " in logs and "****" in outputs[2]
    assert {"Name": "ALSO", "Value": "****"} in json.loads(outputs[3])["BuildArgs"]


def test_interrupted_build_is_recorded_as_canceled(env):
    import signal
    import subprocess
    import sys

    ctx = env.context("slow", "FROM busybox\nRUN echo started-sleeping && sleep 60\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybk.core.cli.entry", "--addr=", "--root", str(env.root),
         "--config", str(env.config), "build", "--progress", "plain", "--build-context",
         f"busybox=oci-layout://{env.layout}", str(ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 60
    while b"started-sleeping" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.read1(4096)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    (row,) = [json.loads(line) for line in env.pybk("history", "ls", "--format",
                                                   "json")[1].splitlines()]
    assert row["status"] == "Canceled"
    data = env.inspect()
    assert data["Status"] == "canceled" and data["Error"]["Message"] == "context canceled"
    assert "Status:      Canceled" in env.pybk("history", "inspect")[1]


def test_python_api_records_when_given_a_recorder(tmp_path):
    """``Client.solve(…, history=Recorder(…))``: the recorder sees every step whatever
    ``progress`` shows; ``finish()`` writes the record."""
    from pybk.core import llb
    from pybk.core.engine.client import Client

    need_runc()
    recorder = Recorder(str(tmp_path), max_age=3600, max_entries=5)
    graph = llb.scratch().file(llb.mkfile("/made", 0o644, "by the API"))
    with Client(root=str(tmp_path)) as client:
        client.solve(graph, progress=None, history=recorder)
    recorder.finish()
    (record,) = HistoryStore(tmp_path).records()
    assert record.ref == recorder.ref and record.status == "completed"
    assert record.num_total_steps == record.num_completed_steps == 1
