"""A large build context: 2,000 small files and three 10 MiB files."""

DESCRIPTION = "context of 2,000 small files + 3 x 10 MiB (random) copied in, then a RUN"
CHANGE_FILE = "small/d00/f0150.txt"


def generate(ctx: str) -> None:
    import os
    import random

    rng = random.Random(7)
    for i in range(2000):
        folder = os.path.join(ctx, "small", f"d{i // 200:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{i:04d}.txt"), "w") as f:
            f.write(f"small file {i}\n" * 8)
    os.makedirs(os.path.join(ctx, "big"), exist_ok=True)
    for i in range(3):
        with open(os.path.join(ctx, "big", f"blob{i}.bin"), "wb") as f:
            f.write(rng.randbytes(10 * 1024 * 1024))
