"""What pybkd's debug endpoint shows, kept in files: the running commands and the counters.

The daemon calls :func:`setup` at start: its state directory is ``ROOT/daemon/PID/``
(``ROOT/daemon`` is private, 0700; ``PID`` the daemon's), holding

- ``owner.json``: the daemon's pid, process start time and start date;
- ``info.json``: its version and its workers' platforms (:func:`describe`);
- ``running/PID.N.json``: one per running command (:func:`command`), written when it starts and
  removed when it ends; an entry whose process is gone (killed with SIGKILL) or whose pid now
  belongs to another process is ignored and removed by :func:`running`;
- ``counters.json``: the daemon's counters (:data:`COUNTERS`), changed only by :func:`add`
  under an ``flock`` of ``counters.lock`` and replaced atomically (a reader never sees half a
  file; a writer killed half way changes nothing);
- ``tasks/PID.txt``: a process's thread stacks and asyncio tasks, written by the process when it
  gets :data:`DUMP_SIGNAL` (:func:`request_dump`).

Every process the daemon forks inherits the directory, so what runs a command (a child for a
unix connection, or another listener's process) records it with :func:`command` and counts the
bytes of remote sessions with :func:`add_bytes`; the gRPC listener answers the control API's
``Load`` from the running records (:func:`load`). Without :func:`setup` (a command run
embedded) all of these do nothing. The daemon removes the directory when it stops;
directories of daemons that died are removed by the next :func:`setup`.

Only the standard library is imported here (the debug endpoint's process reads these files),
and on import only modules every build loads anyway: the solver counts through this module.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: the directory under the store root holding each daemon's state directory
STATE = "daemon"
#: the counters, all starting at 0 when the daemon starts
COUNTERS = ("builds_success", "builds_failure", "build_duration_seconds_sum",
            "build_duration_seconds_count", "cache_hits", "cache_misses",
            "session_bytes_received", "session_bytes_sent")
#: transports a command can come by (``transport`` of :func:`command`)
TRANSPORTS = ("unix", "grpc", "unix-session")
#: the signal asking a process running a command to write ``tasks/PID.txt``
DUMP_SIGNAL = signal.SIGUSR2

_dir: str | None = None
_records = itertools.count(1)
#: this process's running commands: record file name -> record
_mine: dict[str, dict[str, Any]] = {}


def state_dir() -> str | None:
    """This daemon's state directory (None when none is kept)."""
    return _dir


def _now() -> str:
    import datetime

    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


