"""Crashes bench/fuzz.py found, each fixed: now a pybk error (located) or a success."""

from __future__ import annotations

import pytest

from pybk.core.errors import InputError, PybkError
from pybk.frontends.dockerfile.convert import dockerfile_to_llb
from pybk.frontends.yaml.convert import yaml_to_llb


def test_invalid_utf8_in_an_instruction_is_a_located_error():
    # was: TypeError from orjson ("str is not valid UTF-8: surrogates not allowed")
    data = b"FROM busybox\n\nRUN echo apt-\xd7et\n"
    with pytest.raises(InputError, match=r"^Dockerfile:3: the instruction is not valid UTF-8"):
        dockerfile_to_llb(data).state.marshal()


@pytest.mark.parametrize("line", [b"RUN", b"RUN ", b"CMD", b"ENTRYPOINT  "])
def test_empty_shell_form_is_sh_c_empty(line):
    # was: IndexError (command[0] of an empty shell form); BuildKit runs/sets `sh -c ""`
    result = dockerfile_to_llb(b"FROM busybox\n" + line + b"\n")
    result.state.marshal().load()
    if line.startswith(b"CMD"):
        assert result.image_config["config"]["Cmd"] == ["/bin/sh", "-c", ""]
    if line.startswith(b"ENTRYPOINT"):
        assert result.image_config["config"]["Entrypoint"] == ["/bin/sh", "-c", ""]


@pytest.mark.parametrize("data, where", [
    (b"version: 1\nstages:\n  a:\n    frnullom", "pipeline.yaml:4:5: stages.a: expected"),
    (b"version: 1\nstages:\n  a:\n    from: x\n    steps:\n      - hello\n",
     "pipeline.yaml:6:9: stages.a.steps[0]: expected"),
])
def test_a_stage_or_step_of_the_wrong_type_is_a_located_error(data, where):
    # was: SchemaTypeError (a TypeError) escaping load_pipeline
    with pytest.raises(PybkError) as info:
        yaml_to_llb(data)
    assert str(info.value).startswith(where)


@pytest.mark.parametrize("data", [
    b"FROM busybox AS b\nCOPY a.s\xca /usr/bin/\nFROM scratch\nCOPY --from=b /sr\xc2\xaf\xf0c /\n",
    b"FROM scratch\nCOPY a\xca /\n",
])
def test_invalid_utf8_in_a_context_path_is_a_located_error(data):
    # was: TypeError from orjson building the context's follow paths
    with pytest.raises(InputError, match=r"^Dockerfile:2: the instruction is not valid UTF-8"):
        dockerfile_to_llb(data).state.marshal()


def test_a_bind_mount_without_target_is_mounted_at_the_workdir():
    # was: ValueError "mount destination must be absolute: ''"; BuildKit joins "" to the workdir
    from pybk.core.llb.dump import dump_llb

    data = b"FROM busybox\nWORKDIR /src\nRUN --mount=type=bind,source=a AS pp,target=/x true\n"
    definition = dockerfile_to_llb(data).state.marshal()
    assert '"dest":"/src"' in dump_llb(definition.to_bytes()).replace(" ", "") or \
        "/src" in dump_llb(definition.to_bytes())
    with pytest.raises(PybkError, match=r"Dockerfile:2: mount target can not be /"):
        dockerfile_to_llb(b"FROM busybox\nRUN --mount=type=cache true\n")


def test_a_merge_key_aliasing_its_own_ancestor_is_a_located_error():
    # was: AttributeError ('NoneType' object has no attribute 'items')
    data = b"version: 1\nbase: &base\n  from: busybox\n  a:\n    <<: *base\n    steps: []\nstages:"
    with pytest.raises(PybkError, match=r"pipeline.yaml:\d+:\d+: .*recursive alias"):
        yaml_to_llb(data)


@pytest.mark.parametrize("config, message", [
    ("not an object", "the config must be a JSON object"),
    ({"architecture": -1, "os": "linux", "config": {}}, "architecture must be a string"),
    ({"config": "text"}, "config must be a JSON object"),
    ({"config": {"WorkingDir": {"a": 1}}}, "config.WorkingDir must be a string"),
    ({"config": {"User": 1.5}}, "config.User must be a string"),
    ({"config": {"Env": ["A=1", 2]}}, "config.Env must be a list of strings"),
    ({"config": {"OnBuild": "RUN x"}}, "config.OnBuild must be a list of strings"),
    ({"config": {}, "history": 1.5}, "history must be a list of objects"),
])
def test_a_malformed_base_image_config_is_a_located_error(config, message):
    # was: AttributeError / TypeError / ValueError deep in the converter (a registry or an OCI
    # layout serves the config: it is untrusted input)
    data = b"FROM base\nWORKDIR sub\nUSER x\nRUN true\n"
    with pytest.raises(PybkError) as info:
        dockerfile_to_llb(data, image_resolver=lambda ref, platform=None: config)
    text = str(info.value)
    assert text.startswith("Dockerfile:1: failed to resolve source metadata for base")
    assert message in text


@pytest.mark.parametrize("config, message", [
    ({"config": None, "history": -1}, "history must be a list of objects"),
    ({"config": {"Env": ["PATH=/bin", ""]}}, "config.Env must be a list of NAME=VALUE"),
    ({"config": {"Env": ["=x"]}}, "config.Env must be a list of NAME=VALUE"),
])
def test_more_malformed_base_image_configs(config, message):
    # found by the image-config target's 10,000 run: TypeError / ValueError before
    with pytest.raises(PybkError, match=message):
        dockerfile_to_llb(b"FROM base\nRUN true\n",
                          image_resolver=lambda ref, platform=None: config)
