"""BuildKit's behaviour for two config details: an ARG given a value after an ENV of the same
name is what later RUN steps (and expansions) see, while the image config keeps the ENV; and
``EXPOSE`` of a port range writes one ``ExposedPorts`` entry per port."""

from __future__ import annotations

import pytest
from support.engine import need_runc

from pybk.frontends.dockerfile.convert import dockerfile_to_llb
from pybk.frontends.dockerfile.errors import DockerfileParseError


def test_arg_after_env_reaches_run_and_config_keeps_env(dfbuild):
    need_runc()
    built = dfbuild(
        "FROM busybox\n"
        "ENV X=env-x Y=env-y Z=env-z KEEP=env-keep\n"
        "ARG X=arg-x\n"
        "ARG Y\n"
        "ARG KEEP\n"
        "RUN echo \"$X $Y $Z $KEEP\" > /out && env > /env\n"
        "ENV W=$X\n"
        "ENV X=env-again\n"
        "RUN echo $X > /out2\n"
        "ARG Z=arg-z\n"
        "ENV Z=env-z2\n"
        "RUN echo $Z > /out3\n",
        opts={"build-arg:Y": "cli-y"})
    # X: the ARG's default; Y: the --build-arg; Z: the ENV (no ARG yet); KEEP: an ARG with no
    # value leaves the ENV in force
    assert built.text("/out") == "arg-x cli-y env-z env-keep\n"
    assert built.text("/out2") == "env-again\n"  # a later ENV wins again
    assert built.text("/out3") == "env-z2\n"  # an ENV after the ARG wins
    env = built.text("/env").splitlines()
    assert "X=arg-x" in env and "Y=cli-y" in env and "X=env-x" not in env
    config_env = [e for e in built.cfg["Env"] if not e.startswith("PATH=")]
    assert config_env == ["X=env-again", "Y=env-y", "Z=env-z2", "KEEP=env-keep", "W=arg-x"]
    history = [h["created_by"] for h in built.config["history"]]
    assert 'RUN |3 X=arg-x Y=cli-y KEEP=env-keep /bin/sh -c echo "$X $Y $Z $KEEP" > /out ' \
           '&& env > /env # buildkit' in history


def test_arg_over_env_does_not_reach_the_next_stage(dfbuild):
    need_runc()
    built = dfbuild("FROM busybox AS one\nENV X=env\nARG X=arg\nRUN echo $X > /one\n"
                    "FROM one\nRUN echo $X > /two\n")
    assert built.text("/one") == "arg\n"
    assert built.text("/two") == "env\n"
    assert "X=env" in built.cfg["Env"]


def test_arg_over_the_base_images_env(dfbuild):
    need_runc()
    built = dfbuild("FROM busybox\nARG PATH=/opt/bin:/bin\nRUN echo $PATH > /path\n"
                    "RUN echo \"$(/bin/busybox env | /bin/busybox grep ^PATH=)\" > /env\n")
    assert built.text("/path") == "/opt/bin:/bin\n"
    assert built.text("/env") == "PATH=/opt/bin:/bin\n"
    assert [e for e in built.cfg["Env"] if e.startswith("PATH=")] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def _exposed(dockerfile: str) -> tuple[dict, str]:
    converted = dockerfile_to_llb(dockerfile.encode())
    return (converted.image_config["config"].get("ExposedPorts"),
            converted.image_config["history"][-1]["created_by"])


def test_expose_range_is_one_entry_per_port():
    ports, history = _exposed("FROM scratch\nEXPOSE 8000-8002 53/udp 9000-9001/UDP 7/sctp "
                              "80/TCP 0443\n")
    assert ports == {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}, "53/udp": {},
                     "9000/udp": {}, "9001/udp": {}, "7/sctp": {}, "80/tcp": {}, "443/tcp": {}}
    assert history == ("EXPOSE map[443/tcp:{} 53/udp:{} 7/sctp:{} 80/tcp:{} 8000/tcp:{} "
                       "8001/tcp:{} 8002/tcp:{} 9000/udp:{} 9001/udp:{}]")


def test_expose_host_mappings_keep_the_container_port():
    ports, _ = _exposed("FROM scratch\nEXPOSE 8080:80 127.0.0.1:5000-5001:6000-6001/udp "
                        "9000-9005:53\n")
    assert ports == {"80/tcp": {}, "6000/udp": {}, "6001/udp": {}, "53/tcp": {}}


def test_expose_range_from_an_arg():
    ports, _ = _exposed("FROM scratch\nARG FIRST=3000\nEXPOSE ${FIRST}-3001/udp\n")
    assert ports == {"3000/udp": {}, "3001/udp": {}}


@pytest.mark.parametrize(("spec", "message"), [
    ("8002-8000", "invalid containerPort: 8002-8000"),
    ("80/ftp", "invalid proto: ftp"),
    ("http", "invalid containerPort: http"),
    ("70000", "invalid containerPort: 70000"),
    ("1-2-3", "invalid containerPort: 1-2-3"),
    ("/tcp", "no port specified: /tcp<empty>"),
    ("x.y:80:80", "invalid IP address: x.y"),
    ("80-81:90-95", "invalid ranges specified for container and host Ports: 90-95 and 80-81"),
])
def test_expose_refuses_what_buildkit_refuses(spec, message):
    with pytest.raises(DockerfileParseError) as info:
        dockerfile_to_llb(f"FROM scratch\nEXPOSE {spec}\n".encode())
    assert message in str(info.value) and "Dockerfile:2" in str(info.value)


def test_expose_error_through_the_cli_exits_2(tmp_path, capsys):
    from pybk.core.cli.commands import main

    (tmp_path / "Dockerfile").write_text("FROM scratch\nEXPOSE 9-1\n")
    code = main(["--root", str(tmp_path / "store"), "build", "--progress", "quiet",
                 "--print-llb", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "invalid containerPort: 9-1" in err and "Traceback" not in err