def proc_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/PID/stat``), None when
    there is no such process: with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    try:
        if fields[0] == b"Z":
            return None  # a zombie: finished, not reaped yet
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _write(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    import json

    staging = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(staging, "w") as f:
        json.dump(data, f)
    os.replace(staging, path)


def _read(path: str) -> Any:
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- the daemon ---------------------------------------------------------------------------------


def setup(root: str) -> str:
    """Make this daemon's state directory (``ROOT/daemon/PID``, counters at 0) and use it in
    this process and every process it forks from now on; remove those of daemons that are
    gone. Returns the directory."""
    import shutil

    global _dir
    base = os.path.join(root, STATE)
    os.makedirs(base, mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    for name in os.listdir(base):
        if not name.isdigit():
            continue
        record = _read(os.path.join(base, name, "owner.json"))
        # gone: no such process, or another than the one that wrote owner.json (a live pid
        # without owner.json may be a daemon writing it right now)
        if proc_start(int(name)) is None or (record is not None and not _alive(record)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    path = os.path.join(base, str(os.getpid()))
    shutil.rmtree(path, ignore_errors=True)
    for sub in ("", "running", "tasks"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    _write(os.path.join(path, "counters.json"), dict.fromkeys(COUNTERS, 0))
    _write(os.path.join(path, "owner.json"),
           {"pid": os.getpid(), "proc_start": proc_start(os.getpid()), "root": root,
            "started": _now(), "started_unix": time.time()})
    _dir = path
    return path


def describe(**info: Any) -> None:
    """Write what the daemon says of itself (``version``, ``platforms``) to ``info.json`` of
    this process's state directory (nothing without one)."""
    if _dir is not None:
        with contextlib.suppress(OSError):
            _write(os.path.join(_dir, "info.json"), info)


def owner(directory: str) -> dict[str, Any]:
    """What the daemon of state directory ``directory`` wrote about itself at start: ``pid``,
    ``root``, ``started`` (RFC 3339) and ``started_unix``; empty when it cannot be read."""
    found = _read(os.path.join(directory, "owner.json"))
    return found if isinstance(found, dict) else {}


def attach(directory: str) -> None:
    """Use the state directory of a running daemon (``ROOT/daemon/PID``) in this process: for
    a process the daemon started that did not inherit it (one it started with ``exec``, given
    the directory), so that its :func:`command` and :func:`add_bytes` count there."""
    global _dir
    if not os.path.isfile(os.path.join(directory, "owner.json")):
        raise FileNotFoundError(f"{directory}: not a pybkd state directory")
    _dir = directory


def teardown() -> None:
    """Remove the state directory (the daemon stops)."""
    import shutil

    global _dir
    if _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)
        _dir = None


def _alive(record: Mapping[str, Any] | None) -> bool:
    """Whether the process a record names still runs (the same process, not a reused pid)."""
    if not isinstance(record, Mapping) or not isinstance(record.get("pid"), int):
        return False
    return proc_start(record["pid"]) == record.get("proc_start")


# -- counters -----------------------------------------------------------------------------------


def add(directory: str | None = None, **amounts: float) -> None:
    """Add ``amounts`` (names from :data:`COUNTERS`) to the counters of the daemon whose state
    directory is ``directory`` (default: this process's); nothing without one. Safe from any
    number of processes at once."""
    import fcntl

    directory = directory or _dir
    unknown = set(amounts) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counters: {', '.join(sorted(unknown))}")
    if directory is None or not any(amounts.values()):
        return
    try:
        fd = os.open(os.path.join(directory, "counters.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # the daemon stopped: nobody counts any more
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        counters = read_counters(directory)
        for name, amount in amounts.items():
            counters[name] = counters.get(name, 0) + amount
        _write(os.path.join(directory, "counters.json"), counters)
    except OSError:
        pass
    finally:
        os.close(fd)


def add_bytes(*, received: int = 0, sent: int = 0) -> None:
    """Count bytes moved over a remote session (``pybk_session_bytes_received_total`` and
    ``pybk_session_bytes_sent_total``): what this process received from and sent to a client.
    Callable from any process the daemon forked, any thread; each call is one locked update
    of a small file (tens of microseconds), so call it per message or batch, not per byte.
    Nothing happens outside a daemon with a debug address."""
    if received < 0 or sent < 0:
        raise ValueError("byte counts cannot be negative")
    add(session_bytes_received=received, session_bytes_sent=sent)


def read_counters(directory: str) -> dict[str, float]:
    """The counters of the daemon whose state directory is ``directory``."""
    found = _read(os.path.join(directory, "counters.json"))
    counters = dict.fromkeys(COUNTERS, 0)
    if isinstance(found, dict):
        counters.update({k: v for k, v in found.items() if isinstance(v, int | float)})
    return counters


# -- what this process does ---------------------------------------------------------------------


#: what this process did, counted as it happens whether or not a daemon keeps state;
#: :func:`command` adds a command's share to the daemon's counters
_tally: dict[str, float] = dict.fromkeys(
    ("builds_success", "builds_failure", "build_duration_seconds_sum",
     "build_duration_seconds_count", "cache_hits", "cache_misses"), 0)


def count_build(seconds: float, *, succeeded: bool) -> None:
    """A build ran in this process (called by ``pybk build``'s code), taking ``seconds``."""
    _tally["builds_success" if succeeded else "builds_failure"] += 1
    _tally["build_duration_seconds_sum"] += seconds
    _tally["build_duration_seconds_count"] += 1


def count_vertices(*, cached: int, executed: int) -> None:
    """A solve in this process answered ``cached`` vertices from the cache and ran
    ``executed`` (called by the solver's scheduler when a solve ends, as it failed too)."""
    _tally["cache_hits"] += cached
    _tally["cache_misses"] += executed


# -- running commands ---------------------------------------------------------------------------


@contextlib.contextmanager
def command(argv: Sequence[str], *, client_pid: int | None = None,
            client_uid: int | None = None, transport: str = "unix") -> Iterator[None]:
    """Record a command while it runs in this process (``running/PID.N.json``), and when it
    ends add what it did to the counters: the builds it ran (success or failure, duration:
    :func:`count_build`) and its vertices answered from the cache or run
    (:func:`count_vertices`). ``transport``: how the command came
    (:data:`TRANSPORTS`). Installs the :data:`DUMP_SIGNAL` handler first (see
    :func:`install_dump_handler`). Does nothing without a state directory."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: one of {', '.join(TRANSPORTS)}")
    directory = _dir
    if directory is None:
        yield
        return
    before = dict(_tally)
    name = f"{os.getpid()}.{next(_records)}.json"
    record = {"pid": os.getpid(), "proc_start": proc_start(os.getpid()), "argv": list(argv),
              "client_pid": client_pid, "client_uid": client_uid, "transport": transport,
              "started": _now(), "started_unix": time.time(),
              "dumps": install_dump_handler()}
    path = os.path.join(directory, "running", name)
    with contextlib.suppress(OSError):
        _write(path, record)
    _mine[name] = record
    try:
        yield
    finally:
        add(directory, **{name: _tally[name] - before[name] for name in _tally})
        _mine.pop(name, None)
        with contextlib.suppress(OSError):
            os.unlink(path)


def running(directory: str) -> list[dict[str, Any]]:
    """The commands running in the daemon whose state directory is ``directory``, oldest
    first; records of processes that are gone are removed."""
    folder = os.path.join(directory, "running")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.endswith(".json"):
            continue
        record = _read(os.path.join(folder, name))
        if record is None:
            continue  # being written or removed right now
        if not _alive(record):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
            continue
        found.append(record)
    return sorted(found, key=lambda r: (r.get("started_unix", 0), r["pid"]))


#: global options of ``pybk`` that take a value (the command comes after them)
_VALUED = ("--root", "--config", "--addr")


def is_build(argv: Sequence[Any]) -> bool:
    """Whether a running command's ``argv`` is ``pybk build`` (after the global options)."""
    i = 0
    while i < len(argv):
        arg = str(argv[i])
        if arg in _VALUED:
            i += 2
            continue
        if arg == "--":
            return False
        if not arg.startswith("-"):
            return arg == "build"
        i += 1
    return False


def load(directory: str | None) -> dict[str, Any]:
    """How busy the daemon of state directory ``directory`` is: ``builds`` (running ``pybk
    build`` commands, whatever transport brought them), ``others`` (its other running
    commands), and its ``version`` and ``platforms`` (:func:`describe`); zeros when there is no
    directory."""
    if directory is None:
        return {"builds": 0, "others": 0, "version": "", "platforms": []}
    records = running(directory)
    builds = sum(1 for record in records if is_build(record.get("argv") or ()))
    info = _read(os.path.join(directory, "info.json"))
    info = info if isinstance(info, dict) else {}
    return {"builds": builds, "others": len(records) - builds,
            "version": str(info.get("version", "")), "platforms": list(info.get("platforms", []))}


# -- task dumps ---------------------------------------------------------------------------------


def install_dump_handler() -> bool:
    """Answer :data:`DUMP_SIGNAL` by writing this process's thread stacks and asyncio tasks
    to ``tasks/PID.txt``; whether the handler is installed. Only the main thread can install
    it: a process running commands in other threads calls this first from its main thread
    (the signal is sent only to a process whose records say it has the handler)."""
    if _dir is None:
        return False
    if signal.getsignal(DUMP_SIGNAL) is _on_dump_signal:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(DUMP_SIGNAL, _on_dump_signal)
    return True


def _on_dump_signal(signum: int, frame: Any) -> None:
    if _dir is None:
        return
    path = os.path.join(_dir, "tasks", f"{os.getpid()}.txt")
    staging = f"{path}.tmp"
    try:
        text = dump(frame)
    except Exception as exc:  # say why rather than leave the reader waiting
        text = f"pid {os.getpid()}: cannot dump: {exc!r}\n"
    with contextlib.suppress(OSError):
        with open(staging, "w") as f:
            f.write(text)
        os.replace(staging, path)


def dump(frame: Any = None) -> str:
    """This process's commands, the stack of each of its threads (the main thread's from
    ``frame`` when given: where a signal interrupted it) and of each unfinished asyncio task."""
    import asyncio
    import gc
    import traceback

    out = io.StringIO()
    for record in list(_mine.values()):
        out.write(f"pid {os.getpid()}: pybk {' '.join(record['argv'])} (client pid "
                  f"{record['client_pid']}, {record['transport']}, since {record['started']})\n")
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    for ident, top in sys._current_frames().items():
        if ident == main and frame is not None:
            top = frame
        out.write(f"\nthread {names.get(ident, '?')} ({ident}):\n")
        out.write("".join(traceback.format_stack(top)))
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    out.write(f"\nasyncio tasks: {len(tasks)}\n")
    for task in tasks:
        out.write("\n")
        task.print_stack(file=out)
    return out.getvalue()


def request_dump(directory: str, record: Mapping[str, Any], timeout: float = 3.0) -> str | None:
    """Ask the process of a running command's ``record`` for its dump (:func:`dump`) and
    return it; None when the process is gone or did not answer within ``timeout``."""
    pid = record["pid"]
    path = os.path.join(directory, "tasks", f"{pid}.txt")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if not record.get("dumps") or not _alive(record):
        return None
    try:
        os.kill(pid, DUMP_SIGNAL)
    except OSError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            time.sleep(0.02)
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
        return text
    return None
