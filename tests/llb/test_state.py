"""The State builder: what each call puts into the marshalled ops."""

from __future__ import annotations

import datetime

import pytest

from pybk.core import llb
from pybk.core.errors import InputError
from pybk.core.llb import ops

AMD64 = llb.Platform(architecture="amd64", os="linux")
ARM64 = llb.Platform(architecture="arm64", os="linux", variant="v8")


def loaded(state: llb.State, platform=AMD64) -> list[llb.Op]:
    """The ops of ``state``'s definition without the terminal op, in order."""
    return list(state.marshal(platform).load().values())[:-1]


def last(state: llb.State, platform=AMD64) -> llb.Op:
    return loaded(state, platform)[-1]


# ------------------------------------------------------------------------------------ sources


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.19", "docker.io/library/alpine:3.19"),
        ("user/app", "docker.io/user/app:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000/busybox:1"),
        ("localhost/x", "localhost/x:latest"),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io/o/r@sha256:" + "a" * 64),
        ("r.io/a:t@sha256:" + "b" * 64, "r.io/a:t@sha256:" + "b" * 64),
    ],
)
def test_image_refs_are_normalized(ref, normal):
    assert llb.normalize_image_ref(ref) == normal
    assert last(llb.image(ref)).op.identifier == "docker-image://" + normal


@pytest.mark.parametrize("ref", ["Alpine", "a b", "x:", "docker.io/"])
def test_invalid_image_refs(ref):
    with pytest.raises(InputError, match="invalid image reference"):
        llb.image(ref)


def test_image_source_attrs_and_platform():
    op = last(llb.image("busybox", resolve_mode="pull", layer_limit=2), ARM64)
    assert op.op.attrs == {"image.resolvemode": "pull", "image.layerlimit": "2"}
    assert op.platform == ARM64
    explicit = last(llb.image("busybox", platform="linux/arm64/v8"), AMD64)
    assert explicit.platform == ARM64
    assert last(llb.image("busybox", resolve_mode="default")).op.attrs == {}
    with pytest.raises(ValueError, match="resolve mode"):
        llb.image("busybox", resolve_mode="always")


def test_local_source_attrs_have_no_platform():
    op = last(
        llb.local(
            "context",
            include_patterns=["src", "go.*"],
            exclude_patterns=["*.tmp"],
            follow_paths=["Dockerfile"],
            shared_key_hint="ctx",
        )
    )
    assert op.op.identifier == "local://context"
    assert op.op.attrs == {
        "local.includepattern": '["src","go.*"]',
        "local.excludepatterns": '["*.tmp"]',
        "local.followpaths": '["Dockerfile"]',
        "local.sharedkeyhint": "ctx",
    }
    assert op.platform is None


@pytest.mark.parametrize(
    ("args", "identifier", "attrs_"),
    [
        (
            ("https://github.com/moby/buildkit.git",),
            "git://github.com/moby/buildkit.git",
            {
                "git.fullurl": "https://github.com/moby/buildkit.git",
                "git.authheadersecret": "GIT_AUTH_HEADER",
                "git.authtokensecret": "GIT_AUTH_TOKEN",
            },
        ),
        (("github.com/moby/buildkit", "v0.13.0"), "git://github.com/moby/buildkit#v0.13.0", {}),
        (
            ("git@github.com:moby/buildkit.git", "main"),
            "git://github.com/moby/buildkit.git#main",
            # as BuildKit's llb.Git: an SSH remote uses the build's "default" agent
            {"git.fullurl": "git@github.com:moby/buildkit.git", "git.mountsshsock": "default"},
        ),
        (
            ("ssh://git@example.com:2222/team/app.git",),
            "git://example.com:2222/team/app.git",
            {"git.fullurl": "ssh://git@example.com:2222/team/app.git",
             "git.mountsshsock": "default"},
        ),
    ],
)
def test_git_identifiers(args, identifier, attrs_):
    op = last(llb.git(*args))
    assert op.op.identifier == identifier
    assert op.op.attrs == attrs_
    assert op.platform is None


def test_git_subdir_and_keep_git_dir():
    op = last(llb.git("example.com/r", "main", keep_git_dir=True, subdir="docs"))
    assert op.op.identifier == "git://example.com/r#main:docs"
    assert op.op.attrs == {"git.keepgitdir": "true"}
    assert (
        last(llb.git("example.com/r", subdir="docs")).op.identifier == "git://example.com/r#:docs"
    )


