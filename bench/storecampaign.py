"""What bench/crashes.py and bench/concurrency.py share: a scratch area with the busybox base
image and a test config, running ``pybk`` (embedded, or through a ``pybkd``), and the checks of
a store at rest (nothing mounted under it, no runc container, ``pybk debug fsck`` clean)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = [sys.executable, "-m", "pybk.core.cli.commands"]
CLIENT = [sys.executable, "-c",
          "import sys; from pybk.core.cli.entry import main; sys.exit(main())"]
#: no automatic GC (it would prune between rounds) and no network for RUN steps
CONFIG = '[worker.oci]\ngc = false\nnetworkMode = "none"\n'


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYBK_HOST", "PYBK_ROOT")}


def busybox_layout(outdir: Path) -> Path:
    """The busybox OCI layout of examples/busybox_layout.py (made once)."""
    if not (outdir / "index.json").exists():
        spec = importlib.util.spec_from_file_location(
            "busybox_layout_example", REPO / "examples" / "busybox_layout.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        module.build_layout(str(outdir))
    return outdir


def write_config(work: Path) -> Path:
    path = work / "buildkitd.toml"
    path.write_text(CONFIG)
    return path


def embedded(root: Path, config: Path, *args: str) -> list[str]:
    return [*EMBEDDED, "--root", str(root), "--config", str(config), *args]


class Daemon:
    """``python -m pybk.core.cli.daemon --root ROOT --addr unix://SOCK``."""

    def __init__(self, root: Path, config: Path, sock: Path, log: Path):
        self.root, self.sock, self.addr = root, sock, f"unix://{sock}"
        sock.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pybk.core.cli.daemon", "--root", str(root), "--config",
             str(config), "--addr", self.addr], stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env())
        deadline = time.monotonic() + 120
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pybkd did not start (see {log})")
            time.sleep(0.05)
        time.sleep(0.2)

    def command(self, *args: str) -> list[str]:
        return [*CLIENT, "--addr", self.addr, *args]

    def children(self) -> set[int]:
        with contextlib.suppress(OSError):
            path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
            return {int(pid) for pid in Path(path).read_text().split()}
        return set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def mounts_under(root: Path) -> list[str]:
    from pybk.core.store.mounts import find_mounts_under

    netns = str(root / "executor" / "net" / "ns") + "/"
    return [p for p in find_mounts_under(str(root)) if not p.startswith(netns)]


def runc_containers(root: Path) -> list[str]:
    state = root / "executor" / "runc"
    if not state.is_dir():
        return []
    r = subprocess.run(["runc", "--root", str(state), "list", "-q"], capture_output=True,
                       text=True, check=False)
    return r.stdout.split()


def fsck(root: Path, config: Path, *args: str) -> tuple[int, str]:
    """``pybk debug fsck --wait ARGS`` (embedded); (exit code, output)."""
    r = subprocess.run(embedded(root, config, "debug", "fsck", "--wait", *args),
                       capture_output=True, text=True, env=env(), timeout=600)
    return r.returncode, r.stdout + r.stderr


def problems(output: str) -> list[str]:
    """The ``fsck: KIND: WHAT`` lines of fsck's output (not the summary, not the repairs)."""
    return [line for line in output.splitlines()
            if line.startswith("fsck: ") and line.count(": ") >= 2
            and not line.startswith(("fsck: repaired", "fsck: after"))]


def at_rest(root: Path, config: Path) -> list[str]:
    """What is wrong with a store nothing uses: mounts, runc containers, fsck's problems."""
    wrong = [f"mounted: {p}" for p in mounts_under(root)]
    wrong += [f"runc container: {c}" for c in runc_containers(root)]
    code, out = fsck(root, config)
    if code != 0:
        wrong += problems(out) or [f"fsck exit {code}: {out.strip()[-300:]}"]
    return wrong


def tree(directory: Path) -> dict[str, tuple]:
    """{relative path: (kind, mode, content or link target)} of an exported directory."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, directory)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", st.st_mode & 0o7777, f.read())
    return out


def print_table(rows: list[list[str]], header: list[str]) -> None:
    table = [header, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
