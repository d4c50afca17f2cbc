"""End-to-end Dockerfile builds: convert to LLB, solve with runc, check files and image config."""

from __future__ import annotations

import os
import stat

import pytest

from pybk.core.errors import BuildError
from pybk.core.llb.dump import dump_llb
from pybk.frontends.dockerfile.convert import dockerfile_to_llb
from pybk.frontends.dockerfile.errors import DockerfileParseError


@pytest.fixture
def build(client, busybox_context, busybox_layout, tmp_path):
    """Convert and solve a Dockerfile; returns ``(output dir, ConvertResult)``."""
    counter = iter(range(100))

    def run(dockerfile: str, *, files: dict[str, str] | None = None, secrets=None, **options):
        n = next(counter)
        context = tmp_path / f"context{n}"
        context.mkdir()
        for name, text in (files or {}).items():
            (context / name).write_text(text)
        converted = dockerfile_to_llb(dockerfile.encode(), named_contexts=busybox_context,
                                      **options)
        result = client.solve(converted.state, local_dirs={"context": str(context)},
                              oci_layouts={"base": str(busybox_layout)}, secrets=secrets,
                              progress=None)
        out = tmp_path / f"out{n}"
        client.export_local(result, out)
        return out, converted

    return run


def test_multi_stage_copy_from(build):
    out, converted = build(
        "FROM busybox AS build\n"
        "RUN mkdir -p /dist && echo built > /dist/app && chmod 750 /dist/app\n"
        "FROM busybox AS unused\n"
        "RUN echo never > /never\n"
        "FROM scratch\n"
        "COPY --from=build /dist /app\n"
        "COPY --from=0 /bin/busybox /bin/\n"
    )
    assert (out / "app" / "app").read_text() == "built\n"
    assert stat.S_IMODE((out / "app" / "app").stat().st_mode) == 0o750
    assert (out / "bin" / "busybox").is_file()
    assert sorted(os.listdir(out)) == ["app", "bin"]
    assert converted.stage_name == "stage-2"
    graph = dump_llb(converted.state.marshal().to_bytes())
    assert "echo never" not in graph
    assert "[stage-2 2/3] COPY --from=build /dist /app" in graph


def test_arg_env_expansion(build):
    out, converted = build(
        "ARG BASE=busybox\n"
        "ARG GREETING=hello\n"
        "FROM $BASE\n"
        "ARG GREETING\n"
        "ARG VERSION=1.0\n"
        "ENV APP_HOME=/opt/app NAME=app-${VERSION}\n"
        "ENV FULL=$APP_HOME/$NAME\n"
        "RUN mkdir -p $FULL && echo \"$GREETING $VERSION $NAME\" > $FULL/info"
        " && env | sort > /env.txt\n",
        build_args={"VERSION": "2.5"},
    )
    assert (out / "opt" / "app" / "app-2.5" / "info").read_text() == "hello 2.5 app-2.5\n"
    env = (out / "env.txt").read_text().splitlines()
    assert "VERSION=2.5" in env and "GREETING=hello" in env  # ARGs reach RUN as env
    config_env = converted.image_config["config"]["Env"]
    assert "FULL=/opt/app/app-2.5" in config_env
    assert not any(e.startswith(("VERSION=", "GREETING=")) for e in config_env)


def test_workdir_and_user(build):
    out, converted = build(
        "FROM busybox\n"
        "WORKDIR /srv/data\n"
        "RUN echo root > by-root\n"
        "USER tester\n"
        "WORKDIR sub/dir\n"
        "RUN echo $(id -u) > mine\n"
    )
    root_file = out / "srv" / "data" / "by-root"
    assert root_file.read_text() == "root\n" and root_file.stat().st_uid == 0
    mine = out / "srv" / "data" / "sub" / "dir" / "mine"
    assert mine.read_text() == "1000\n"
    assert (mine.stat().st_uid, mine.stat().st_gid) == (1000, 1000)
    assert (out / "srv" / "data" / "sub" / "dir").stat().st_uid == 1000
    assert stat.S_IMODE((out / "srv" / "data").stat().st_mode) == 0o755
    config = converted.image_config["config"]
    assert config["WorkingDir"] == "/srv/data/sub/dir"
    assert config["User"] == "tester"


def test_copy_chown_chmod(build):
    out, _ = build(
        "FROM busybox\n"
        "ARG OWNER=tester\n"
        "COPY --chown=${OWNER}:tester --chmod=640 a.txt b.txt /files/\n"
        "COPY --chown=65534 sub.txt /single/renamed.txt\n"
        "WORKDIR /rel\n"
        "COPY a.txt .\n",
        files={"a.txt": "A\n", "b.txt": "B\n", "sub.txt": "S\n"},
    )
    for name, text in [("a.txt", "A\n"), ("b.txt", "B\n")]:
        st = (out / "files" / name).stat()
        assert (out / "files" / name).read_text() == text
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
    renamed = (out / "single" / "renamed.txt").stat()
    assert (renamed.st_uid, renamed.st_gid) == (65534, 65534)
    assert (out / "rel" / "a.txt").read_text() == "A\n"
    assert (out / "rel" / "a.txt").stat().st_uid == 0