def test_http_and_oci_layout_sources():
    op = last(
        llb.http(
            "https://x.test/a.tgz",
            checksum="sha256:" + "c" * 64,
            filename="a.tgz",
            perm=0o755,
            uid=1000,
        )
    )
    assert op.op.identifier == "https://x.test/a.tgz"
    assert op.op.attrs == {
        "http.checksum": "sha256:" + "c" * 64,
        "http.filename": "a.tgz",
        "http.perm": "493",
        "http.uid": "1000",
    }
    oci = last(llb.oci_layout("app@sha256:" + "d" * 64, store_id="s1"))
    assert oci.op.identifier == "oci-layout://app@sha256:" + "d" * 64
    assert oci.op.attrs == {"oci.store": "s1"} and oci.platform == AMD64


def test_scratch_marshals_to_an_empty_definition():
    definition = llb.scratch().marshal()
    assert definition.ops == () and llb.scratch().is_scratch


# ----------------------------------------------------------------------------------------- run


def test_run_applies_state_values():
    base = (
        llb.image("busybox")
        .env("A", "1")
        .env("B", "2")
        .env("A", "3")
        .dir("/app")
        .dir("sub")
        .user("nobody")
        .hostname("h")
        .add_extra_host("db", "10.0.0.2")
        .add_ulimit("nofile", 1, 2)
        .cgroup_parent("/p")
    )
    assert base.get_env("A") == "3" and base.get_dir() == base.cwd == "/app/sub"
    op = last(
        base.run(
            ["echo", "hi"],
            valid_exit_codes=[0, 1],
            secret_env=[llb.SecretEnv("tok", "TOKEN", True)],
        )
    )
    meta = op.op.meta
    assert meta.args == ("echo", "hi")
    assert meta.env == ("A=3", "B=2", f"PATH={llb.DEFAULT_PATH}")
    assert meta.cwd == "/app/sub" and meta.user == "nobody" and meta.hostname == "h"
    assert meta.extra_hosts == (llb.HostIP("db", "10.0.0.2"),)
    assert meta.ulimit == (llb.Ulimit("nofile", 1, 2),) and meta.cgroup_parent == "/p"
    assert meta.valid_exit_codes == (0, 1)
    assert op.op.secretenv == (llb.SecretEnv("tok", "TOKEN", True),)
    assert op.platform == AMD64


def test_run_shell_string_and_own_path():
    op = last(llb.image("busybox").env("PATH", "/bin").run("echo $PATH"))
    assert op.op.meta.args == ("/bin/sh", "-c", "echo $PATH")
    assert op.op.meta.env == ("PATH=/bin",)


def test_run_network_security_from_state_and_overrides():
    s = llb.image("busybox").network(llb.NetMode.NONE).security(llb.SecurityMode.INSECURE)
    op = last(s.run("true"))
    assert (op.op.network, op.op.security) == (llb.NetMode.NONE, llb.SecurityMode.INSECURE)
    op = last(s.run("true", network=llb.NetMode.HOST, security=llb.SecurityMode.SANDBOX))
    assert (op.op.network, op.op.security) == (llb.NetMode.HOST, llb.SecurityMode.SANDBOX)


