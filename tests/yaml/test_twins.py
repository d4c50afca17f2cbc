"""YAML twins of Dockerfiles (cases of tests/dockerfile_build) convert to the same LLB: every
op's bytes (so every op digest and the head), the op metadata (display names, descriptions)
and the image config are identical. Only the source map differs: it points at the YAML file.
Two twins are also built for real and export identical trees."""

from __future__ import annotations

import os
import shutil
import stat
import textwrap

import pytest

from pybk.core import llb
from pybk.frontends.dockerfile.convert import dockerfile_to_llb
from pybk.frontends.dockerfile.stages import NamedContext
from pybk.frontends.yaml.convert import yaml_to_llb

BUSYBOX_CONFIG = {"architecture": "amd64", "os": "linux",
                  "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                     "/sbin:/bin"], "Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
CONTEXTS = {"busybox": NamedContext(llb.image("docker.io/library/busybox:latest"),
                                    BUSYBOX_CONFIG)}
CHECKSUM = "sha256:" + "ab" * 32

TWINS = {
    "multi-stage-copy-from": ("""\
        FROM busybox AS build
        RUN mkdir -p /dist && echo built > /dist/app && chmod 750 /dist/app
        FROM busybox AS unused
        RUN echo never > /never
        FROM scratch AS final
        COPY --from=build /dist /app
        COPY --from=busybox /bin/busybox /bin/
        """, """\
        version: 1
        stages:
          build:
            from: busybox
            steps:
              - run: mkdir -p /dist && echo built > /dist/app && chmod 750 /dist/app
          unused:
            from: busybox
            steps:
              - run: echo never > /never
          final:
            from: scratch
            steps:
              - copy: {from: build, src: /dist, dest: /app}
              - copy: {from: busybox, src: /bin/busybox, dest: /bin/}
        """, {}),
    "arg-env-expansion": ("""\
        ARG BASE=busybox
        ARG GREETING=hello
        FROM $BASE
        ARG GREETING VERSION=1.0
        ENV APP_HOME=/opt/app NAME=app-${VERSION}
        ENV FULL=$APP_HOME/$NAME
        RUN mkdir -p $FULL && echo "$GREETING $VERSION $NAME" > $FULL/info && env | sort > /env.txt
        """, """\
        version: 1
        args: {BASE: busybox, GREETING: hello}
        stages:
          main:
            from: $BASE
            args: {GREETING: null, VERSION: "1.0"}
            env: {APP_HOME: /opt/app, NAME: "app-${VERSION}"}
            steps:
              - env: {FULL: $APP_HOME/$NAME}
              - run: mkdir -p $FULL && echo "$GREETING $VERSION $NAME" > $FULL/info && env | sort > /env.txt
        """, {"build_args": {"VERSION": "2.5"}}),
    "workdir-user": ("""\
        FROM busybox
        WORKDIR /srv/data
        RUN echo root > by-root
        USER tester
        WORKDIR sub/dir
        RUN echo $(id -u) > mine
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            workdir: /srv/data
            steps:
              - run: echo root > by-root
              - user: tester
              - workdir: sub/dir
              - run: echo $(id -u) > mine
        """, {}),
    "copy-chown-chmod": ("""\
        FROM busybox
        ARG OWNER=tester
        COPY --chown=${OWNER}:tester --chmod=640 a.txt b.txt /files/
        COPY --chown=65534 sub.txt /single/renamed.txt
        WORKDIR /rel
        COPY a.txt .
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            args: {OWNER: tester}
            steps:
              - copy: {src: [a.txt, b.txt], dest: /files/, chown: "${OWNER}:tester", chmod: 640}
              - copy: {src: sub.txt, dest: /single/renamed.txt, chown: 65534}
              - workdir: /rel
              - copy: {src: a.txt, dest: .}
        """, {}),
    "image-config": ("""\
        FROM busybox
        ENV A=1
        LABEL org.example.name="my app" version=$A
        EXPOSE 80 53/udp
        VOLUME ["/data"]
        STOPSIGNAL SIGTERM
        HEALTHCHECK --interval=5s --retries=3 CMD wget -q localhost
        ENTRYPOINT ["/bin/sh", "-c"]
        CMD echo hi
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            env: {A: 1}
            labels: {org.example.name: my app, version: $A}
            expose: [80, 53/udp]
            volumes: [/data]
            stopsignal: SIGTERM
            healthcheck: {test: wget -q localhost, interval: 5s, retries: 3}
            entrypoint: [/bin/sh, -c]
            cmd: echo hi
        """, {}),
    "shell-change": ("""\
        FROM busybox
        SHELL ["/bin/busybox", "env", "FROM_SHELL=yes", "/bin/sh", "-c"]
        RUN echo "shell:$FROM_SHELL" > /shell.txt
        CMD run-me
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            shell: [/bin/busybox, env, FROM_SHELL=yes, /bin/sh, -c]
            steps:
              - run: echo "shell:$FROM_SHELL" > /shell.txt
            cmd: run-me
        """, {}),
    "exec-form": ("""\
        FROM busybox
        ARG WHO=exec
        RUN ["/bin/touch", "/made-by-exec"]
        RUN ["/bin/sh", "-c", "echo $WHO > /who"]
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            steps:
              - arg: {WHO: exec}
              - run: [/bin/touch, /made-by-exec]
              - run: [/bin/sh, -c, echo $WHO > /who]
        """, {}),
    "copy-exclude-parents-link": ("""\
        FROM busybox
        COPY --exclude=*.tmp --exclude=cache src /app/
        COPY --parents src/./pkg/d.py /p/
        COPY --link f.txt /linked/
        COPY --chmod=u+x,go=r --link f.sh /
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            steps:
              - copy: {src: src, dest: /app/, exclude: ["*.tmp", cache]}
              - copy: {src: src/./pkg/d.py, dest: /p/, parents: true}
              - copy: {src: f.txt, dest: /linked/, link: true}
              - copy: {src: f.sh, dest: /, link: true, chmod: "u+x,go=r"}
        """, {}),
    "run-mounts": ("""\
        FROM busybox AS src
        RUN mkdir /d && echo s > /d/f
        FROM busybox AS main
        WORKDIR /w
        RUN --mount=type=cache,target=/c,id=c1,sharing=locked,mode=0750,uid=1000,gid=1001 ls /c
        RUN --mount=type=bind,from=src,source=/d,target=rel,rw touch rel/x
        RUN --mount=type=tmpfs,target=/t,size=1m df /t
        RUN --mount=type=secret,id=tok,env=TOKEN --mount=type=ssh,required=false echo "$TOKEN"
        RUN --mount=type=bind,source=ctx,target=/ctx cat /ctx/c
        """, """\
        version: 1
        stages:
          src:
            from: busybox
            steps:
              - run: mkdir /d && echo s > /d/f
          main:
            from: busybox
            workdir: /w
            steps:
              - run:
                  command: ls /c
                  mounts: [{type: cache, target: /c, id: c1, sharing: locked, mode: "0750",
                            uid: 1000, gid: 1001}]
              - run:
                  command: touch rel/x
                  mounts: [{from: src, source: /d, target: rel, readonly: false}]
              - run:
                  command: df /t
                  mounts: [{type: tmpfs, target: /t, size: 1m}]
              - run:
                  command: echo "$TOKEN"
                  mounts:
                    - {type: secret, id: tok, env: TOKEN}
                    - {type: ssh, required: false}
              - run:
                  command: cat /ctx/c
                  mounts: [{source: ctx, target: /ctx}]
        """, {}),
    "heredoc-scripts": ("""\
        FROM busybox
        RUN <<EOF
        #!/bin/sh
        echo "script:$0" > /shebang
        EOF
        RUN <<EOF
        echo plain > /plain
        echo two >> /plain
        EOF
        """, """\
        version: 1
        stages:
          main:
            from: busybox
            steps:
              - run: |
                  #!/bin/sh
                  echo "script:$0" > /shebang
              - run: |
                  echo plain > /plain
                  echo two >> /plain
        """, {}),
    "add-remote": (f"""\
        FROM busybox
        ADD --checksum={CHECKSUM} http://127.0.0.1:9/file.tar.gz /dl/
        ADD --keep-git-dir=true git://127.0.0.1:9/repo.git#v1 /src/
        ADD --unpack=true http://127.0.0.1:9/a.tar.gz /unpacked/
        ADD --chown=12:34 local.tar /l/
        """, f"""\
        version: 1
        stages:
          main:
            from: busybox
            steps:
              - add: {{src: http://127.0.0.1:9/file.tar.gz, dest: /dl/, checksum: "{CHECKSUM}"}}
              - add: {{src: "git://127.0.0.1:9/repo.git#v1", dest: /src/, keep-git-dir: true}}
              - add: {{src: http://127.0.0.1:9/a.tar.gz, dest: /unpacked/, unpack: true}}
              - add: {{src: local.tar, dest: /l/, chown: "12:34"}}
        """, {}),
    "network-security-platform": ("""\
        FROM --platform=$BUILDPLATFORM busybox AS s
        ARG TARGETARCH
        RUN --network=none echo $TARGETARCH > /arch
        RUN --security=insecure true
        RUN --network=host true
        """, """\
        version: 1
        stages:
          s:
            from: busybox
            platform: $BUILDPLATFORM
            args: {TARGETARCH: null}
            steps:
              - run: {command: echo $TARGETARCH > /arch, network: none}
              - run: {command: "true", security: insecure}
              - run: {command: "true", network: host}
        """, {"build_args": {"TARGETARCH": "riscv64"}}),
}


def _convert(dockerfile: str, pipeline: str, options: dict):
    df = dockerfile_to_llb(textwrap.dedent(dockerfile).encode(), named_contexts=CONTEXTS,
                           **options)
    yml = yaml_to_llb(textwrap.dedent(pipeline).encode(), filename="pipeline.yaml",
                      named_contexts=CONTEXTS, **options)
    return df, yml


def test_enough_twins():
    assert len(TWINS) >= 10


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_has_identical_llb(name):
    dockerfile, pipeline, options = TWINS[name]
    df, yml = _convert(dockerfile, pipeline, options)
    a, b = df.state.marshal(), yml.state.marshal()
    assert len(a.ops) > 1
    assert a.digests() == b.digests()  # every op, hence the head and the cache keys
    assert a.head() == b.head()
    assert a.ops == b.ops
    assert dict(a.metadata) == dict(b.metadata)  # display names and descriptions too
    assert df.image_config == yml.image_config
    assert df.context_paths == yml.context_paths
    # the source map (when an op is located) points at the pipeline's lines
    assert (a.source is None) == (b.source is None)
    if b.source is not None:
        assert [(i.filename, i.language) for i in b.source.infos] == [("pipeline.yaml", "YAML")]


def test_locations_point_at_yaml_lines():
    dockerfile, pipeline, options = TWINS["workdir-user"]
    _, yml = _convert(dockerfile, pipeline, options)
    definition = yml.state.marshal()
    lines = textwrap.dedent(pipeline).splitlines()
    located = {}
    for digest, locs in definition.source.locations.items():
        for loc in locs.locations:
            located[digest] = lines[loc.ranges[0].start.line - 1].strip()
    names = {d: md.description.get("llb.customname") for d, md in definition.metadata.items()}
    shown = {names[d]: text for d, text in located.items() if names.get(d)}
    assert shown["[4/5] WORKDIR sub/dir"] == "- workdir: sub/dir"
    assert shown["[5/5] RUN echo $(id -u) > mine"] == "- run: echo $(id -u) > mine"


def test_step_env_is_for_that_command_only():
    pipeline = """\
        version: 1
        stages:
          main:
            from: busybox
            env: {KEEP: base}
            steps:
              - run: {command: env > /one, env: {ONLY: here, KEEP: changed}}
              - run: env > /two
        """
    result = yaml_to_llb(textwrap.dedent(pipeline).encode(), named_contexts=CONTEXTS)
    execs = [op for op in result.state.marshal().load().values()
             if type(op.op).__name__ == "ExecOp"]
    first, second = (list(e.op.meta.env) for e in execs)
    assert "ONLY=here" in first and "KEEP=changed" in first
    assert not any(e.startswith("ONLY=") for e in second) and "KEEP=base" in second
    assert "KEEP=base" in result.image_config["config"]["Env"]


# ----------------------------------------------------------------------------- real builds


def _tree(root) -> dict:
    """Every path of an exported tree with its type, mode, owner and content."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            else:
                content = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, content)
    return out


@pytest.fixture(scope="module")
def real_client(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mount(2))")
    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    from pybk.core.engine.client import Client

    with Client(root=str(tmp_path_factory.mktemp("store"))) as client:
        yield client


@pytest.fixture(scope="module")
def layout_context(busybox_layout):
    import json

    from support.busybox import layout_manifest

    entry, manifest = layout_manifest(busybox_layout)
    config_digest = json.loads(manifest)["config"]["digest"].split(":", 1)[1]
    config = json.loads((busybox_layout / "blobs" / "sha256" / config_digest).read_text())
    state = llb.oci_layout(f"busybox@{entry['digest']}", store_id="base")
    return {"busybox": NamedContext(state, config)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multi-stage-copy-from", "copy-chown-chmod"])
def test_twin_builds_identical_trees(name, real_client, layout_context, busybox_layout,
                                     tmp_path):
    dockerfile, pipeline, options = TWINS[name]
    context = tmp_path / "ctx"
    context.mkdir()
    for file, text in {"a.txt": "A\n", "b.txt": "B\n", "sub.txt": "S\n"}.items():
        (context / file).write_text(text)
    df = dockerfile_to_llb(textwrap.dedent(dockerfile).encode(), named_contexts=layout_context,
                           **options)
    yml = yaml_to_llb(textwrap.dedent(pipeline).encode(), named_contexts=layout_context,
                      **options)
    trees = []
    for n, converted in enumerate((df, yml)):
        result = real_client.solve(converted.state, local_dirs={"context": str(context)},
                                   oci_layouts={"base": str(busybox_layout)}, progress=None)
        out = tmp_path / f"out{n}"
        real_client.export_local(result, out)
        trees.append(_tree(out))
    assert trees[0] == trees[1]
    assert len(trees[0]) > 2
    if name == "copy-chown-chmod":
        mode, uid = trees[1]["files/a.txt"][1:3]
        assert (mode, uid) == (0o640, 1000)
    else:
        assert trees[1]["app/app"][4] == b"built\n" and "never" not in trees[1]
