"""200 small steps: 100 COPY of one file, each followed by a RUN, in two stages of 100.

Two stages because overlay-based engines refuse images deeper than about 125 layers
("max depth exceeded"); the final stage copies one file from each.
"""

DESCRIPTION = ("200 small steps (100 COPY + 100 RUN) in two 100-step stages; the change "
               "hits step 81 of the second stage")
CHANGE_FILE = "files/f090.txt"


def generate(ctx: str) -> None:
    import os

    os.makedirs(os.path.join(ctx, "files"), exist_ok=True)
    for i in range(100):
        with open(os.path.join(ctx, "files", f"f{i:03d}.txt"), "w") as f:
            f.write(f"file {i}\n")
