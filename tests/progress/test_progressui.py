"""Renderers fed with synthetic progress streams (no build needed)."""

import base64
import io
import json

from pybk.core.progress.events import (
    EventRecorder,
    Progress,
    SolveStatus,
    StepLogLimiter,
    Vertex,
    VertexLog,
    format_time,
)
from pybk.core.progress.ui import (
    PlainRenderer,
    QuietRenderer,
    RawJSONRenderer,
    format_bytes,
    make_renderer,
    progress_sinks,
)


def _plain():
    out = io.StringIO()
    return out, PlainRenderer(out)


def test_plain_sequential_steps_match_buildkit_shape():
    out, r = _plain()
    p = Progress(r)
    a = p.vertex("sha256:a", "docker-image://example/busybox:latest")
    b = p.vertex("sha256:b", "/bin/sh -c echo hi", ["sha256:a"])
    a.announce()
    b.announce()
    a.start()
    a.status("resolve example/busybox:latest", done=True)
    a.done()
    b.start()
    b.log(1, b"hi\nthere\n")
    b.done()
    r.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "#1 docker-image://example/busybox:latest"
    assert lines[1] == "#1 resolve example/busybox:latest done"
    assert lines[2].startswith("#1 DONE ") and lines[2].endswith("s")
    assert lines[3] == ""
    assert lines[4] == "#2 /bin/sh -c echo hi"
    assert lines[5].startswith("#2 0.0") and lines[5].endswith(" hi")
    assert lines[6].endswith(" there")
    assert lines[7].startswith("#2 DONE ")
    assert len(lines) == 8


def test_plain_cached_error_and_canceled():
    out, r = _plain()
    p = Progress(r)
    c = p.vertex("sha256:c", "cached step")
    e = p.vertex("sha256:e", "[2/2] RUN exit 3")
    x = p.vertex("sha256:x", "other")
    c.cached()
    e.start()
    e.log(2, b"boom\n")
    e.error('process "/bin/sh -c exit 3" did not complete successfully: exit code: 3')
    x.start()
    x.error("context canceled")
    r.close()
    text = out.getvalue()
    assert "#1 cached step\n#1 CACHED\n" in text
    assert ('#2 ERROR: process "/bin/sh -c exit 3" did not complete successfully: '
            "exit code: 3\n") in text
    assert "#3 CANCELED\n" in text
    # failed steps' last log lines are repeated at the end
    tail = text[text.index("------"):]
    assert tail.splitlines()[1] == " > [2/2] RUN exit 3:"
    assert tail.splitlines()[2].endswith(" boom")


def test_plain_interleaved_steps_switch_with_ellipsis():
    out, r = _plain()
    p = Progress(r)
    a = p.vertex("sha256:a", "A")
    b = p.vertex("sha256:b", "B")
    a.start()
    a.log(1, b"a1\n")
    b.start()
    b.log(1, b"b1\n")
    a.done()  # a completes: printed first, then b gets the floor
    b.done()
    r.close()
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["#1 A", lines[1]] and lines[1].endswith(" a1")
    assert lines[2].startswith("#1 DONE")
    assert lines[3:5] == ["", "#2 B"]
    assert lines[5].endswith(" b1")
    assert lines[6].startswith("#2 DONE")


def test_plain_partial_lines_join():
    out, r = _plain()
    p = Progress(r)
    a = p.vertex("sha256:a", "A")
    a.start()
    a.log(1, b"hel")
    a.log(1, b"lo\nwor")
    a.done()
    r.close()
    lines = out.getvalue().splitlines()
    assert lines[1].endswith(" hello")
    assert lines[2].endswith(" wor")


def test_status_bytes_format():
    assert format_bytes(38) == "38B"
    assert format_bytes(22790) == "22.79kB"
    assert format_bytes(3_400_000) == "3.40MB"
    out, r = _plain()
    p = Progress(r)
    a = p.vertex("sha256:a", "A")
    a.start()
    a.status("sha256:abc", current=100, total=3_400_000, done=True)
    r.close()
    assert "#1 sha256:abc 100B / 3.40MB done" in out.getvalue()


