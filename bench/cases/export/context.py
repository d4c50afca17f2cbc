"""Export a 200 MB image as an OCI tarball with gzip or zstd layers."""

DESCRIPTION = ("build a 200 MB image (one random 200 MiB layer) and export it as an OCI "
               "tarball; warm/change show how much of the compression is reused")
CHANGE_FILE = "app.txt"
EXPORTS = ("gzip", "zstd")


def generate(ctx: str) -> None:
    import os

    with open(os.path.join(ctx, "app.txt"), "w") as f:
        f.write("app\n")
