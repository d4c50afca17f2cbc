"""Every Dockerfile feature built for real: the dockerfile.v0 frontend through LocalBridge, the
solver with runc, the exported filesystem and the image config checked field by field."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile

import pytest

from pybk.core import llb
from pybk.core.errors import BuildError, PybkError, UsageError
from pybk.frontends.dockerfile.errors import DockerfileParseError

HOST = llb.host_platform()
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _history(built) -> list[str]:
    return [h["created_by"] for h in built.config["history"]
            if h.get("comment") == "buildkit.dockerfile.v0"]


# ----------------------------------------------------------------------------- predefined ARGs


def test_platform_args(dfbuild):
    b = dfbuild("FROM busybox\n"
                "ARG TARGETPLATFORM TARGETOS TARGETARCH BUILDPLATFORM BUILDARCH TARGETSTAGE\n"
                "RUN echo $TARGETPLATFORM $TARGETOS $TARGETARCH $BUILDPLATFORM $BUILDARCH "
                "$TARGETSTAGE > /p\n")
    assert b.text("p").split() == [str(HOST), HOST.os, HOST.architecture, str(HOST),
                                   HOST.architecture, "default"]
    assert b.config["architecture"] == HOST.architecture and b.config["os"] == "linux"


def test_platform_args_need_declaring_and_can_be_overridden(dfbuild):
    b = dfbuild("FROM --platform=$BUILDPLATFORM busybox AS s\n"
                "RUN echo \"[$TARGETARCH]\" > /undeclared\n"
                "ARG TARGETARCH\n"
                "RUN echo $TARGETARCH > /arch\n", opts={"build-arg:TARGETARCH": "riscv64"})
    assert b.text("undeclared") == "[]\n"
    assert b.text("arch") == "riscv64\n"
    assert not b.warnings or all("not consumed" not in w for w in b.warnings)


def test_target_stage_arg(dfbuild):
    b = dfbuild("FROM busybox AS first\nARG TARGETSTAGE\nRUN echo $TARGETSTAGE > /t\n"
                "FROM busybox\n", opts={"target": "first"})
    assert b.text("t") == "first\n"


def test_from_platform_sets_op_platform(dfbuild):
    b = dfbuild(f"FROM --platform={HOST} busybox\nRUN true\n")
    runs = [op for op in b.ops() if "exec" in op["Op"]]
    assert runs[0]["Op"]["platform"]["architecture"] == HOST.architecture


def test_proxy_args_kept_out_of_history(dfbuild):
    b = dfbuild("FROM busybox\nRUN env | grep -i _proxy | sort > /r\n",
                opts={"build-arg:HTTP_PROXY": "http://proxy.invalid:3128",
                      "build-arg:no_proxy": "localhost"})
    run = next(op for op in b.ops() if "exec" in op["Op"])
    assert run["Op"]["exec"]["meta"]["proxy_env"] == {"http_proxy": "http://proxy.invalid:3128",
                                                      "no_proxy": "localhost"}
    assert _history(b)[-1] == "RUN /bin/sh -c env | grep -i _proxy | sort > /r # buildkit"
    assert b.warnings == []
    assert b.text("r").split() == ["HTTP_PROXY=http://proxy.invalid:3128", "NO_PROXY=localhost",
                                   "http_proxy=http://proxy.invalid:3128", "no_proxy=localhost"]


def test_unused_build_arg_warning(dfbuild):
    b = dfbuild("ARG USED=1\nFROM busybox\nRUN true\n",
                opts={"build-arg:USED": "2", "build-arg:NOPE": "x",
                      "build-arg:BUILDKIT_SANDBOX_HOSTNAME": "h"})
    assert b.warnings == ["[Warning] One or more build-args [NOPE] were not consumed"]


def test_source_date_epoch_sets_created(dfbuild):
    b = dfbuild("FROM busybox\nENV A=1\nRUN true\n", opts={"build-arg:SOURCE_DATE_EPOCH": "86400"})
    assert b.config["created"] == "1970-01-02T00:00:00Z"
    ours = [h for h in b.config["history"] if h.get("comment") == "buildkit.dockerfile.v0"]
    assert [h["created"] for h in ours] == ["1970-01-02T00:00:00Z"] * 2


def test_sandbox_hostname_and_add_hosts(dfbuild):
    b = dfbuild("FROM busybox\nRUN hostname > /h && grep myhost /etc/hosts > /hosts\n",
                opts={"build-arg:BUILDKIT_SANDBOX_HOSTNAME": "sandbox1",
                      "add-hosts": "myhost=10.1.2.3"})
    assert b.text("h") == "sandbox1\n"
    assert b.text("hosts").split() == ["10.1.2.3", "myhost"]


def test_cache_mount_namespace(dfbuild):
    b = dfbuild("FROM busybox\nRUN --mount=type=cache,target=/c,id=pkg true\n",
                opts={"build-arg:BUILDKIT_CACHE_MOUNT_NS": "ns1"})
    run = next(op for op in b.ops() if "exec" in op["Op"])
    cache = next(m for m in run["Op"]["exec"]["mounts"] if m["dest"] == "/c")
    assert cache["cache_opt"]["id"] == "ns1/pkg"


# ----------------------------------------------------------------------------- .dockerignore


def test_dockerignore_excludes_and_reincludes(dfbuild):
    b = dfbuild("FROM scratch\nCOPY . /app/\n",
                {".dockerignore": "# comment\n*.log\nbuild\n!keep.log\n", "a.txt": "a",
                 "x.log": "x", "keep.log": "k", "build/out": "o", "sub/y.log": "y"})
    assert sorted(os.listdir(b.out / "app")) == [".dockerignore", "Dockerfile", "a.txt",
                                                 "keep.log", "sub"]
    assert os.listdir(b.out / "app" / "sub") == ["y.log"]  # *.log only matches at the root


def test_named_dockerignore_replaces_root_one(dfbuild):
    b = dfbuild("FROM scratch\nCOPY . /\n",
                {".dockerignore": "a.txt\n", "build.Dockerfile.dockerignore": "b.txt\n",
                 "a.txt": "a", "b.txt": "b"}, filename="build.Dockerfile")
    assert b.exists("a.txt") and not b.exists("b.txt")


def test_only_needed_context_paths_are_transferred(dfbuild, client):
    from pybk.core.progress.events import EventRecorder

    rec = EventRecorder()
    b = dfbuild("FROM scratch\nCOPY need.txt dir/ /\n",
                {"need.txt": "n", "dir/in.txt": "i", "big.bin": b"\0" * (4 << 20),
                 "other/x": "x"}, client=client, progress=rec)
    assert sorted(os.listdir(b.out)) == ["in.txt", "need.txt"]
    locals_root = client.root if hasattr(client, "root") else None
    synced = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(locals_root, "locals"))
              for f in fs] if locals_root else []
    assert synced and not any(p.endswith(("big.bin", "other/x")) for p in synced)
    assert any(p.endswith("need.txt") for p in synced)
    statuses = [s.id for s in rec.statuses()]
    assert "transferring context: 2 files copied, 0 removed" in statuses


# ----------------------------------------------------------------------------- COPY


def test_copy_wildcards_and_trailing_slash(dfbuild):
    b = dfbuild("FROM scratch\n"
                "COPY *.txt /txt/\n"
                "COPY one.txt /renamed\n"
                "COPY dir /dircontents/\n"
                "COPY dir/ /dircontents2\n"
                "COPY nomatch* /empty/\n",
                {"one.txt": "1", "two.txt": "2", "three.md": "3", "dir/a": "a", "dir/s/b": "b"})
    assert sorted(os.listdir(b.out / "txt")) == ["one.txt", "two.txt"]
    assert b.text("renamed") == "1"
    assert sorted(os.listdir(b.out / "dircontents")) == ["a", "s"]
    assert b.text("dircontents2/s/b") == "b"
    assert not b.exists("empty/x")


def test_copy_source_paths_clamped_to_context(dfbuild):
    b = dfbuild("FROM scratch\nCOPY ../../a.txt /x/\nCOPY /b.txt /x/\n", {"a.txt": "a", "b.txt": "b"})
    assert sorted(os.listdir(b.out / "x")) == ["a.txt", "b.txt"]


def test_copy_parents_with_pivot(dfbuild):
    b = dfbuild("FROM scratch\n"
                "COPY --parents x/y/f.txt /full/\n"
                "COPY --parents ./x/./y/f.txt /pivot/\n"
                "COPY --parents */*.md /md/\n",
                {"x/y/f.txt": "f", "x/other": "o", "a/r.md": "r", "b/s.md": "s", "b/no.txt": "n"})
    assert b.text("full/x/y/f.txt") == "f" and not b.exists("full/x/other")
    assert b.text("pivot/y/f.txt") == "f" and not b.exists("pivot/x")
    assert sorted(os.listdir(b.out / "md")) == ["a", "b"]
    assert os.listdir(b.out / "md" / "b") == ["s.md"]


def test_copy_exclude(dfbuild):
    b = dfbuild("FROM scratch\nCOPY --exclude=*.tmp --exclude=cache src /app/\n",
                {"src/a.py": "a", "src/b.tmp": "b", "src/cache/c": "c", "src/pkg/d.py": "d"})
    assert sorted(os.listdir(b.out / "app")) == ["a.py", "pkg"]


def test_copy_link_is_a_merge(dfbuild):
    b = dfbuild("FROM busybox\nRUN echo base > /base\nCOPY --link f.txt /linked/\n"
                "RUN cat /base /linked/f.txt > /both\n", {"f.txt": "F\n"})
    assert b.text("both") == "base\nF\n"
    assert any("merge" in op["Op"] for op in b.ops())
    assert _history(b)[1] == "COPY f.txt /linked/ # buildkit"


def test_copy_link_with_chmod_falls_back_to_copy(dfbuild):
    b = dfbuild("FROM busybox\nCOPY --link --chmod=u+x,go=r f.sh /\n", {"f.sh": ("x", 0o600)})
    assert not any("merge" in op["Op"] for op in b.ops())
    assert b.mode("f.sh") == 0o744


def test_copy_chmod_symbolic_and_octal(dfbuild):
    b = dfbuild("FROM scratch\nCOPY --chmod=g+w,o-r a /s/\nCOPY --chmod=0751 a /o/\n"
                "COPY --chmod=a+X d /dirs/\n",
                {"a": ("a", 0o644), "d/f": ("f", 0o644)})
    assert b.mode("s/a") == 0o660
    assert b.mode("o/a") == 0o751
    assert b.mode("dirs/f") == 0o644 and b.mode("dirs") & 0o111 == 0o111


def test_copy_chown_names_and_ids(dfbuild):
    b = dfbuild("FROM busybox\nCOPY --chown=tester a /n\nCOPY --chown=12:34 a /i\n"
                "COPY --chown=tester:root a /m\n", {"a": "a"})
    assert b.owner("n") == (1000, 1000)
    assert b.owner("i") == (12, 34)
    assert b.owner("m") == (1000, 0)


def test_copy_from_image_stage_index_and_named_context(dfbuild):
    b = dfbuild("FROM busybox AS tools\nRUN echo t > /t\n"
                "FROM scratch\nCOPY --from=0 /t /from-index\nCOPY --from=tools /t /from-name\n"
                "COPY --from=busybox /bin/busybox /bb\n")
    assert b.text("from-index") == b.text("from-name") == "t\n"
    assert b.mode("bb") & 0o111


def test_copy_heredocs(dfbuild):
    b = dfbuild("FROM busybox\nARG WHO=world\n"
                "COPY <<EOF /expanded\nhello $WHO\nEOF\n"
                "COPY <<'EOF' /literal\nhello $WHO\nEOF\n"
                "COPY --chmod=755 <<-EOF /chomped\n\t\tindented\n\tEOF\n")
    assert b.text("expanded") == "hello world\n"
    assert b.text("literal") == "hello $WHO\n"
    assert b.text("chomped") == "indented\n" and b.mode("chomped") == 0o755


def test_copy_preserves_symlinks_and_hardlinks(dfbuild):
    b = dfbuild("FROM busybox AS made\nRUN mkdir /d && echo data > /d/f && ln /d/f /d/hard\n"
                "FROM scratch\nCOPY tree /t/\nCOPY --from=made /d /h/\n",
                {"tree/f": "data", "tree/link": ("symlink", "f")})
    assert os.readlink(b.out / "t" / "link") == "f"
    assert (b.out / "h" / "hard").stat().st_ino == (b.out / "h" / "f").stat().st_ino


def test_run_deletions_are_exported(dfbuild):
    b = dfbuild("FROM busybox\nRUN rm /bin/ls && rm -r /etc/group\n")
    assert not b.exists("bin/ls") and not b.exists("etc/group")
    assert b.exists("bin/busybox")


def test_copy_errors_are_located(dfbuild):
    with pytest.raises(DockerfileParseError, match="destination must be a directory") as err:
        dfbuild("FROM scratch\nCOPY a b /x\n", {"a": "", "b": ""})
    assert err.value.line == 2
    with pytest.raises(DockerfileParseError, match="source can't be a URL for COPY"):
        dfbuild("FROM scratch\nCOPY http://127.0.0.1:1/x /x\n")
    with pytest.raises(DockerfileParseError, match="doesn't support variable expansion"):
        dfbuild("FROM busybox AS s\nFROM scratch\nARG S=s\nCOPY --from=$S /x /x\n")
    with pytest.raises(PybkError, match="checksum"):
        dfbuild("FROM scratch\nADD --checksum=sha256:00 a /a\n", {"a": ""})


# ----------------------------------------------------------------------------- ADD


def test_add_local_tar_is_unpacked(dfbuild):
    archive = _tar_gz({"pkg/one": b"1", "pkg/two": b"2"})
    b = dfbuild("FROM scratch\nADD a.tar.gz /x/\nADD --unpack=false a.tar.gz /y/\n",
                {"a.tar.gz": archive})
    assert b.text("x/pkg/one") == "1" and b.mode("x/pkg/two") == 0o640
    assert (b.out / "y" / "a.tar.gz").read_bytes() == archive


def test_add_url_with_checksum(dfbuild, http_root):
    root, base = http_root
    (root / "file.txt").write_text("downloaded\n")
    digest = "sha256:" + hashlib.sha256(b"downloaded\n").hexdigest()
    b = dfbuild(f"FROM scratch\nADD --checksum={digest} {base}/file.txt /dl/\n"
                f"ADD --chmod=644 {base}/file.txt /named\n")
    assert b.text("dl/file.txt") == "downloaded\n" and b.mode("dl/file.txt") == 0o600
    assert b.mode("named") == 0o644
    with pytest.raises(BuildError, match="checksum|digest"):
        dfbuild(f"FROM scratch\nADD --checksum=sha256:{'0' * 64} {base}/file.txt /dl/\n")


def test_add_url_archives_unpack_only_on_request(dfbuild, http_root):
    root, base = http_root
    (root / "r.tar.gz").write_bytes(_tar_gz({"inner": b"in"}))
    b = dfbuild(f"FROM scratch\nADD {base}/r.tar.gz /kept/\nADD --unpack=true {base}/r.tar.gz /un/\n")
    assert b.exists("kept/r.tar.gz") and not b.exists("kept/inner")
    assert b.text("un/inner") == "in"


def test_add_git(dfbuild, git_repo):
    url, commit = git_repo
    b = dfbuild(f"FROM scratch\nADD {url}#main /src/\n")
    assert b.text("src/README") == "from git\n" and not b.exists("src/.git")
    assert b.mode("src/src/main.sh") & 0o111
    b = dfbuild(f"FROM scratch\nADD --keep-git-dir=true {url}#v1 /withgit/\n")
    assert b.exists("withgit/.git/HEAD") and b.text("withgit/README") == "from git\n"
    b = dfbuild(f"FROM scratch\nADD --checksum={commit[:12]} {url}#main:src /sub/\n")
    assert os.listdir(b.out / "sub") == ["main.sh"]
    source = next(op["Op"]["source"] for op in b.ops() if "source" in op["Op"])
    assert source["attrs"]["git.checksum"] == commit[:12]
    assert source["identifier"].endswith("/repo.git#main:src")
    with pytest.raises(DockerfileParseError, match="checksum mismatch"):
        dfbuild(f"FROM scratch\nADD --checksum=abc {url}?commit=def#main /bad/\n")


# ----------------------------------------------------------------------------- RUN


def test_run_heredoc_shebang_script(dfbuild):
    b = dfbuild("FROM busybox\nRUN <<EOF\n#!/bin/sh\necho \"script:$0\" > /shebang\nEOF\n"
                "RUN <<EOT\necho plain > /plain\nEOT\n")
    assert b.text("shebang") == "script:/dev/pipes/EOF\n"
    assert b.text("plain") == "plain\n"
    assert not b.exists("dev/pipes/EOF")


def test_run_several_heredocs(dfbuild):
    b = dfbuild("FROM busybox\nRUN cat <<A > /a && cat <<-B > /b\none\nA\n\ttwo\n\tB\n")
    assert b.text("a") == "one\n" and b.text("b") == "two\n"


def test_run_cache_mount_options(dfbuild):
    b = dfbuild("FROM busybox\n"
                "RUN --mount=type=cache,id=c1,target=/c,mode=0750,uid=1000,gid=1001,sharing=locked"
                " stat -c %a:%u:%g /c > /perm && echo kept > /c/f\n"
                "RUN --mount=type=cache,id=c1,target=/again,uid=1000,gid=1001,mode=0750 "
                "cat /again/f > /read\n"
                "RUN --mount=type=cache,id=c1,target=/ro,ro,uid=1000,gid=1001,mode=0750 "
                "touch /ro/x 2> /dev/null; echo $? > /rostatus\n")
    assert b.text("perm") == "750:1000:1001\n"
    assert b.text("read") == "kept\n"
    assert b.text("rostatus") != "0\n"
    assert not b.exists("c/f")


def test_run_cache_mount_from_stage(dfbuild):
    b = dfbuild("FROM busybox AS seed\nRUN mkdir /s && echo seeded > /s/v\n"
                "FROM busybox\nRUN --mount=type=cache,target=/c,from=seed,source=/s,id=seeded "
                "cat /c/v > /out\n")
    assert b.text("out") == "seeded\n"


def test_run_bind_mounts(dfbuild):
    b = dfbuild("FROM busybox AS src\nRUN mkdir /d && echo s > /d/f\n"
                "FROM busybox\nWORKDIR /w\n"
                "RUN --mount=from=src,source=/d,target=/m touch /m/x 2>/dev/null; echo $? > /ro\n"
                "RUN --mount=from=src,source=/d,target=rel,rw touch rel/x && ls rel > /rw\n"
                "RUN --mount=source=ctx,target=/ctx cat /ctx/c > /fromctx\n",
                {"ctx/c": "C\n"})
    assert b.text("ro") != "0\n"
    assert b.text("rw").split() == ["f", "x"]
    assert not b.exists("w/rel/x")
    assert b.text("fromctx") == "C\n"


def test_run_tmpfs_mount_size(dfbuild):
    b = dfbuild("FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=1m "
                "df -k /t | tail -1 | awk '{print $2}' > /size && touch /t/gone\n")
    assert b.text("size") == "1024\n"
    assert not b.exists("t/gone")


def test_run_secret_mounts(dfbuild):
    b = dfbuild("FROM busybox\n"
                "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /a\n"
                "RUN --mount=type=secret,id=tok,target=/s/t,mode=0440,uid=1000,gid=2 "
                "stat -c %a:%u:%g /s/t > /b\n"
                "RUN --mount=type=secret,id=tok,env=TOKEN echo \"$TOKEN\" > /c\n"
                "RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent\n",
                secrets={"tok": b"s3cret"})
    assert b.text("a") == "s3cret"
    assert b.text("b") == "440:1000:2\n"
    assert b.text("c") == "s3cret\n"
    assert not b.exists("run/secrets/tok")
    with pytest.raises(BuildError, match="absent|secret"):
        dfbuild("FROM busybox\nRUN --mount=type=secret,id=absent,required true\n")


def test_run_ssh_mount(dfbuild, tmp_path):
    sock_path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(1)
    try:
        b = dfbuild("FROM busybox\nRUN --mount=type=ssh test -S /run/buildkit/ssh_agent.0 "
                    "&& echo $SSH_AUTH_SOCK > /sock\n"
                    "RUN --mount=type=ssh,id=other,target=/agent,required=false test ! -S /agent\n",
                    ssh={"default": sock_path})
        assert b.text("sock") == "/run/buildkit/ssh_agent.0\n"
    finally:
        server.close()


def test_run_network_and_security(dfbuild, client):
    b = dfbuild("FROM busybox\nRUN --network=none ls /sys/class/net > /nets\n")
    assert b.text("nets").split() == ["lo"]
    # granted by the configuration (dfbuild's client) but not asked for by the build
    with pytest.raises(BuildError, match="network.host"):
        dfbuild("FROM busybox\nRUN --network=host true\n")
    with pytest.raises(BuildError, match="security.insecure"):
        dfbuild("FROM busybox\nRUN --security=insecure true\n")
    b = dfbuild("FROM busybox\nRUN --network=host echo ok > /ok\n", entitlements=("network.host",))
    assert b.text("ok") == "ok\n"
    with pytest.raises(BuildError, match="network.host"):  # the cached step needs it too
        dfbuild("FROM busybox\nRUN --network=host echo ok > /ok\n")
    # asked for, but a client with the default configuration grants nothing
    with pytest.raises(UsageError, match="granting entitlement network.host is not allowed by "
                                         "build daemon configuration"):
        dfbuild("FROM busybox\nRUN --network=host true\n", entitlements=("network.host",),
                client=client)


def test_run_history_lists_args(dfbuild):
    b = dfbuild("FROM busybox\nARG A=1 B\nENV B=env\nRUN echo $A\nRUN [\"/bin/true\"]\n",
                opts={"build-arg:B": "2"})
    assert _history(b) == ["ARG A=1 B", "ENV B=env", "RUN |2 A=1 B=env /bin/sh -c echo $A # buildkit",
                           "RUN |2 A=1 B=env /bin/true # buildkit"]


# ----------------------------------------------------------------------------- ONBUILD


def test_onbuild_triggers_run_in_children(dfbuild):
    b = dfbuild("FROM busybox AS parent\nONBUILD RUN echo triggered > /triggered\n"
                "ONBUILD COPY f /f\nRUN echo p > /p\n"
                "FROM parent AS child\nRUN cat /triggered /f > /both\n", {"f": "F\n"})
    assert b.text("both") == "triggered\nF\n"
    assert "OnBuild" not in b.cfg
    parent = dfbuild("FROM busybox AS parent\nONBUILD RUN echo triggered > /triggered\n")
    assert not parent.exists("triggered")
    assert parent.cfg["OnBuild"] == ["RUN echo triggered > /triggered"]


# ----------------------------------------------------------------------------- config and history


def test_config_fields_and_history(dfbuild):
    b = dfbuild("FROM busybox\n"
                "MAINTAINER someone\n"
                "ENV A=1 B=\"two words\"\n"
                "LABEL org.x.v=$A other=x\n"
                "EXPOSE 80 53/udp\n"
                "VOLUME [\"/data\", \"/logs\"]\n"
                "STOPSIGNAL SIGKILL\n"
                "HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD wget -q localhost\n"
                "SHELL [\"/bin/sh\", \"-ec\"]\n"
                "USER 1000:1000\n"
                "WORKDIR /app\n"
                "ENTRYPOINT [\"/bin/echo\"]\n"
                "CMD hello\n",
                opts={"label:from-opt": "yes"})
    cfg = b.cfg
    assert b.config["author"] == "someone"
    assert cfg["Env"] == [PATH_ENV, "A=1", "B=two words"]
    assert cfg["Labels"] == {"org.x.v": "1", "other": "x", "from-opt": "yes"}
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}}
    assert cfg["StopSignal"] == "SIGKILL"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"],
                                  "Interval": 5_000_000_000, "Timeout": 3_000_000_000,
                                  "Retries": 2}
    assert cfg["Shell"] == ["/bin/sh", "-ec"]
    assert cfg["User"] == "1000:1000"
    assert cfg["WorkingDir"] == "/app"
    assert cfg["Entrypoint"] == ["/bin/echo"]
    assert cfg["Cmd"] == ["/bin/sh", "-ec", "hello"]
    assert b.owner("app") == (1000, 1000)
    assert _history(b) == [
        "MAINTAINER someone", "ENV A=1 B=two words", "LABEL org.x.v=1 other=x",
        "EXPOSE map[53/udp:{} 80/tcp:{}]", "VOLUME [/data /logs]", "STOPSIGNAL SIGKILL",
        "HEALTHCHECK &{[\"CMD-SHELL\" \"wget -q localhost\"] \"5s\" \"3s\" \"0s\" \"0s\" '\\x02'}",
        "SHELL [/bin/sh -ec]", "USER 1000:1000", "WORKDIR /app",
        "ENTRYPOINT [\"/bin/echo\"]", "CMD [\"/bin/sh\" \"-ec\" \"hello\"]"]
    empty = [h.get("empty_layer", False) for h in b.config["history"][-12:]]
    assert empty == [True] * 9 + [False, True, True]


def test_scratch_config_defaults(dfbuild):
    b = dfbuild("FROM scratch\nCOPY a /\n", {"a": "a"})
    assert b.config["architecture"] == HOST.architecture and b.config["os"] == "linux"
    assert b.cfg == {"Env": [PATH_ENV]}
    assert _history(b) == ["COPY a / # buildkit"]


# ----------------------------------------------------------------------------- contexts, cache


def test_named_context_target_alias(dfbuild):
    b = dfbuild("FROM busybox AS real\nRUN echo real > /r\nFROM scratch\nCOPY --from=alias /r /r\n",
                opts={"context:alias": "target:real"})
    assert b.text("r") == "real\n"


def test_named_contexts_override_stages(dfbuild, tmp_path):
    other = tmp_path / "other-ctx"
    other.mkdir()
    (other / "o").write_text("other\n")
    (other / ".dockerignore").write_text("ignored\n")
    (other / "ignored").write_text("x")
    b = dfbuild("FROM busybox AS stage\nRUN echo stage > /s\nFROM scratch\n"
                "COPY --from=stage / /got/\n",
                opts={"context:stage": "local:extra"}, extra_locals={"extra": str(other)})
    assert sorted(os.listdir(b.out / "got")) == [".dockerignore", "o"]
    b = dfbuild("FROM scratch AS stage\nFROM scratch\nCOPY --from=stage / /got/\n",
                opts={"context:stage": "docker-image://scratch"})
    assert not b.exists("got/o")


def test_no_cache_filter_marks_only_that_stage(dfbuild):
    b = dfbuild("FROM busybox AS a\nRUN echo a > /a\nFROM busybox AS b\nCOPY --from=a /a /a\n"
                "RUN echo b > /b\n", opts={"no-cache": "b"})
    meta = {op["Digest"]: (op.get("OpMetadata") or {}) for op in b.ops()}
    names = {d: m.get("description", {}).get("llb.customname", "") for d, m in meta.items()}
    ignored = sorted(names[d] for d, m in meta.items() if m.get("ignore_cache"))
    assert ignored == ["[b 2/3] COPY --from=a /a /a", "[b 3/3] RUN echo b > /b"]
    assert b.text("b") == "b\n"


def test_ops_carry_source_locations(dfbuild):
    b = dfbuild("FROM busybox\n\nRUN echo one \\\n  two\nCOPY a /a\n", {"a": "a"})
    source = b.definition.source
    assert source.infos[0].filename == "Dockerfile"
    lines = sorted((loc.locations[0].ranges[0].start.line, loc.locations[0].ranges[0].end.line)
                   for loc in source.locations.values())
    assert lines == [(3, 4), (5, 5)]  # FROM busybox is a named context: no op of its own