def test_rawjson_uses_buildkit_field_names():
    out = io.StringIO()
    p = Progress(RawJSONRenderer(out))
    v = p.vertex("sha256:a", "A", ["sha256:z"])
    v.start()
    v.status("transferring context:", current=5, done=True)
    v.log(1, b"x\n")
    v.warn("careful", detail=["more"])
    v.done()
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert objs[0]["vertexes"][0].keys() >= {"digest", "inputs", "name", "started"}
    assert objs[1]["statuses"][0].keys() >= {"id", "vertex", "current", "timestamp",
                                             "started", "completed"}
    log = objs[2]["logs"][0]
    assert log["stream"] == 1 and base64.b64decode(log["data"]) == b"x\n"
    assert base64.b64decode(objs[3]["warnings"][0]["short"]) == b"careful"
    assert "completed" in objs[4]["vertexes"][0]


def test_format_time_is_rfc3339_utc():
    assert format_time(0.5) == "1970-01-01T00:00:00.5Z"
    assert format_time(86400.0) == "1970-01-02T00:00:00Z"


def test_step_log_limit_clips_once_with_buildkit_message():
    rec = EventRecorder()
    p = Progress(rec)
    v = p.vertex("sha256:a", "A")
    lim = StepLogLimiter(v, 1, max_size=10, max_speed=-1)
    lim.write(b"123456")
    lim.write(b"789012345")
    lim.write(b"more")
    data = rec.logs()
    assert data == b"1234567890\n[output clipped, log limit 10B reached]\n"


def test_step_log_speed_limit_message():
    rec = EventRecorder()
    v = Progress(rec).vertex("sha256:a", "A")
    now = [0.0]
    lim = StepLogLimiter(v, 1, max_size=-1, max_speed=200 * 1024, clock=lambda: now[0])
    now[0] = 0.5
    lim.write(b"x" * (300 * 1024))
    assert rec.logs().endswith(b"\n[output clipped, log limit 200KiB/s reached]\n")
    assert rec.logs().count(b"x") == 200 * 1024


def test_default_limits_from_environment(monkeypatch):
    monkeypatch.setenv("BUILDKIT_STEP_LOG_MAX_SIZE", "4")
    monkeypatch.setenv("BUILDKIT_STEP_LOG_MAX_SPEED", "-1")
    rec = EventRecorder()
    lim = StepLogLimiter(Progress(rec).vertex("sha256:a", "A"), 2)
    lim.write(b"abcdefgh")
    assert rec.logs() == b"abcd\n[output clipped, log limit 4B reached]\n"


def test_make_renderer_modes():
    buf = io.StringIO()
    assert isinstance(make_renderer("auto", buf), PlainRenderer)  # not a terminal
    assert isinstance(make_renderer("rawjson", buf), RawJSONRenderer)
    make_renderer("quiet", buf)(SolveStatus(vertexes=(Vertex("sha256:a", "A", started=1.0),)))
    assert buf.getvalue() == ""
    import pytest

    from pybk.core.errors import UsageError

    with pytest.raises(UsageError):
        make_renderer("fancy", buf)
    with pytest.raises(UsageError):
        make_renderer("tty", buf)


def test_log_timestamps_relative_to_step_start():
    out, r = _plain()
    r(SolveStatus(vertexes=(Vertex("sha256:a", "A", started=100.0),)))
    r(SolveStatus(logs=(VertexLog("sha256:a", 1, b"late\n", 112.5),)))
    r.close()
    assert "#1 12.50 late" in out.getvalue()


def test_progress_sinks_for_every_form():
    assert progress_sinks(None) == ([], [])
    renderers, sinks = progress_sinks("none")
    assert [type(r) for r in renderers] == [QuietRenderer] and sinks == []
    renderers, _ = progress_sinks("plain")
    assert [type(r) for r in renderers] == [PlainRenderer]
    one, two = print, repr
    assert progress_sinks(one) == ([], [one])
    assert progress_sinks((one, two)) == ([], [one, two])


def test_tty_view_shows_why_a_step_missed_the_cache():
    import time

    from pybk.core.progress.ui import TTYRenderer

    out = io.StringIO()
    renderer = TTYRenderer(out)
    t = time.time()
    for completed in (None, t + 1):
        renderer(SolveStatus(vertexes=(
            Vertex(digest="a", name="[2/3] RUN make", started=t, completed=completed,
                   cache_miss="instruction text changed"),
            Vertex(digest="b", name="[3/3] RUN test", started=t, completed=completed,
                   cached=True),)))
    renderer.close()
    lines = out.getvalue().splitlines()
    at = next(i for i, line in enumerate(lines) if "[2/3] RUN make" in line)
    assert lines[at + 1] == " => => cache miss: instruction text changed"
    assert sum("cache miss" in line for line in lines) == 1
