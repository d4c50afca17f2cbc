"""A 5-second stage the target does not need."""

DESCRIPTION = "a 5-s stage the (last) target does not depend on"
CHANGE_FILE = "app.txt"


def generate(ctx: str) -> None:
    import os

    with open(os.path.join(ctx, "app.txt"), "w") as f:
        f.write("app\n")
