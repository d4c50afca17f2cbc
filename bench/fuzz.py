"""Property fuzzing of pybk's input parsers with hypothesis.

Each target takes near-valid inputs (grammar-aware mutations of valid examples: the BuildKit
parser conformance Dockerfiles, examples/, the config test data …) and checks one property:
the input is accepted, or rejected with one of pybk's own errors (a ``PybkError``), never any
other exception. For Dockerfiles, YAML pipelines and buildkitd.toml an error must also say where
(``file:line``).

    python bench/fuzz.py [--examples N] [--seed S] [--target NAME ...]

prints, per target, the examples run, the seconds taken and the distinct crashes found (each
with its input and traceback). tests/fuzz/ runs a small seeded subset of the same targets.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = Path(os.environ.get("PYBK_CONFORMANCE",
                                  "/work/shared/conformance/buildkit-dockerfile"))

# -- seeds -------------------------------------------------------------------------------------

_DOCKERFILE_BUILTIN = [
    b"FROM scratch\nCOPY . /\n",
    b"# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM $BASE AS build\nWORKDIR /src\n"
    b"RUN --mount=type=cache,target=/cache --mount=type=secret,id=tok,env=TOK echo hi\n"
    b"COPY --chmod=755 --link a.sh /usr/bin/\nFROM scratch\nCOPY --from=build /src /\n"
    b'ENTRYPOINT ["/bin/sh", "-c"]\nCMD echo hi\n',
    b"FROM busybox\nRUN <<EOF\nset -e\necho one\nEOF\nCOPY <<-EOT /x\n\thello\nEOT\n",
    b'FROM busybox\nENV A=1 B="two words" C=${A:-x}\nLABEL a=b "c d"=e\nEXPOSE 80/tcp 53/udp\n'
    b"USER 1000:1000\nVOLUME /data\nSTOPSIGNAL SIGTERM\n"
    b"HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD true\nSHELL [\"/bin/sh\", \"-c\"]\n"
    b"ONBUILD RUN echo later\nADD --checksum=sha256:" + b"0" * 64 + b" https://example.com/a /a\n"
    b"ADD https://github.com/moby/buildkit.git#v0.10.1 /bk\n",
    b"# escape=`\nFROM busybox\nRUN echo `\n  hello\n",
    b"FROM --platform=$BUILDPLATFORM busybox AS b\nARG TARGETARCH\n"
    b"RUN --network=none --security=sandbox echo $TARGETARCH\n"
    b"FROM b\nCOPY --from=b --parents --exclude=*.tmp a/*/b /d/\n",
]


def dockerfile_seeds() -> list[bytes]:
    out = list(_DOCKERFILE_BUILTIN)
    for path in sorted(CONFORMANCE.glob("**/Dockerfile")):
        out.append(path.read_bytes())
    for path in sorted((ROOT / "examples").glob("**/Dockerfile")):
        out.append(path.read_bytes())
    return out


_YAML_BUILTIN = [
    b"version: 1\nstages:\n  a:\n    from: scratch\n    steps:\n      - copy: {src: ., dest: /}\n",
    b"version: 1\ntarget: b\nargs: {V: '1'}\nstages:\n  a:\n    from: busybox\n    env: {A: b}\n"
    b"    steps:\n      - run: echo $V\n      - run:\n          command: [sh, -c, 'true']\n"
    b"          mounts:\n            - {type: secret, id: tok, target: /t}\n  b:\n    from: a\n"
    b"    workdir: /w\n    user: '1'\n    cmd: [x]\n    entrypoint: [y]\n"
    b"    labels: {l: v}\n    expose: ['80']\n"
    b"    steps:\n      - add: {src: https://example.com/x, dest: /x}\n",
    b"version: 1\nx-base: &base\n  from: busybox\nstages:\n  a:\n    <<: *base\n    steps: []\n",
]


def yaml_seeds() -> list[bytes]:
    out = list(_YAML_BUILTIN)
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        out.append(path.read_bytes())
    return out


def toml_seeds() -> list[bytes]:
    out = [b'debug = true\n[worker.oci]\nenabled = true\nmax-parallelism = 4\n'
           b'[[worker.oci.gcpolicy]]\nkeepDuration = "48h"\nkeepBytes = "10GB"\n'
           b'[registry."docker.io"]\nmirrors = ["mirror.gcr.io"]\n']
    for sub in ("data", "broken"):
        out += [p.read_bytes() for p in sorted((ROOT / "tests/config" / sub).glob("*.toml"))]
    return out


PATTERN_SEEDS = [
    b"*.tmp\n!keep.tmp\n# comment\n**/node_modules\n",
    b"/abs/path\n../up\n./dot\n[a-z]*.go\n\\!literal\na/**/b\n",
    b"dir/\n?x\n*\n!dir/keep\n**\n[!a]b\n[\\]]\n",
]

CSV_SEEDS = {
    "output": ["type=local,dest=out", "type=tar,dest=-", "-", "dir",
               "type=image,name=localhost:5000/x,push=true", "type=registry,name=r/x",
               '"type=oci","dest=a,b"', "type=docker,dest=o.tar,name=x:1"],
    "cache": ["type=local,dest=cache,mode=max", "type=registry,ref=r/x:cache",
              "type=inline", "r/x:cache", "type=gha,ignore-error=true,scope=a"],
    "secret": ["id=tok,src=/etc/hostname", "id=tok,env=HOME", "id=HOME",
               "id=x,type=env,source=PATH", "id=x,required=true,src=/etc/passwd"],
    "build_context": ["base=oci-layout:///tmp/x:tag", "b=docker-image://busybox:1",
                      "c=target:build", "d=.", "e=https://example.com/x.git#main",
                      "f=https://example.com/x.tar", "g=git@github.com:a/b.git"],
    "ssh": ["default", "default=/etc/hostname", "a=/etc/hostname,/etc/passwd", "x.y-z=/tmp"],
}


# -- mutations ---------------------------------------------------------------------------------

DOCKERFILE_TOKENS = [
    "FROM ", "RUN ", "COPY ", "ADD ", "ENV ", "ARG ", "LABEL ", "ONBUILD ", "HEALTHCHECK ",
    "CMD ", "ENTRYPOINT ", "SHELL ", "WORKDIR ", "USER ", "EXPOSE ", "VOLUME ", "STOPSIGNAL ",
    "MAINTAINER ", " AS ", "--mount=", "type=cache", "type=secret", "type=bind", "type=ssh",
    "type=tmpfs", ",target=", ",from=", ",id=", ",mode=", ",uid=", ",size=", "--from=",
    "--chmod=", "--chown=", "--link", "--parents", "--exclude=", "--platform=", "--network=",
    "--security=", "--checksum=", "--keep-git-dir", "--interval=", "--retries=", "--start-period=",
    "\\\n", "\\", "`", "<<EOF", "<<-EOF", "<<'EOF'", "EOF", "\nEOF\n", "${", "}", "$", "${A:-", "${A:+",
    "${A#", "${A%%", "${A/", "'", '"', "[", "]", "[\"", "\", \"", "=", ",", " ", "\t", "\n", "\r\n",
    "#", "# syntax=", "# escape=", "# check=", "\x00", "\xff", "é", "\u2028", "0", "-1",
    "99999999999999999999", "1e3", "/", "..", "*", "?", "**", "scratch", "busybox",
    "alpine:3.19@sha256:" + "a" * 64, "none", "host", "0755", "0o777", "root:root", "$BUILDPLATFORM",
    "stage-0", "0", "1", "SIGKILL", "30s", "1h2m", "http://", "https://", "git@", ".git#",
]
YAML_TOKENS = [
    ":", ": ", "- ", "  ", "\n", "{", "}", "[", "]", ",", "&a", "*a", "<<: ", "!!str ", "!!int ",
    "!!binary ", "!tag ", "---\n", "...\n", "|", ">", "'", '"', "#", "~", "null", "true", "yes",
    "1", "-1", "1.5", "0x10", "version", "stages", "steps", "from", "run", "copy", "add", "src",
    "dest", "mounts", "type", "target", "args", "env", "cmd", "entrypoint", "workdir", "user",
    "labels", "expose", "healthcheck", "platform", "network", "security", "command", "chmod",
    "chown", "link", "secret", "cache", "bind", "tmpfs", "ssh", "\t", "\x00", "é", "\ufeff",
    "${A}", "$", "scratch", "busybox", "x-", "? ", "%YAML 1.2\n", "%TAG ! x\n",
]
TOML_TOKENS = [
    "=", " = ", "[", "]", "[[", "]]", "{", "}", ",", ".", '"', "'", '"""', "'''", "\n", "#",
    "true", "false", "0", "-1", "1.5", "inf", "nan", "1979-05-27T07:32:00Z", "0x1F", "1_000",
    "worker", "oci", "containerd", "gcpolicy", "keepDuration", "keepBytes", "maxUsedSpace",
    "reservedSpace", "minFreeSpace", "filters", "all", "registry", "mirrors", "http", "insecure",
    "ca", "keypair", "grpc", "address", "debug", "root", "entitlements", "dns", "nameservers",
    "log", "format", "max-parallelism", "platforms", "history", "maxAge", "maxEntries", "cache",
    "gha", "sign", "command", "verify", "pybk", "48h", "10GB", "50%", "-5", "é", "\x00", "\\u0000",
    "\\", "unix:///x", "tcp://0.0.0.0:1", "snapshotter", "rootless", "noProcessSandbox", "frontend",
]
PATTERN_TOKENS = ["*", "**", "?", "[", "]", "[!", "[^", "-", "\\", "!", "/", "..", ".", "#", "\n",
                  " ", "\t", "{", "}", "a", "é", "\x00", "\r"]
