"""Dockerfile parser benchmark: a generated 1,000-instruction Dockerfile.

Prints the median of N cold parses (fresh interpreter: imports, grammar build, first parse)
and of N warm parses (parser already built), for the AST parse and the typed parse.

    python bench/bench_parser.py [-n N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TEMPLATES = [
    "FROM --platform=$BUILDPLATFORM golang:1.22 AS build{i}",
    "ARG VERSION{i}=1.{i}",
    'ENV PATH=/usr/local/bin:$PATH GOFLAGS="-mod=vendor -trimpath" N{i}={i}',
    "RUN --mount=type=cache,target=/root/.cache/go-build{i} --mount=type=bind,source=.,target=/src \\\n    go build -o /out/app{i} ./cmd/app{i}",
    "COPY --from=build{i} --chmod=755 --link /out/app{i} /usr/local/bin/",
    'LABEL org.opencontainers.image.title="app {i}" version=$VERSION{i}',
    "WORKDIR /srv/app{i}",
    "RUN <<EOF\nset -e\necho step {i}\napk add --no-cache curl\nEOF",
    "EXPOSE 80{i}/tcp",
    'HEALTHCHECK --interval=30s --timeout=3s CMD ["curl", "-f", "http://localhost/{i}"]',
]


def generate(count: int = 1000) -> bytes:
    lines = []
    for i in range(count):
        lines.append(TEMPLATES[i % len(TEMPLATES)].format(i=i))
    return ("\n".join(lines) + "\n").encode()


_COLD = """
import sys, time
data = sys.stdin.buffer.read()
start = time.perf_counter()
from pybk.frontends.dockerfile.instructions import parse_dockerfile
parse_dockerfile(data)
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7, help="repetitions (default 7)")
    options = parser.parse_args()
    data = generate()

    cold = []
    for _ in range(options.n):
        out = subprocess.run(
            [sys.executable, "-c", _COLD], input=data, capture_output=True, check=True
        )
        cold.append(float(out.stdout))

    from pybk.frontends.dockerfile.instructions import parse_dockerfile
    from pybk.frontends.dockerfile.parser import parse

    parse_dockerfile(data)
    warm_ast, warm_typed = [], []
    for _ in range(options.n):
        start = time.perf_counter()
        parse(data)
        warm_ast.append(time.perf_counter() - start)
        start = time.perf_counter()
        parse_dockerfile(data)
        warm_typed.append(time.perf_counter() - start)

    print(f"1000 instructions, {len(data)} bytes, median of {options.n}:")
    print(
        f"  cold (import + grammar build + typed parse): {statistics.median(cold) * 1000:8.1f} ms"
    )
    print(
        f"  warm AST parse:                              {statistics.median(warm_ast) * 1000:8.1f} ms"
    )
    print(
        f"  warm typed parse (parse_dockerfile):         {statistics.median(warm_typed) * 1000:8.1f} ms"
    )


if __name__ == "__main__":
    main()
