"""pybkd's own log (``[log] format`` and ``level``): every line the daemon writes about itself,
as text (``pybkd: …``, ``WARNING: …``) or one JSON object per line."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

from support.pybkd import BASE_CONFIG, Pybkd, client_env

from pybk.core import daemonlog

JSON_CONFIG = BASE_CONFIG.replace("[worker.oci]", 'proxyNetwork = true\n\n[log]\nformat = "json"\n'
                                  "\n[worker.oci]")


def _records(text: str) -> list[dict]:
    """Each line of ``text`` as a JSON log record, checked: time (RFC 3339 with its offset),
    level and msg."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert record["level"] in ("error", "warning", "info", "debug"), line
        assert isinstance(record["msg"], str) and record["msg"], line
        when = datetime.datetime.fromisoformat(record["time"])
        assert when.tzinfo is not None, line
        assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 600
        records.append(record)
    return records


def test_json_log_every_line_is_an_object(tmp_path):
    d = Pybkd(tmp_path, JSON_CONFIG, extra=["--debug"])
    try:
        done = d.pybk("du")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(b"ID\t")  # the command's own output is untouched
        # a second daemon on the same socket fails: its error is a JSON record too
        second = subprocess.run([sys.executable, "-m", "pybk.core.cli.daemon", "--root",
                                 str(tmp_path / "other"), "--config", str(d.config), "--addr",
                                 d.addr], capture_output=True, text=True, env=client_env(),
                                timeout=120)
        assert second.returncode == 2
        errors = [r for r in _records(second.stderr) if r["level"] == "error"]
        assert len(errors) == 1 and "another daemon is listening" in errors[0]["msg"]
    finally:
        assert d.stop() == 0
    records = _records(d.stderr.read_text())
    assert d.stdout.read_text() == ""
    by_level = {level: [r["msg"] for r in records if r["level"] == level]
                for level in ("warning", "info", "debug")}
    assert any("proxyNetwork" in msg and "not supported by pybk yet" in msg
               for msg in by_level["warning"])
    serving = next(r for r in records if r["msg"].startswith("serving "))
    assert serving["address"] == d.addr and serving["pid"] == d.proc.pid
    command = next(r for r in records if r["level"] == "debug")
    assert command["argv"] == ["du"] and command["exit"] == 0
    assert command["client_uid"] == os.geteuid()
    assert records[-1]["msg"] == "stopped" and records[-1]["level"] == "info"


def test_text_log_keeps_its_lines(tmp_path):
    d = Pybkd(tmp_path, BASE_CONFIG.replace("[worker.oci]", "proxyNetwork = true\n\n[worker.oci]"),
              extra=["--debug"])
    try:
        assert d.pybk("du").returncode == 0
    finally:
        assert d.stop() == 0
    lines = d.stderr.read_text().splitlines()
    assert lines[0].startswith("WARNING: ") and "proxyNetwork" in lines[0]
    assert lines[1].startswith(f"pybkd: serving {d.addr} (store ")
    assert any(line.startswith("pybkd: pid ") and line.endswith(": pybk du: exit 0")
               for line in lines)
    assert lines[-1] == "pybkd: stopped"


def test_log_level_error_writes_only_errors(tmp_path):
    d = Pybkd(tmp_path, BASE_CONFIG + '\n[log]\nlevel = "error"\nformat = "json"\n')
    try:
        # "serving" is not logged at this level: wait for the socket instead
        assert d.pybk("du").returncode == 0
    finally:
        assert d.stop() == 0
    assert d.stderr.read_text() == ""


def test_format_line():
    assert daemonlog.format_line("info", "x", json_format=False) == "pybkd: x\n"
    assert daemonlog.format_line("error", "x", json_format=False) == "pybkd: x\n"
    assert daemonlog.format_line("warning", "y", json_format=False) == "WARNING: y\n"
    line = daemonlog.format_line("error", "z", {"exit": 2, "level": "no"}, json_format=True)
    assert line.endswith("}\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["level"] == "error" and record["msg"] == "z" and record["exit"] == 2