CSV_TOKENS = [",", "=", '"', "'", "\\", " ", "type=", "dest=", "src=", "id=", "env=", "ref=",
              "mode=", "name=", "push=", "ignore-error=", "source=", "required=", "://",
              "oci-layout://", "docker-image://", "target:", "git://", "http://", ":", "@",
              "sha256:", "-", "", "\n", "\x00", "é", "true", "false", "max", "min", "local", "tar",
              "oci", "docker", "image", "registry", "inline", "gha", "s3", "azblob", "file"]


@st.composite
def mutated(draw, seeds: list[bytes], tokens: list[str], max_mutations: int = 6) -> bytes:
    """A seed with up to ``max_mutations`` grammar-aware edits: insert a token, delete, duplicate
    or swap lines, splice in a line of another seed, truncate, flip a byte."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_mutations))):
        kind = draw(st.integers(0, 8))
        pos = draw(st.integers(0, len(data)))
        if kind <= 2:
            tok = draw(st.sampled_from(tokens)).encode("utf-8", "surrogatepass")
            data[pos:pos] = tok
        elif kind == 3 and data:
            end = min(len(data), pos + draw(st.integers(1, 12)))
            del data[pos:end]
        elif kind == 4:
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if draw(st.booleans()):
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif kind == 5:
            other = draw(st.sampled_from(seeds)).split(b"\n")
            line = other[draw(st.integers(0, len(other) - 1))]
            data[pos:pos] = line + b"\n"
        elif kind == 6:
            data = data[:pos]
        elif kind == 7 and data:
            p = min(pos, len(data) - 1)
            data[p] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.text(max_size=8)).encode("utf-8", "surrogatepass")
    return bytes(data)


# -- targets -----------------------------------------------------------------------------------


class LocationMissing(AssertionError):
    """A parse error that does not say file:line."""


def _expect_location(exc: BaseException, filename: str, *, whole_file_ok: tuple[str, ...] = ()
                     ) -> None:
    text = str(exc)
    if re.search(re.escape(filename) + r":\d+", text):
        return
    if any(phrase in text for phrase in whole_file_ok) and filename in text:
        return
    raise LocationMissing(f"error without {filename}:LINE: {text!r}")


def run_dockerfile(data: bytes) -> None:
    from pybk.core.errors import PybkError
    from pybk.frontends.dockerfile.checks import run_checks
    from pybk.frontends.dockerfile.convert import dockerfile_to_llb, outline, targets
    from pybk.frontends.dockerfile.dump import dump_ast

    try:
        result = dockerfile_to_llb(data, filename="Dockerfile", build_args={"A": "1"})
        definition = result.state.marshal()
        if definition.ops:  # FROM scratch alone is an empty definition (an empty result)
            definition.load()
    except PybkError as exc:
        _expect_location(exc, "Dockerfile", whole_file_ok=(
            "no FROM instruction", "file is empty", "could not be found", "not UTF-8",
            "circular dependency", "more than one"))
    for call in (lambda: outline(data, filename="Dockerfile", build_args={"A": "1"}),
                 lambda: targets(data, filename="Dockerfile"), lambda: dump_ast(data)):
        try:
            call()
        except PybkError as exc:
            _expect_location(exc, "Dockerfile", whole_file_ok=(
                "no FROM instruction", "file is empty", "could not be found", "not UTF-8",
                "circular dependency", "more than one"))
    try:
        run_checks(data, "Dockerfile", {}, None, [])
    except PybkError as exc:
        _expect_location(exc, "Dockerfile", whole_file_ok=(
            "no FROM instruction", "file is empty", "could not be found", "not UTF-8",
            "circular dependency", "more than one"))


def run_yaml(data: bytes) -> None:
    from pybk.core.errors import PybkError
    from pybk.frontends.yaml.convert import yaml_to_llb
    from pybk.frontends.yaml.frontend import outline_text, targets_text
    from pybk.frontends.yaml.pipeline import load_pipeline

    try:  # --call targets / outline
        loaded = load_pipeline(data, "pipeline.yaml")
        targets_text(loaded)
        outline_text(loaded, None, {"V": "2"})
    except PybkError as exc:
        _expect_location(exc, "pipeline.yaml", whole_file_ok=("not UTF-8", "empty", "cycle"))
    try:
        result = yaml_to_llb(data, filename="pipeline.yaml")
        definition = result.state.marshal()
        if definition.ops:
            definition.load()
    except PybkError as exc:
        _expect_location(exc, "pipeline.yaml", whole_file_ok=("not UTF-8", "empty", "cycle"))


def run_toml(data: bytes) -> None:
    from pybk.core.config.loader import load_config
    from pybk.core.errors import PybkError

    with tempfile.NamedTemporaryFile(suffix=".toml", prefix="buildkitd-", delete=False) as f:
        f.write(data)
        name = f.name
    try:
        load_config(name)
    except PybkError as exc:
        base = os.path.basename(name)
        # every listed problem names the file; a value problem whose key is not in the text
        # (a default) may lack the line
        if base not in str(exc):
            raise LocationMissing(f"config error without the file name: {exc}") from None
        if "invalid TOML" in str(exc) and not re.search(re.escape(base) + r":\d+", str(exc)):
            raise LocationMissing(f"TOML syntax error without a line: {exc}") from None
    finally:
        os.unlink(name)


def run_patterns(data: bytes) -> None:
    from pybk.core.errors import PybkError
    from pybk.core.fs.pathfilter import PathFilter
    from pybk.frontends.dockerfile.dockerignore import read_patterns

    try:
        patterns = read_patterns(data)
        flt = PathFilter(exclude_patterns=patterns)
        for path in ("a", "a/b", "node_modules/x", "keep.tmp", "x.tmp", "dir/keep", ".", "é/ü",
                     "[a]", "a\\b"):
            flt.exclude.matches(path) if flt.exclude is not None else None
            flt.exclude.can_skip_dir(path) if flt.exclude is not None else None
    except PybkError:
        pass


def _csv_runner(name: str) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        from pybk.core.cli import buildopts
        from pybk.core.errors import PybkError

        value = data.decode("utf-8", "replace")
        try:
            if name == "output":
                buildopts.parse_output(value, ["local", "tar", "oci", "docker", "image"])
            elif name == "cache":
                buildopts.parse_cache(value, flag="--cache-to",
                                      known_types=["local", "registry", "inline", "gha"])
                buildopts.parse_cache(value, flag="--cache-from")
            elif name == "secret":
                buildopts.parse_secret(value)
            elif name == "build_context":
                buildopts.parse_build_context(value)
            elif name == "ssh":
                buildopts.parse_ssh(value)
        except PybkError:
            pass
    return run


def run_csv(data: bytes) -> None:
    kind, _, value = data.partition(b"\x01")
    _csv_runner(kind.decode())(value)


def llb_seeds() -> list[bytes]:
    from pybk.frontends.dockerfile.convert import dockerfile_to_llb

    out = []
    for data in _DOCKERFILE_BUILTIN + [(ROOT / "examples/Dockerfile").read_bytes()]:
        with contextlib.suppress(Exception):  # a seed that does not convert is skipped
            out.append(dockerfile_to_llb(data).state.marshal().to_bytes())
    return out


def _mutate_json(value, draw):
    """Structure-aware: replace, drop or retype one node of a decoded JSON document."""
    replacements = [None, True, 0, -1, 2**64, 1.5, "", "x", "sha256:" + "0" * 64, [], {}, [1],
                    {"a": 1}, "\x00", "é" * 3]
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            value = dict(value)
            del value[key]
            return value
        return {**value, key: _mutate_json(value[key], draw)}
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(value) - 1))
        out = list(value)
        if draw(st.integers(0, 4)) == 0:
            del out[i]
        else:
            out[i] = _mutate_json(out[i], draw)
        return out
    if isinstance(value, str) and value[:1] in "{[" and draw(st.booleans()):
        try:
            inner = json.loads(value)
        except ValueError:
            pass
        else:
            return json.dumps(_mutate_json(inner, draw))
    return draw(st.sampled_from(replacements))


@st.composite
def llb_inputs(draw, seeds: list[bytes]) -> bytes:
    base = draw(st.sampled_from(seeds))
    if draw(st.integers(0, 3)) == 0:
        return draw(mutated([base], ["{", "}", "[", "]", '"', ",", ":", "null", "0", "\\u0000",
                                     "sha256:", "\\"]))
    doc = json.loads(base)
    for _ in range(draw(st.integers(1, 4))):
        doc = _mutate_json(doc, draw)
    # ops are JSON inside JSON: also mutate one op's decoded body
    if isinstance(doc, dict) and isinstance(doc.get("def"), list) and doc["def"] and \
            draw(st.booleans()):
        i = draw(st.integers(0, len(doc["def"]) - 1))
        op = doc["def"][i]
        if isinstance(op, str):
            with contextlib.suppress(ValueError):
                doc["def"][i] = json.dumps(_mutate_json(json.loads(op), draw))
    return json.dumps(doc).encode()


def run_llb(data: bytes) -> None:
    from pybk.core.errors import PybkError
    from pybk.core.llb.definition import Definition
    from pybk.core.llb.dump import dump_llb

    try:
        definition = Definition.from_bytes(data, filename="def.json")
        definition.load()
        definition.head()
        dump_llb(data)
    except PybkError:
        pass


_BASE_CONFIG = {
    "architecture": "amd64", "os": "linux", "variant": "v8",
    "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "A=1"], "WorkingDir": "/w",
               "User": "1000:1000", "Shell": ["/bin/sh", "-c"],
               "OnBuild": ["RUN echo hi", "ENV X=1", "COPY --from=base /a /b"],
               "Cmd": ["sh"], "Entrypoint": None, "Labels": {"a": "b"},
               "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/v": {}}, "StopSignal": "SIGTERM",
               "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
    "history": [{"created_by": "x", "empty_layer": True}],
}
_CONFIG_DOCKERFILE = (b"FROM base AS b\nARG A\nENV B=$A C=${PATH}\nRUN echo $PATH\n"
                      b"WORKDIR sub\nUSER $A\nCMD x\nLABEL c=d\nEXPOSE 81\nSHELL [\"sh\"]\n"
                      b"ENTRYPOINT e\nHEALTHCHECK NONE\nFROM b\nCOPY --from=base /a /b\n"
                      b"RUN --mount=type=cache,target=c true\n")


@st.composite
def image_configs(draw) -> bytes:
    """A base image's config as a registry could serve it: the JSON mutated (nodes dropped,
    retyped), or its ONBUILD triggers mutated as Dockerfile lines."""
    doc = json.loads(json.dumps(_BASE_CONFIG))
    for _ in range(draw(st.integers(1, 4))):
        doc = _mutate_json(doc, draw)
    if draw(st.booleans()) and isinstance(doc, dict) and isinstance(doc.get("config"), dict):
        triggers = [t.encode() for t in _BASE_CONFIG["config"]["OnBuild"]]
        doc["config"]["OnBuild"] = [
            draw(mutated(triggers, DOCKERFILE_TOKENS, 3)).decode("utf-8", "replace")
            for _ in range(draw(st.integers(0, 3)))]
    return json.dumps(doc).encode()


def run_image_config(data: bytes) -> None:
    from pybk.core.errors import PybkError
    from pybk.frontends.dockerfile.convert import dockerfile_to_llb

    config = json.loads(data)
    try:
        result = dockerfile_to_llb(_CONFIG_DOCKERFILE, image_resolver=lambda ref, p=None: config,
                                   build_args={"A": "2"})
        definition = result.state.marshal()
        if definition.ops:
            definition.load()
        json.dumps(result.image_config)
    except PybkError:
        pass


@dataclass
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy[bytes]]
    run: Callable[[bytes], None]


def _csv_strategy() -> st.SearchStrategy[bytes]:
    parts = []
    for kind, seeds in CSV_SEEDS.items():
        prefix = kind.encode() + b"\x01"
        parts.append(mutated([s.encode() for s in seeds], CSV_TOKENS).map(
            lambda v, p=prefix: p + v))
    return st.one_of(parts)


TARGETS = {
    "dockerfile": Target("dockerfile", lambda: mutated(dockerfile_seeds(), DOCKERFILE_TOKENS),
                         run_dockerfile),
    "yaml": Target("yaml", lambda: mutated(yaml_seeds(), YAML_TOKENS), run_yaml),
    "csv-flags": Target("csv-flags", _csv_strategy, run_csv),
    "buildkitd-toml": Target("buildkitd-toml", lambda: mutated(toml_seeds(), TOML_TOKENS),
                             run_toml),
    "dockerignore": Target("dockerignore", lambda: mutated(PATTERN_SEEDS, PATTERN_TOKENS),
                           run_patterns),
    "llb": Target("llb", lambda: llb_inputs(llb_seeds()), run_llb),
    "image-config": Target("image-config", image_configs, run_image_config),
}


# -- driver ------------------------------------------------------------------------------------


@dataclass
class Report:
    target: str
    examples: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    crashes: dict[str, tuple[bytes, str]] = field(default_factory=dict)


def _signature(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    frame = tb[-1] if tb else None
    where = f"{os.path.basename(frame.filename)}:{frame.lineno}" if frame else "?"
    if isinstance(exc, LocationMissing):
        return f"LocationMissing: {str(exc)[:80]}"
    return f"{type(exc).__name__} at {where}"


def fuzz(name: str, examples: int, seed_value: int | None = 0, derandomize: bool = False
         ) -> Report:
    """Run ``examples`` inputs of target ``name``; crashes are collected, never raised."""
    target = TARGETS[name]
    report = Report(name)
    strategy = target.strategy()

    def body(data: bytes) -> None:
        started = time.perf_counter()
        report.examples += 1
        try:
            target.run(data)
        except Exception as exc:  # noqa: BLE001 - every non-pybk exception is a finding
            sig = _signature(exc)
            if sig not in report.crashes:
                report.crashes[sig] = (data, "".join(traceback.format_exception(exc)))
        report.slowest = max(report.slowest, time.perf_counter() - started)

    test = settings(max_examples=examples, deadline=None, database=None,
                    derandomize=derandomize, suppress_health_check=list(HealthCheck),
                    phases=("generate",))(given(strategy)(body))
    if seed_value is not None and not derandomize:
        test = seed(seed_value)(test)
    started = time.perf_counter()
    test()
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=10000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    ns = parser.parse_args(argv)
    found = 0
    rows = []
    for name in ns.target or list(TARGETS):
        report = fuzz(name, ns.examples, ns.seed)
        found += len(report.crashes)
        print(f"{name:16} {report.examples:7d} examples {report.seconds:8.1f} s "
              f"(slowest {report.slowest * 1000:.0f} ms)  crashes: {len(report.crashes)}",
              flush=True)
        for sig, (data, tb) in report.crashes.items():
            print(f"  --- {sig}\n  input (base64): {base64.b64encode(data).decode()}\n"
                  f"  input: {data[:300]!r}\n{tb}", flush=True)
        rows.append({"target": name, "examples": report.examples,
                     "seconds": round(report.seconds, 1), "slowest_ms":
                     round(report.slowest * 1000), "crashes": sorted(report.crashes)})
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent))
    sys.exit(main())