def test_target_skips_failing_stage(build, client, busybox_context, busybox_layout):
    dockerfile = (
        "FROM busybox AS good\n"
        "RUN echo ok > /ok\n"
        "FROM busybox AS bad\n"
        "RUN exit 7\n"
    )
    out, converted = build(dockerfile, target="good")
    assert (out / "ok").read_text() == "ok\n"
    assert converted.stage_name == "good"
    assert "exit 7" not in dump_llb(converted.state.marshal().to_bytes())
    failing = dockerfile_to_llb(dockerfile.encode(), named_contexts=busybox_context)
    with pytest.raises(BuildError, match="exit code: 7"):
        client.solve(failing.state, oci_layouts={"base": str(busybox_layout)}, progress=None)


def test_image_config_fields(build):
    _, converted = build(
        "FROM busybox\n"
        "ENV A=1\n"
        "LABEL org.example.name=\"my app\" version=$A\n"
        "EXPOSE 80 53/udp\n"
        "VOLUME /data\n"
        "STOPSIGNAL SIGTERM\n"
        "HEALTHCHECK --interval=5s --retries=3 CMD wget -q localhost\n"
        "ENTRYPOINT [\"/bin/sh\", \"-c\"]\n"
        "CMD echo hi\n"
    )
    image = converted.image_config
    config = image["config"]
    assert config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                             "A=1"]
    assert config["Labels"] == {"org.example.name": "my app", "version": "1"}
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"],
                                     "Interval": 5_000_000_000, "Retries": 3}
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    # the base image's history comes first, then one entry per instruction
    assert image["history"][0]["created_by"].startswith("busybox_layout.py")
    assert image["history"][1] == {"created_by": "ENV A=1",
                                   "comment": "buildkit.dockerfile.v0", "empty_layer": True}
    assert len(image["history"]) == 9


def test_config_inherits_base_and_entrypoint_resets_cmd(build):
    out, converted = build("FROM busybox\nRUN echo x > /x\n")
    assert converted.image_config["config"]["Cmd"] == ["sh"]
    assert (out / "x").read_text() == "x\n"
    _, converted = build("FROM busybox\nENTRYPOINT [\"/bin/echo\"]\n")
    assert "Cmd" not in converted.image_config["config"]
    assert converted.image_config["config"]["Entrypoint"] == ["/bin/echo"]


def test_shell_change(build):
    out, converted = build(
        "FROM busybox\n"
        "SHELL [\"/bin/busybox\", \"env\", \"FROM_SHELL=yes\", \"/bin/sh\", \"-c\"]\n"
        "RUN echo \"shell:$FROM_SHELL\" > /shell.txt\n"
        "CMD run-me\n"
    )
    assert (out / "shell.txt").read_text() == "shell:yes\n"
    config = converted.image_config["config"]
    assert config["Shell"] == ["/bin/busybox", "env", "FROM_SHELL=yes", "/bin/sh", "-c"]
    assert config["Cmd"] == ["/bin/busybox", "env", "FROM_SHELL=yes", "/bin/sh", "-c", "run-me"]


def test_exec_form_run(build):
    out, _ = build(
        "FROM busybox\n"
        "ARG WHO=exec\n"
        "RUN [\"/bin/touch\", \"/made-by-exec\"]\n"
        "RUN [\"/bin/sh\", \"-c\", \"echo $WHO > /who\"]\n"
    )
    assert (out / "made-by-exec").is_file()
    assert (out / "made-by-exec").stat().st_size == 0
    assert (out / "who").read_text() == "exec\n"


def test_run_mounts_and_heredocs(build):
    out, _ = build(
        "FROM busybox AS src\n"
        "RUN mkdir /payload && echo from-stage > /payload/p.txt\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,from=src,source=/payload,target=/mnt/p \\\n"
        "    --mount=type=bind,source=ctx.txt,target=/mnt/ctx.txt \\\n"
        "    --mount=type=tmpfs,target=/scratch \\\n"
        "    --mount=type=cache,target=/cache \\\n"
        "    --mount=type=secret,id=token \\\n"
        "    cat /mnt/p/p.txt /mnt/ctx.txt /run/secrets/token > /mounted.txt"
        " && touch /scratch/gone /cache/kept\n"
        "RUN <<EOF\n"
        "echo heredoc-run > /heredoc-run.txt\n"
        "EOF\n"
        "COPY <<EOF /heredoc-copy.txt\n"
        "copied\n"
        "EOF\n",
        files={"ctx.txt": "from-context\n"},
        secrets={"token": b"s3cret\n"},
    )
    assert (out / "mounted.txt").read_text() == "from-stage\nfrom-context\ns3cret\n"
    assert not (out / "scratch" / "gone").exists()
    assert not (out / "cache" / "kept").exists()
    assert not (out / "mnt" / "p" / "p.txt").exists()
    assert (out / "heredoc-run.txt").read_text() == "heredoc-run\n"
    assert (out / "heredoc-copy.txt").read_text() == "copied\n"


def test_unknown_target_is_located_error():
    with pytest.raises(DockerfileParseError, match='target stage "nope" could not be found'):
        dockerfile_to_llb(b"FROM scratch\n", target="nope")
