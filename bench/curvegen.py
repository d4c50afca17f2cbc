"""The generated inputs of the scaling curves (``bench/curves``): contexts of N small files,
Dockerfiles of N steps, and the distinct small builds run at the same time. Pure functions of
their arguments (a fixed seed), so every engine and every repetition builds the same thing.
"""

from __future__ import annotations

import math
import os
import random

#: files per directory in a generated context (then directories of directories)
FILES_PER_DIR = 100
DIRS_PER_DIR = 100
#: size range of a generated small file, bytes
SMALL_FILE_MIN, SMALL_FILE_MAX = 100, 1024
#: steps per stage of the step-count Dockerfile: overlay-based engines refuse more than about
#: 125 layers in one chain ("max depth exceeded"), so longer builds are split into stages
STAGE_STEPS = 100
#: how long the RUN step of one concurrent build sleeps (its work is otherwise tiny)
CONCURRENT_SLEEP = 0.5

FILES_DOCKERFILE = """\
ARG BASE=busybox
FROM ${BASE}
COPY . /ctx
"""


def file_path(i: int) -> str:
    """Where the i-th file of a generated context lives: ``dAA/dBB/fNNNNNN.txt`` — 100 files
    per directory, 100 directories per directory."""
    leaf = i // FILES_PER_DIR
    return os.path.join(f"d{leaf // DIRS_PER_DIR:02d}", f"d{leaf % DIRS_PER_DIR:02d}",
                        f"f{i:06d}.txt")


def files_change_file(count: int) -> str:
    """The file a change build appends to: one in the middle of the context."""
    return file_path(count // 2)


def generate_files(ctx: str, count: int, seed: int = 7) -> int:
    """Write ``count`` files of 100 B to 1 KiB (printable, sizes from a seeded generator)
    under ``ctx``; return the bytes written."""
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789\n"
    chunk = bytes(rng.choice(alphabet) for _ in range(SMALL_FILE_MAX))
    made: set[str] = set()
    total = 0
    for i in range(count):
        path = os.path.join(ctx, file_path(i))
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        size = rng.randint(SMALL_FILE_MIN, SMALL_FILE_MAX)
        head = f"file {i}\n".encode()
        start = rng.randrange(SMALL_FILE_MAX)
        body = (chunk[start:] + chunk[:start])[: size - len(head)]
        with open(path, "wb") as f:
            f.write(head + body)
        total += size
    return total


def stage_split(steps: int, stage_steps: int = STAGE_STEPS) -> list[int]:
    """How many steps each stage gets: full stages of ``stage_steps``, the rest in the last."""
    if steps < 1:
        raise ValueError("at least one step")
    full, rest = divmod(steps, stage_steps)
    return [stage_steps] * full + ([rest] if rest else [])


def step_file(i: int) -> str:
    """The context file the i-th step copies (only even steps are COPY)."""
    return f"files/f{i // 2:04d}.txt"


def steps_change_step(steps: int) -> int:
    """The step a change build hits: the COPY at 80 % of the build, so the steps after it
    in its stage run again and every other stage stays cached."""
    return min(steps - 1, int(steps * 0.8)) // 2 * 2


def steps_change_file(steps: int) -> str:
    return step_file(steps_change_step(steps))


def steps_dockerfile(steps: int, stage_steps: int = STAGE_STEPS) -> str:
    """A Dockerfile of ``steps`` small steps, alternately ``COPY files/fNNNN.txt /steps/`` and
    ``RUN echo N >> /steps/log``, in stages of at most ``stage_steps`` (each ``FROM ${BASE}``
    and ``WORKDIR /steps``); a final stage copies each stage's ``/steps`` in."""
    lines = ["ARG BASE=busybox"]
    step = 0
    sizes = stage_split(steps, stage_steps)
    for number, size in enumerate(sizes):
        lines += [f"FROM ${{BASE}} AS s{number}", "WORKDIR /steps"]
        for _ in range(size):
            if step % 2 == 0:
                lines.append(f"COPY {step_file(step)} /steps/")
            else:
                lines.append(f"RUN echo {step} >> /steps/log")
            step += 1
    lines.append("FROM ${BASE}")
    lines += [f"COPY --from=s{number} /steps /s{number}" for number in range(len(sizes))]
    return "\n".join(lines) + "\n"


def count_steps(dockerfile: str) -> dict[str, int]:
    """What a steps Dockerfile holds: its COPY (from the context) and RUN steps, and stages."""
    lines = dockerfile.splitlines()
    return {"copy": sum(1 for ln in lines if ln.startswith("COPY files/")),
            "run": sum(1 for ln in lines if ln.startswith("RUN ")),
            "stages": sum(1 for ln in lines if ln.startswith("FROM ")) - 1}


def generate_steps(ctx: str, steps: int) -> int:
    """The files the step-count Dockerfile copies; return how many."""
    count = math.ceil(steps / 2)
    os.makedirs(os.path.join(ctx, "files"), exist_ok=True)
    for i in range(count):
        with open(os.path.join(ctx, step_file(2 * i)), "w") as f:
            f.write(f"file {i}\n")
    return count


CONCURRENT_DOCKERFILE = f"""\
ARG BASE=busybox
FROM ${{BASE}}
ARG BUILD_ID
COPY . /ctx
RUN sleep {CONCURRENT_SLEEP} && md5sum /ctx/src/* > /sums && echo "$BUILD_ID" > /build-id
"""
CONCURRENT_FILES = 20


def generate_concurrent(ctx: str, index: int) -> None:
    """The context of the ``index``-th concurrent build: 20 small files naming the build, so
    no two builds share a cache key."""
    os.makedirs(os.path.join(ctx, "src"), exist_ok=True)
    for i in range(CONCURRENT_FILES):
        with open(os.path.join(ctx, "src", f"m{i:02d}.txt"), "w") as f:
            f.write(f"build {index}, file {i}\n" * 4)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(CONCURRENT_DOCKERFILE)
