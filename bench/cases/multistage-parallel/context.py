"""Three independent 1-second stages copied into a final stage."""

DESCRIPTION = "three independent 1-s stages copied into the final stage"
CHANGE_FILE = "app.txt"


def generate(ctx: str) -> None:
    import os

    with open(os.path.join(ctx, "app.txt"), "w") as f:
        f.write("app\n")
