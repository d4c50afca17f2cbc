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
