"""``pybk history ls|inspect|logs|rm|export|trace``: the build records of a store, shown as buildx's
``docker buildx history`` commands show them (see docs/history.md)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from pybk.core.errors import UsageError
from pybk.core.history.store import BuildRecord, HistoryStore

#: ``ls``'s columns, buildx's headers
LS_HEADERS = ("BUILD ID", "NAME", "STATUS", "CREATED AT", "DURATION")
#: a name longer than this is shortened in ``ls``'s table (buildx: 36)
NAME_WIDTH = 36
#: lines of the failed step's log ``inspect`` shows (buildx: 16)
ERROR_LOG_LINES = 16
_STATUS_LS = {"completed": "Completed", "error": "Error", "canceled": "Canceled"}
_STATUS_INSPECT = {"completed": "completed", "error": "failed", "canceled": "canceled"}


def history_command(ns: argparse.Namespace) -> int:
    from pybk.core.cli.commands import store_root

    what = getattr(ns, "history_command", None)
    if what is None:
        raise UsageError("pybk history: choose one of ls, inspect, logs, rm, export, trace")
    store = HistoryStore(store_root(ns.root))
    return {"ls": _ls, "inspect": _inspect, "logs": _logs, "rm": _rm,
            "export": _export, "trace": _trace}[what](store, ns, sys.stdout)


# -- formatting helpers --------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """Go's ``units.HumanDuration`` (``CREATED AT``: "2 minutes" … then `` ago``)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def format_duration(seconds: float) -> str:
    """buildx's durations: ``1.2s`` under a minute, ``3m 4s`` beyond."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m {int(seconds) % 60:2d}s"


def rfc3339(ts: float) -> str:
    """RFC 3339 with nanoseconds, UTC (Go's ``time.RFC3339Nano``)."""
    from pybk.core.progress.events import format_time

    return format_time(ts)


def _table(rows: Sequence[Sequence[str]], out: IO[str], gap: int = 3) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("".join(cell.ljust(w + gap) for cell, w in zip(row, widths, strict=True))
                  .rstrip() + "\n")


def _trim_beginning(text: str, width: int) -> str:
    return text if len(text) <= width else ".." + text[len(text) - width + 2:]


# -- ls ------------------------------------------------------------------------------------


def ls_json(record: BuildRecord) -> dict[str, Any]:
    """One line of ``ls --format json`` (buildx's keys)."""
    return {"ref": record.ref, "name": record.name,
            "status": _STATUS_LS.get(record.status, record.status),
            "created_at": rfc3339(record.created_at),
            "completed_at": rfc3339(record.completed_at),
            "total_steps": record.num_total_steps,
            "completed_steps": record.num_completed_steps,
            "cached_steps": record.num_cached_steps}


def _ls(store: HistoryStore, ns: argparse.Namespace, out: IO[str]) -> int:
    if ns.format not in ("table", "json"):
        raise UsageError(f"unknown format {ns.format!r} (table or json)", flag="--format")
    records = store.records()
    if ns.format == "json":
        for record in records:
            out.write(json.dumps(ls_json(record)) + "\n")
        return 0
    now = time.time()
    rows = [LS_HEADERS] + [(
        r.ref, r.name if ns.no_trunc else _trim_beginning(r.name, NAME_WIDTH),
        _STATUS_LS.get(r.status, r.status), human_duration(now - r.created_at) + " ago",
        format_duration(r.duration)) for r in records]
    _table(rows, out)
    return 0


# -- inspect -------------------------------------------------------------------------------


def _key_values(attrs: dict[str, str], prefix: str) -> list[dict[str, str]]:
    found = sorted((k[len(prefix):], attrs.pop(k)) for k in list(attrs) if k.startswith(prefix))
    return [{"Name": k, "Value": v} for k, v in found]


def _config(attrs: dict[str, str]) -> dict[str, Any]:
    """buildx's ``Config`` of an inspect: the options it names, the rest raw."""
    config: dict[str, Any] = {}
    named = (("force-network-mode", "Network"), ("hostname", "Hostname"),
             ("cgroup-parent", "CgroupParent"), ("image-resolve-mode", "ImageResolveMode"),
             ("shm-size", "ShmSize"), ("ulimit", "Ulimit"), ("memory", "Memory"),
             ("memory-swap", "MemorySwap"), ("cpu-shares", "CPUShares"),
             ("cpu-period", "CPUPeriod"), ("cpu-quota", "CPUQuota"),
             ("cpuset-cpus", "CPUSetCPUs"), ("cpuset-mems", "CPUSetMems"),
             ("build-arg:BUILDKIT_CACHE_MOUNT_NS", "CacheMountNS"),
             ("build-arg:BUILDKIT_DOCKERFILE_CHECK", "DockerfileCheckConfig"),
             ("build-arg:SOURCE_DATE_EPOCH", "SourceDateEpoch"),
             ("build-arg:SANDBOX_HOSTNAME", "SandboxHostname"))
    for key, name in named:
        if key in attrs:
            config[name] = attrs.pop(key)
    if "add-hosts" in attrs:
        config["ExtraHosts"] = [h for h in attrs.pop("add-hosts").split(",") if h]
    if "no-cache" in attrs:
        value = attrs.pop("no-cache")
        if value:
            config["NoCacheFilter"] = value.split(",")
        else:
            config["NoCache"] = True
    multi = attrs.pop("multi-platform", attrs.pop("build-arg:BUILDKIT_MULTI_PLATFORM", ""))
    if multi.lower() in ("1", "true"):
        config["MultiPlatform"] = True
    rest = [{"Name": k, "Value": v} for k, v in sorted(attrs.items())
            if not k.startswith(("vcs:", "build-arg:", "label:", "context:", "attest:"))]
    if rest:
        config["RestRaw"] = rest
    return config


def _materials(details: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for prov in details.get("provenance") or ():
        predicate = prov.get("predicate") or {}
        found = (predicate.get("materials")
                 or (predicate.get("buildDefinition") or {}).get("resolvedDependencies") or ())
        for m in found:
            entry = {"URI": m.get("uri", ""),
                     "Digests": [f"{k}:{v}" for k, v in sorted((m.get("digest") or {}).items())]}
            if entry not in out:
                out.append(entry)
    return out


def _error_logs(details: Mapping[str, Any], vertex: str | None) -> tuple[str, list[str]]:
    """The failed step's name and the last lines of its log."""
    for step in details.get("steps", ()):
        if step.get("digest") == vertex or (vertex is None and step.get("error")):
            text = "".join(chunk[2] for chunk in step.get("logs", ()))
            lines = [line for line in text.split("\n") if line]
            return step.get("name", ""), lines[-ERROR_LOG_LINES:]
    return "", []


def inspect_json(record: BuildRecord, details: Mapping[str, Any]) -> dict[str, Any]:
    """``inspect --format json``: buildx's fields (``Duration`` in nanoseconds, as Go writes a
    ``time.Duration``; ``Error.Sources`` base64, as Go writes bytes), and pybk's ``Frontend``,
    ``Outputs``, ``NumWarnings`` and ``LogBytesDropped``."""
    attrs = dict(record.frontend_attrs)
    attrs.pop("frontend.caps", None)
    out: dict[str, Any] = {}
    if record.name:
        out["Name"] = record.name
    out["Ref"] = record.ref
    if record.context:
        out["Context"] = record.context
    if record.dockerfile:
        out["Dockerfile"] = record.dockerfile
    for key in ("filename", "target", "platform"):
        attrs.pop(key, None)
    if record.target:
        out["Target"] = record.target
    if record.platforms:
        out["Platform"] = list(record.platforms)
    named = _key_values(attrs, "context:")
    if named:
        out["NamedContexts"] = named
    out["StartedAt"] = rfc3339(record.created_at)
    out["CompletedAt"] = rfc3339(record.completed_at)
    out["Duration"] = int(record.duration * 1e9)
    out["Status"] = _STATUS_INSPECT.get(record.status, record.status)
    if record.error is not None:
        err = record.error
        error: dict[str, Any] = {"Message": err.get("message", "")}
        if record.status == "canceled":
            error["Code"] = 1  # gRPC's Canceled
        if err.get("source"):
            error["Sources"] = base64.b64encode((err["source"] + "\n").encode()).decode()
        if err.get("filename"):
            error["Location"] = {"Filename": err["filename"], "Line": err.get("line"),
                                 "EndLine": err.get("end_line")}
        name, lines = _error_logs(details, err.get("vertex"))
        if name:
            error["Name"] = name
        if lines:
            error["Logs"] = lines
        out["Error"] = error
    out["NumCompletedSteps"] = record.num_completed_steps
    out["NumTotalSteps"] = record.num_total_steps
    out["NumCachedSteps"] = record.num_cached_steps
    # every build argument, those the config names too (as buildx lists them)
    build_args = [{"Name": k[len("build-arg:"):], "Value": v} for k, v in sorted(attrs.items())
                  if k.startswith("build-arg:")]
    labels = _key_values(attrs, "label:")
    config = _config(attrs)
    if build_args:
        out["BuildArgs"] = build_args
    if labels:
        out["Labels"] = labels
    out["Config"] = config
    materials = _materials(details)
    if materials:
        out["Materials"] = materials
    out["Frontend"] = record.frontend
    out["Outputs"] = [{"Type": e.get("type", ""), "Attrs": e.get("attrs", {}),
                       "Response": e.get("response", {})} for e in record.exporters]
    out["NumWarnings"] = record.num_warnings
    if record.provenance:
        out["Provenance"] = list(record.provenance)
    if record.log_bytes_dropped:
        out["LogBytesDropped"] = record.log_bytes_dropped
    return out


def _inspect(store: HistoryStore, ns: argparse.Namespace, out: IO[str]) -> int:
    if ns.format not in ("pretty", "json"):
        raise UsageError(f"unknown format {ns.format!r} (pretty or json)", flag="--format")
    record, details = store.load(store.resolve(ns.ref))
    if getattr(ns, "cache", False):
        from pybk.core.history.explain import cache_report, cache_table

        report = cache_report(details.get("steps", []), details.get("cache_compared"))
        out.write(json.dumps(report, indent=2) + "\n" if ns.format == "json"
                  else "\n".join(cache_table(report)) + "\n")
        return 0
    data = inspect_json(record, details)
    if ns.format == "json":
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    _print_inspect(data, record, out)
    return 0


def _pairs(pairs: Sequence[tuple[str, str]], out: IO[str]) -> None:
    if not pairs:
        return
    width = max(len(k) for k, _ in pairs) + 2
    for key, value in pairs:
        out.write(f"{(key + ':').ljust(width)}{value}\n")


def _print_inspect(data: Mapping[str, Any], record: BuildRecord, out: IO[str]) -> None:
    head = [(k, str(data[f])) for k, f in (("Name", "Name"), ("Ref", "Ref"),
                                           ("Context", "Context"), ("Dockerfile", "Dockerfile"),
                                           ("Target", "Target")) if data.get(f)]
    if data.get("Platform"):
        head.append(("Platforms", ", ".join(data["Platform"])))
    head.append(("Frontend", record.frontend or "(LLB)"))
    _pairs(head, out)
    out.write("\n")
    if data.get("NamedContexts"):
        _table([("NAMED CONTEXT", "VALUE")] + [(kv["Name"], kv["Value"])
                                               for kv in data["NamedContexts"]], out, gap=1)
        out.write("\n")
    started = datetime.fromtimestamp(record.created_at, UTC).astimezone()
    times = [("Started", started.strftime("%Y-%m-%d %H:%M:%S")),
             ("Duration", format_duration(record.duration))]
    if record.status == "error" and record.error:
        times.append(("Error", record.error.get("message", "")))
    elif record.status == "canceled":
        times.append(("Status", "Canceled"))
    total = record.num_total_steps
    cached = record.num_cached_steps * 100 / total if total else 0.0
    times.append(("Build Steps", f"{record.num_completed_steps}/{total} ({cached:.0f}% cached)"))
    _pairs(times, out)
    out.write("\n")
    config = data.get("Config") or {}
    shown = [(label, config[key] if not isinstance(config[key], list) else
              ", ".join(config[key])) for key, label in (
        ("Network", "Network"), ("Hostname", "Hostname"), ("ExtraHosts", "Extra Hosts"),
        ("CgroupParent", "Cgroup Parent"), ("ImageResolveMode", "Image Resolve Mode"),
        ("NoCacheFilter", "No Cache Filter"), ("Ulimit", "Resource Limits"),
        ("Memory", "Memory"), ("MemorySwap", "Memory Swap"), ("CPUShares", "CPU Shares"),
        ("CPUPeriod", "CPU Period"), ("CPUQuota", "CPU Quota"), ("CPUSetCPUs", "CPUSet CPUs"),
        ("CPUSetMems", "CPUSet Mems"), ("SourceDateEpoch", "Source Date Epoch"))
        if key in config]
    if config.get("MultiPlatform"):
        shown.append(("Multi-Platform", "true"))
    if config.get("NoCache"):
        shown.append(("No Cache", "true"))
    shown += [(kv["Name"], kv["Value"]) for kv in config.get("RestRaw", ())]
    if shown:
        _pairs([(k, str(v)) for k, v in shown], out)
        out.write("\n")
    for key, title in (("BuildArgs", "BUILD ARG"), ("Labels", "LABEL")):
        if data.get(key):
            _table([(title, "VALUE")] + [(kv["Name"], kv["Value"]) for kv in data[key]],
                   out, gap=1)
            out.write("\n")
    if data.get("Outputs"):
        rows = [("OUTPUT", "NAME", "DIGEST")]
        for o in data["Outputs"]:
            response = o["Response"]
            rows.append((o["Type"], response.get("image.name", o["Attrs"].get("name", "")),
                         response.get("containerimage.digest", "")))
        _table(rows, out, gap=1)
        out.write("\n")
    if data.get("Materials"):
        out.write("Materials:\n")
        _table([("URI", "DIGEST")] + [(m["URI"], ", ".join(m["Digests"]))
                                      for m in data["Materials"]], out, gap=1)
        out.write("\n")
    error = data.get("Error")
    if error and record.status == "error":
        if error.get("Sources"):
            out.write(base64.b64decode(error["Sources"]).decode())
        if error.get("Logs"):
            out.write("Logs:\n")
            out.write(f"> => {error.get('Name', '')}:\n")
            for line in error["Logs"]:
                out.write(f"> {line}\n")
            out.write("\n")
    out.write(f"Print build logs: pybk history logs {record.ref}\n")


# -- logs, rm, export ----------------------------------------------------------------------


def _logs(store: HistoryStore, ns: argparse.Namespace, out: IO[str]) -> int:
    from pybk.core.history.recorder import replay

    if ns.progress not in ("plain", "rawjson"):
        raise UsageError(f"unknown progress mode {ns.progress!r} (plain or rawjson)",
                         flag="--progress")
    _, details = store.load(store.resolve(ns.ref))
    if ns.progress == "rawjson":
        from pybk.core.progress.ui import RawJSONRenderer

        renderer: Any = RawJSONRenderer(out)
    else:
        from pybk.core.progress.ui import PlainRenderer

        renderer = PlainRenderer(out)
    for update in replay(details):
        renderer(update)
    renderer.close()
    return 0


def _rm(store: HistoryStore, ns: argparse.Namespace, out: IO[str]) -> int:
    if ns.all and ns.refs:
        raise UsageError("pybk history rm: give refs or --all, not both")
    if not ns.all and not ns.refs:
        raise UsageError("pybk history rm: give at least one ref, or --all")
    refs = ([r.ref for r in store.records()] if ns.all
            else [store.resolve(spec) for spec in ns.refs])  # every ref checked first
    store.remove(refs)
    return 0


def export_document(record: BuildRecord, details: Mapping[str, Any]) -> dict[str, Any]:
    """What ``pybk history export`` writes: the record's summary and details, one JSON
    document (``"pybk.history.v1"``)."""
    from pybk.core.model import asdict

    return {"mediaType": "application/vnd.pybk.history.v1+json", "record": asdict(record),
            "steps": details.get("steps", []), "warnings": details.get("warnings", []),
            "provenance": details.get("provenance", [])}


def _trace(store: HistoryStore, ns: argparse.Namespace, out: IO[str]) -> int:
    from pybk.core.history.trace import trace_events

    record, details = store.load(store.resolve(ns.ref))
    return _write_out(ns, json.dumps(trace_events(record, details)).encode() + b"\n", out)


def _export(store: HistoryStore, ns: argparse.Namespace, out: IO[str]) -> int:
    record, details = store.load(store.resolve(ns.ref))
    data = (json.dumps(export_document(record, details), indent=2) + "\n").encode()
    return _write_out(ns, data, out)


def _write_out(ns: argparse.Namespace, data: bytes, out: IO[str]) -> int:
    """``data`` into ``-o FILE`` (mode 0600) or stdout (``-``)."""
    if ns.output == "-":
        out.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    path = os.path.abspath(ns.output)
    if os.path.isdir(path):
        raise UsageError(f"{ns.output} is a directory", flag="--output")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
    except OSError as exc:
        raise UsageError(f"cannot write {ns.output}: {exc.strerror or exc}",
                         flag="--output") from None
    return 0
