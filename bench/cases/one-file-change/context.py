"""A slow dependency step that must stay cached when one application file changes."""

DESCRIPTION = "2-s dependency step that must stay cached; 50 app files, one changes"
CHANGE_FILE = "app/file25.txt"


def generate(ctx: str) -> None:
    import os

    os.makedirs(os.path.join(ctx, "app"), exist_ok=True)
    with open(os.path.join(ctx, "deps.txt"), "w") as f:
        f.write("dependency-a==1.0\ndependency-b==2.0\n")
    for i in range(50):
        with open(os.path.join(ctx, "app", f"file{i}.txt"), "w") as f:
            f.write(f"line of file {i}\n" * 10)
