"""One RUN step fetching 20 small files over HTTP from a server the harness runs.

Each engine's step reaches this machine through its own default network (pybk: the bridge
gateway 10.10.0.1; BuildKit in dockerd: the docker0 gateway) with busybox ``wget``, then checks
the files against ``SHA256SUMS`` from the context. ``RERUN``: every build passes a new
``RUN_ID``, so the step runs in warm and change builds too (the FROM and COPY stay cached).
"""

DESCRIPTION = ("one RUN fetching 20 x 4 KiB files with wget from a local HTTP server over the "
               "engine's default network (re-run on every build)")
CHANGE_FILE = "app.txt"
NETWORK = True
RERUN = True
FILES = 20
FILE_BYTES = 4096


def _files() -> dict[str, bytes]:
    import random

    rng = random.Random(20)
    return {f"file{i:02d}.bin": rng.randbytes(FILE_BYTES) for i in range(1, FILES + 1)}


def serve(directory: str) -> int:
    """Write the files the step fetches into ``directory``; return how many one build fetches."""
    import os

    for name, data in _files().items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return FILES


def generate(ctx: str) -> None:
    import hashlib
    import os

    with open(os.path.join(ctx, "SHA256SUMS"), "w") as f:
        f.writelines(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                     for name, data in _files().items())
    with open(os.path.join(ctx, "app.txt"), "w") as f:
        f.write("app\n")