def test_run_mounts_inputs_and_outputs():
    src = llb.local("ctx")
    run = llb.image("busybox").run(
        "build",
        mounts=[
            llb.mount("/src", src, selector="app", readonly=True),
            llb.mount("/out", llb.scratch()),
            llb.mount("/also", src),
            llb.cache_mount("/cache", "go", sharing=llb.CacheSharingOpt.LOCKED),
            llb.tmpfs("/tmp", size=1 << 20),
            llb.secret("/run/secrets/s", "s", uid=1, mode=0o440, optional=True),
            llb.ssh(),
        ],
    )
    op = last(run.get_mount("/out"))
    assert len(op.inputs) == 2
    by_dest = {m.dest: m for m in op.op.mounts}
    assert [m.dest for m in op.op.mounts] == [
        "/",
        "/also",
        "/cache",
        "/out",
        "/run/buildkit/ssh_agent.0",
        "/run/secrets/s",
        "/src",
        "/tmp",
    ]
    assert by_dest["/"].input == 0 and by_dest["/"].output == 0
    assert by_dest["/src"] == llb.Mount(
        input=1, selector="app", dest="/src", output=-1, readonly=True
    )
    assert by_dest["/also"].input == 1 and by_dest["/also"].output == 1
    assert by_dest["/out"].input == -1 and by_dest["/out"].output == 2
    assert by_dest["/cache"].cache_opt == llb.CacheOpt("go", llb.CacheSharingOpt.LOCKED)
    assert by_dest["/cache"].output == -1 and by_dest["/cache"].input == -1
    assert (
        by_dest["/tmp"].tmpfs_opt == llb.TmpfsOpt(1 << 20)
        and by_dest["/tmp"].mount_type == llb.MountType.TMPFS
    )
    assert by_dest["/run/secrets/s"].secret_opt == llb.SecretOpt("s", 1, 0, 0o440, True)
    assert by_dest["/run/buildkit/ssh_agent.0"].ssh_opt == llb.SSHOpt("default", 0, 0, 0o600, False)
    definition = run.get_mount("/out").marshal(AMD64)
    assert definition.head_input().index == 2
    assert run.root().marshal(AMD64).head_input().index == 0
    with pytest.raises(ValueError, match="no writable mount at '/src'"):
        run.get_mount("/src")
    with pytest.raises(ValueError, match="distinct"):
        llb.scratch().run("x", mounts=[llb.tmpfs("/a"), llb.tmpfs("/a")])
    with pytest.raises(ValueError, match="absolute"):
        llb.tmpfs("rel")


def test_run_on_scratch_has_scratch_root():
    op = last(
        llb.scratch().run(
            ["/bin/x"], mounts=[llb.mount("/bin", llb.image("busybox"), readonly=True)]
        )
    )
    assert op.op.mounts[0] == llb.Mount(input=-1, dest="/", output=0)
    assert op.op.mounts[1].input == 0


# -------------------------------------------------------------------------------------- file


def test_file_chain_indices_and_relative_paths():
    src = llb.local("ctx").dir("/sub")
    base = llb.image("busybox").dir("/work")
    out = base.file(
        llb.mkdir("d", 0o755, make_parents=True, owner="app:staff")
        .copy(
            src,
            "f.txt",
            "d/",
            owner=1000,
            mode=0o644,
            create_dest_path=True,
            include_patterns=["*.txt"],
            timestamp=datetime.datetime(2020, 1, 1),
        )
        .mkfile("/etc/x", 0o600, "data", owner=(0, "wheel"))
        .rm("old/*", allow_not_found=True, allow_wildcard=True)
        .symlink("/etc/x", "link")
    )
    op = last(out)
    assert len(op.inputs) == 2
    actions = op.op.actions
    assert [(a.input, a.secondary_input, a.output) for a in actions] == [
        (0, -1, -1),
        (2, 1, -1),
        (3, -1, -1),
        (4, -1, -1),
        (5, -1, 0),
    ]
    mkdir_ = actions[0].action
    assert mkdir_ == llb.FileActionMkDir(
        "/work/d",
        0o755,
        True,
        owner=llb.ChownOpt(
            llb.UserOpt(llb.NamedUserOpt("app", 0)), llb.UserOpt(llb.NamedUserOpt("staff", 0))
        ),
    )
    copy_ = actions[1].action
    assert (copy_.src, copy_.dest, copy_.mode, copy_.create_dest_path) == (
        "/sub/f.txt",
        "/work/d/",
        0o644,
        True,
    )
    assert copy_.owner == llb.ChownOpt(llb.UserOpt(1000), llb.UserOpt(1000))
    assert copy_.include_patterns == ("*.txt",) and copy_.timestamp == 1577836800 * 10**9
    mkfile_ = actions[2].action
    assert mkfile_.data == b"data" and mkfile_.owner.group.by_name == llb.NamedUserOpt("wheel", 3)
    assert actions[3].action == llb.FileActionRm("/work/old/*", True, True)
    assert actions[4].action == llb.FileActionSymlink("/etc/x", "/work/link")


def test_file_on_scratch_and_copy_from_scratch():
    op = last(llb.scratch().file(llb.copy(llb.image("busybox"), "/bin/busybox", "/busybox")))
    action = op.op.actions[0]
    assert (action.input, action.secondary_input, action.output) == (-1, 0, 0)
    assert action.action.mode == -1 and action.action.timestamp == -1
    op = last(llb.image("busybox").file(llb.copy(llb.scratch(), "/", "/x")))
    assert op.op.actions[0].secondary_input == -1


