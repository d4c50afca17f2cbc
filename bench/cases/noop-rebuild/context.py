"""A typical application Dockerfile: dependencies first, then the sources."""

DESCRIPTION = ("typical app: FROM, WORKDIR, COPY requirements, a 1-s dependency step, "
               "COPY app, RUN build")
CHANGE_FILE = "src/app.py"


def generate(ctx: str) -> None:
    import os

    os.makedirs(os.path.join(ctx, "src"), exist_ok=True)
    with open(os.path.join(ctx, "requirements.txt"), "w") as f:
        f.writelines(f"package{i:02d}\n" for i in range(20))
    for i in range(10):
        with open(os.path.join(ctx, "src", f"module{i}.py"), "w") as f:
            f.write(f"VALUE = {i}\n" * 20)
    with open(os.path.join(ctx, "src", "app.py"), "w") as f:
        f.write("print('hello')\n")
    with open(os.path.join(ctx, "build.sh"), "w") as f:
        f.write("set -e\nfind src -type f | sort > /app/manifest.txt\n")
