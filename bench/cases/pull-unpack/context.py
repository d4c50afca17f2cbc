"""Pull and unpack a 200 MB base image (4 layers of random data) from the local registry."""

DESCRIPTION = "pull + unpack a 200 MB, 5-layer base image (4 x 50 MB random), then COPY + RUN"
CHANGE_FILE = "app.txt"
BASE = "bigbase"


def generate(ctx: str) -> None:
    import os

    with open(os.path.join(ctx, "app.txt"), "w") as f:
        f.write("app\n")