def test_invalid_owner():
    with pytest.raises(ValueError, match="invalid owner"):
        llb.scratch().file(llb.mkdir("/a", 0o755, owner="a:"))


# ------------------------------------------------------------------------------ merge, diff


def test_merge_and_diff():
    a, b = llb.image("busybox"), llb.local("ctx")
    assert llb.merge([]).is_scratch and llb.merge([llb.scratch()]).is_scratch
    assert llb.merge([llb.scratch(), a]) is a
    op = last(llb.merge([a, llb.scratch(), b, a]))
    assert op.op == llb.MergeOp((llb.MergeInput(0), llb.MergeInput(1), llb.MergeInput(0)))
    assert len(op.inputs) == 2
    d = last(llb.diff(a, a.run("touch /x").root()))
    assert d.op == llb.DiffOp(llb.LowerDiffInput(0), llb.UpperDiffInput(1))
    assert llb.diff(llb.scratch(), b) is b
    assert last(llb.diff(a, llb.scratch())).op.upper == llb.UpperDiffInput(-1)


# --------------------------------------------------------------------------- marshal/metadata


def test_identical_subgraphs_dedupe_and_metadata_merges():
    one = llb.image("busybox").run("make", custom_name="make")
    two = llb.image("busybox").run("make", ignore_cache=True)
    merged = llb.merge([one.root(), two.root()])
    definition = merged.marshal(AMD64)
    assert len(definition.ops) == 4  # image, run, merge, terminal
    digests = definition.digests()
    assert len(set(digests)) == 4
    md = definition.metadata[digests[1]]
    assert md.ignore_cache and md.description == {"llb.customname": "make"}
    caps = definition.metadata[digests[-1]].caps
    assert {"source.image", "exec.meta.base", "mergeop", "meta.ignorecache", "platform"} <= set(
        caps
    )


def test_with_custom_name_keeps_the_digest():
    s = llb.image("busybox").run("true").root()
    named = s.with_custom_name("step 1")
    plain, renamed = s.marshal(AMD64), named.marshal(AMD64)
    assert plain.ops == renamed.ops
    assert renamed.metadata[renamed.head()].description == {"llb.customname": "step 1"}
    assert plain.head() not in plain.metadata


def test_platform_from_state_and_marshal_default():
    s = llb.image("busybox").platform("linux/arm64/v8").run("true")
    assert last(s, AMD64).platform == ARM64
    assert last(llb.image("busybox").run("true"), ARM64).platform == ARM64
    assert llb.image("busybox").marshal().load()  # host default


def test_state_is_immutable():
    base = llb.image("busybox")
    changed = base.env("A", "1").dir("/x").user("u")
    assert base.get_env("A") is None and base.cwd == "/" and base.get_user() == ""
    assert changed.get_env("A") == "1" and changed.env_list() == ("A=1",)
    assert changed.unset_env("A").env_list() == ()


def test_source_locations():
    info = llb.SourceInfo("Dockerfile", b"FROM busybox\nRUN make\n", "Dockerfile")
    rng = llb.Range(llb.Position(2, 0), llb.Position(2, 8))
    s = llb.image("busybox", location=llb.SourceLocation(info, [llb.Range(llb.Position(1, 0))]))
    s = s.run("make", location=llb.SourceLocation(info, [rng]))
    definition = s.marshal(AMD64)
    assert definition.source.infos == (info,)
    digests = definition.digests()
    assert definition.source.locations[digests[1]] == llb.Locations((llb.Location(0, (rng,)),))
    again = llb.Definition.from_bytes(definition.to_bytes())
    assert again == definition


def test_vertex_options_reject_unknown_keywords():
    with pytest.raises(TypeError):
        llb.image("busybox").run("true", no_such_option=1)


def test_progress_group_and_export_cache():
    s = llb.image("busybox", progress_group=llb.ProgressGroup("g", "Group"), export_cache=False)
    definition = s.marshal(AMD64)
    md = definition.metadata[definition.head()]
    assert md.progress_group == llb.ProgressGroup(
        "g", "Group"
    ) and md.export_cache == llb.ExportCache(False)


def test_ops_field_values_survive_load():
    s = llb.image("busybox").run("true", proxy_env=ops.ProxyEnv(http_proxy="http://p:3128"))
    assert last(s).op.meta.proxy_env.http_proxy == "http://p:3128"
