"""Op messages: JSON form, default omission, digest sensitivity, strict decoding."""

from __future__ import annotations

import enum
import typing

import attrs
import pytest

from pybk.core.errors import InputError
from pybk.core.llb import ops
from pybk.core.serialize import canonical_dumps

MESSAGES = [
    cls
    for cls in vars(ops).values()
    if isinstance(cls, type)
    and attrs.has(cls)
    and cls.__module__ == ops.__name__
    and not cls.__name__.startswith("_")
]


def _sample(tp: typing.Any) -> typing.Any:
    """A non-default value of type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, type(int | None)):
        return _sample(next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is tuple:
        return (_sample(typing.get_args(tp)[0]),)
    if origin is ops.FrozenDict:
        return {"k": _sample(typing.get_args(tp)[1])}
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return list(tp)[-1]
    if attrs.has(tp):
        return tp()
    return {bool: True, int: 7, str: "x", bytes: b"\x00x"}[tp]


def _plain_fields(cls: type) -> list[tuple[str, typing.Any]]:
    hints = typing.get_type_hints(cls, globalns=vars(ops))
    return [(f.name, hints[f.name]) for f in attrs.fields(cls) if "oneof" not in f.metadata]


def _field_cases():
    for cls in MESSAGES:
        for name, tp in _plain_fields(cls):
            yield pytest.param(cls, name, tp, id=f"{cls.__name__}.{name}")


def test_every_message_is_covered():
    names = {cls.__name__ for cls in MESSAGES}
    assert {"Op", "ExecOp", "Mount", "FileActionCopy", "Meta", "OpMetadata", "BuildOp"} <= names


@pytest.mark.parametrize(("cls", "name", "tp"), list(_field_cases()))
def test_each_field_changes_the_encoding_and_defaults_do_not(cls, name, tp):
    default = canonical_dumps(ops.encode(cls()))
    explicit_default = cls(**{name: getattr(cls(), name)})
    assert canonical_dumps(ops.encode(explicit_default)) == default
    changed = cls(**{name: _sample(tp)})
    encoded = ops.encode(changed)
    assert canonical_dumps(encoded) != default
    assert ops.decode(cls, encoded) == changed


def test_field_names_match_the_proto_in_snake_case():
    assert [f.name for f in attrs.fields(ops.Mount)] == [
        "input",
        "selector",
        "dest",
        "output",
        "readonly",
        "mount_type",
        "tmpfs_opt",
        "cache_opt",
        "secret_opt",
        "ssh_opt",
        "result_id",
        "content_cache",
    ]
    assert [f.name for f in attrs.fields(ops.FileActionCopy)] == [
        "src",
        "dest",
        "owner",
        "mode",
        "follow_symlink",
        "dir_copy_contents",
        "attempt_unpack_docker_compatibility",
        "create_dest_path",
        "allow_wildcard",
        "allow_empty_wildcard",
        "timestamp",
        "include_patterns",
        "exclude_patterns",
        "always_replace_existing_dest_paths",
        "mode_str",
        "required_paths",
    ]
    assert [f.name for f in attrs.fields(ops.Meta)] == [
        "args",
        "env",
        "cwd",
        "user",
        "proxy_env",
        "extra_hosts",
        "hostname",
        "ulimit",
        "cgroup_parent",
        "remove_mount_stubs_recursive",
        "valid_exit_codes",
    ]


def test_enum_values_are_the_proto_values():
    assert [(m.name, m.value) for m in ops.MountType] == [
        ("BIND", 0),
        ("SECRET", 1),
        ("SSH", 2),
        ("CACHE", 3),
        ("TMPFS", 4),
    ]
    assert [(m.name, m.value) for m in ops.NetMode] == [("UNSET", 0), ("HOST", 1), ("NONE", 2)]
    assert [(m.name, m.value) for m in ops.SecurityMode] == [("SANDBOX", 0), ("INSECURE", 1)]
    assert [(m.name, m.value) for m in ops.CacheSharingOpt] == [
        ("SHARED", 0),
        ("PRIVATE", 1),
        ("LOCKED", 2),
    ]
    assert ops.SKIP_OUTPUT == ops.SCRATCH == -1


def test_oneof_members_are_keys_and_empty_messages_keep_presence():
    op = ops.Op(op=ops.MergeOp())
    assert op.marshal() == b'{"merge":{}}'
    assert ops.Op.unmarshal(op.marshal()) == op
    assert op.kind == "merge"
    owner = ops.ChownOpt(user=ops.UserOpt(0), group=ops.UserOpt(ops.NamedUserOpt("staff", 1)))
    encoded = ops.encode(owner)
    assert encoded == {"user": {"by_id": 0}, "group": {"by_name": {"name": "staff", "input": 1}}}
    back = ops.decode(ops.ChownOpt, encoded)
    assert back == owner and back.user.by_id == 0 and back.group.by_name.name == "staff"


def test_mount_cache_opt_present_but_empty_is_not_the_same_as_absent():
    bare = ops.Mount(dest="/c", mount_type=ops.MountType.CACHE)
    with_opt = attrs.evolve(bare, cache_opt=ops.CacheOpt())
    assert (
        ops.Op(op=ops.ExecOp(mounts=[bare])).digest
        != ops.Op(op=ops.ExecOp(mounts=[with_opt])).digest
    )


def test_enum_fields_accept_plain_ints_with_the_same_digest():
    a = ops.Op(op=ops.ExecOp(mounts=[ops.Mount(mount_type=3)], network=2))
    b = ops.Op(
        op=ops.ExecOp(mounts=[ops.Mount(mount_type=ops.MountType.CACHE)], network=ops.NetMode.NONE)
    )
    assert a.digest == b.digest
    assert a.op.mounts[0].mount_type is ops.MountType.CACHE


def test_bytes_are_base64_and_messages_are_hashable():
    op = ops.Op(
        op=ops.FileOp([ops.FileAction(action=ops.FileActionMkFile("/f", 0o600, b"\xff\x00"))])
    )
    assert b'"data":"/wA="' in op.marshal()
    assert ops.Op.unmarshal(op.marshal()) == op
    assert len({op, ops.Op.unmarshal(op.marshal())}) == 1
    src = ops.SourceOp("local://x", {"a": "1"})
    with pytest.raises(TypeError):
        src.attrs["b"] = "2"


def test_output_indices():
    exec_op = ops.Op(
        op=ops.ExecOp(
            mounts=[
                ops.Mount(dest="/", output=0),
                ops.Mount(dest="/a", output=-1),
                ops.Mount(dest="/b", output=1),
            ]
        )
    )
    assert exec_op.output_indices() == {0, 1}
    file_op = ops.Op(op=ops.FileOp([ops.FileAction(output=-1), ops.FileAction(output=0)]))
    assert file_op.output_indices() == {0}
    assert ops.Op(op=ops.SourceOp("local://a")).output_indices() == {0}
    assert ops.Op(inputs=[ops.Input("sha256:x")]).output_indices() == frozenset()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"exec":{"meta":{"argz":[]}}}', "op.exec.meta: unknown field 'argz' in Meta"),
        (b'{"exec":{"network":7}}', "op.exec.network: unknown NetMode value 7"),
        (
            b'{"exec":{"mounts":[{"input":"0"}]}}',
            "op.exec.mounts[0].input: expected an integer, got a string",
        ),
        (
            b'{"exec":{"mounts":[{"readonly":1}]}}',
            "op.exec.mounts[0].readonly: expected true or false",
        ),
        (b'{"exec":{},"source":{}}', "more than one of exec, source is set"),
        (
            b'{"file":{"actions":[{"mkfile":{"data":"***"}}]}}',
            "op.file.actions[0].mkfile.data: invalid base64",
        ),
        (b'{"source":{"attrs":{"a":1}}}', "op.source.attrs.a: expected a string, got an integer"),
        (b"[1]", "op: expected an object for Op, got a list"),
        (b'{"inputs":', "op: not valid JSON"),
    ],
)
def test_decoding_errors_name_the_path(data, message):
    with pytest.raises(InputError) as info:
        ops.Op.unmarshal(data)
    assert message in str(info.value)


def test_platform_parse_and_host():
    assert ops.Platform.parse("linux/arm64/v8") == ops.Platform(
        architecture="arm64", os="linux", variant="v8"
    )
    assert str(ops.Platform.parse("linux/amd64")) == "linux/amd64"
    with pytest.raises(InputError, match="invalid platform"):
        ops.Platform.parse("linux")
    host = ops.host_platform()
    assert host.os == "linux" and host.architecture


def test_messages_copy_and_pickle():
    import copy
    import pickle

    op = ops.Op(op=ops.SourceOp("local://x", {"local.sharedkeyhint": "k"}))
    assert pickle.loads(pickle.dumps(op)) == op
    assert copy.deepcopy(op).digest == op.digest
