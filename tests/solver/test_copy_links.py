"""A copy from a synced local context hard-links unchanged files into the new layer.

Every test checks what the link may never break: the linked file is never changed afterwards
(by a new sync, a later step, a later action of the same FileOp), no metadata is applied
through a link, exports read the content, and pruning the context keeps the snapshots whole.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from pybk.core import llb
from pybk.core.progress.events import EventRecorder


def _context(path, files=20):
    for i in range(files):
        (path / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (path / f"d{i % 3}" / f"f{i}.txt").write_text(f"file {i}\n")
    return path


def _locals(client):
    """The files of the store's synced local directories."""
    root = os.path.join(client.worker().store.root, "locals")
    return {os.path.relpath(os.path.join(d, f), root).split("/", 1)[1]: os.path.join(d, f)
            for d, _, files in os.walk(root) if d != root for f in files}


def _nlinks(client):
    return {rel: os.stat(p).st_nlink for rel, p in _locals(client).items()}


def _overlay(client):
    if client.worker().store.snapshotter.name != "overlayfs":
        pytest.skip("hard-linked copies need the overlayfs snapshotter")


def test_whole_context_copy_links_and_later_run_copies_up(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx")
    os.chmod(ctx / "d0" / "f0.txt", 0o600)
    copied = llb.image(busybox_ref).file(llb.copy(llb.local("context"), "/", "/app",
                                                  create_dest_path=True))
    state = copied.run("echo more >> /app/d0/f0.txt; echo x >> /app/d1/f1.txt").root()
    result = client.solve(state, local_dirs={"context": str(ctx)}, progress=None)
    assert set(_nlinks(client).values()) == {2}  # each file: the context and the COPY's layer

    client.export_local(result, tmp_path / "out")
    assert (tmp_path / "out" / "app" / "d0" / "f0.txt").read_text() == "file 0\nmore\n"
    assert (tmp_path / "out" / "app" / "d2" / "f2.txt").read_text() == "file 2\n"
    st = os.stat(tmp_path / "out" / "app" / "d0" / "f0.txt")
    assert (st.st_uid, st.st_gid) == (0, 0)
    # the RUN wrote its own copy-up; the context and the COPY's layer are unchanged
    assert Path(_locals(client)["d0/f0.txt"]).read_text() == "file 0\n"
    copy_only = client.solve(copied, local_dirs={"context": str(ctx)}, progress=None)
    client.export_local(copy_only, tmp_path / "copy")
    f0 = tmp_path / "copy" / "app" / "d0" / "f0.txt"
    assert f0.read_text() == "file 0\n"
    assert os.stat(f0).st_mode & 0o777 == 0o600
    assert os.stat(f0).st_mtime_ns == os.stat(ctx / "d0" / "f0.txt").st_mtime_ns


def test_changed_file_is_new_and_old_snapshot_keeps_old_content(make_client, busybox_ref,
                                                                 tmp_path):
    ctx = _context(tmp_path / "ctx")
    state = llb.image(busybox_ref).file(llb.copy(llb.local("context"), "/", "/app",
                                                 create_dest_path=True))
    client = make_client()
    _overlay(client)
    first = client.solve(state, local_dirs={"context": str(ctx)}, progress=None)
    (ctx / "d1" / "f4.txt").write_text("changed\n")
    second = make_client().solve(state, local_dirs={"context": str(ctx)}, progress=None)
    client.export_local(first, tmp_path / "one")
    client.export_local(second, tmp_path / "two")
    assert (tmp_path / "one" / "app" / "d1" / "f4.txt").read_text() == "file 4\n"
    assert (tmp_path / "two" / "app" / "d1" / "f4.txt").read_text() == "changed\n"
    # unchanged files are linked into both layers, the changed one is a new inode
    links = _nlinks(client)
    assert links["d1/f4.txt"] == 2 and links["d0/f0.txt"] == 3


def test_copy_setting_owner_mode_or_time_copies_instead(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    base = llb.image(busybox_ref)
    chains = [llb.copy(llb.local("context"), "/", "/owned", create_dest_path=True,
                       owner=(1000, 1000)),
              llb.copy(llb.local("context"), "/", "/moded", create_dest_path=True, mode=0o700),
              llb.copy(llb.local("context"), "/", "/stamped", create_dest_path=True,
                       timestamp=1_000_000_000)]
    for i, chain in enumerate(chains):
        result = client.solve(base.file(chain), local_dirs={"context": str(ctx)}, progress=None)
        client.export_local(result, tmp_path / f"out{i}")
    assert set(_nlinks(client).values()) == {1}
    st = os.stat(tmp_path / "out0" / "owned" / "d0" / "f0.txt")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert os.stat(tmp_path / "out1" / "moded" / "d0" / "f0.txt").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "out2" / "stamped" / "d0" / "f0.txt").st_mtime_ns == 1_000_000_000
    assert os.stat(ctx / "d0" / "f0.txt").st_mode & 0o777 == 0o644


def test_later_action_of_same_fileop_never_writes_a_linked_file(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    chain = llb.copy(llb.local("context"), "/", "/app", create_dest_path=True).mkfile(
        "/app/d0/f0.txt", 0o644, b"overwritten\n")
    result = client.solve(llb.image(busybox_ref).file(chain),
                          local_dirs={"context": str(ctx)}, progress=None)
    client.export_local(result, tmp_path / "out")
    assert (tmp_path / "out" / "app" / "d0" / "f0.txt").read_text() == "overwritten\n"
    assert (tmp_path / "out" / "app" / "d1" / "f1.txt").read_text() == "file 1\n"
    assert Path(_locals(client)["d0/f0.txt"]).read_text() == "file 0\n"
    assert set(_nlinks(client).values()) == {1}


def test_one_view_never_shows_a_file_twice(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    local = llb.local("context")
    stacked = llb.image(busybox_ref).file(llb.copy(local, "/", "/a", create_dest_path=True)) \
        .file(llb.copy(local, "/", "/b", create_dest_path=True))
    other_base = llb.scratch().file(llb.mkdir("/other", 0o755))
    merged = llb.merge([
        llb.image(busybox_ref).file(llb.copy(local, "/", "/c", create_dest_path=True)),
        other_base.file(llb.copy(local, "/", "/d", create_dest_path=True))])
    for name, state in (("stacked", stacked), ("merged", merged)):
        result = client.solve(state, local_dirs={"context": str(ctx)}, progress=None)
        out = tmp_path / name
        client.export_local(result, out)
        first, second = ("a", "b") if name == "stacked" else ("c", "d")
        one, two = out / first / "d0" / "f0.txt", out / second / "d0" / "f0.txt"
        assert one.read_text() == two.read_text() == "file 0\n"
        assert os.stat(one).st_nlink == os.stat(two).st_nlink == 1
        with result.mount() as root:
            a = os.stat(os.path.join(root, first, "d0", "f0.txt"))
            b = os.stat(os.path.join(root, second, "d0", "f0.txt"))
            assert (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)
    assert set(_nlinks(client).values()) == {4}  # the context, /a, /c, /d; /b is a copy


def test_copy_onto_scratch_copies(client, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    result = client.solve(llb.scratch().file(llb.copy(llb.local("context"), "/", "/")),
                          local_dirs={"context": str(ctx)}, progress=None)
    client.export_local(result, tmp_path / "out")
    assert (tmp_path / "out" / "d1" / "f1.txt").read_text() == "file 1\n"
    assert set(_nlinks(client).values()) == {1}


def test_source_hardlinks_stay_linked_together(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    os.link(ctx / "d0" / "f0.txt", ctx / "twin.txt")
    result = client.solve(llb.image(busybox_ref).file(
        llb.copy(llb.local("context"), "/", "/app", create_dest_path=True)),
        local_dirs={"context": str(ctx)}, progress=None)
    with result.mount() as root:
        a = os.stat(os.path.join(root, "app", "d0", "f0.txt"))
        b = os.stat(os.path.join(root, "app", "twin.txt"))
        assert a.st_ino == b.st_ino and a.st_nlink >= 2


def test_copy_into_existing_lower_directory(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    base = llb.image(busybox_ref)
    result = client.solve(base.file(llb.copy(llb.local("context"), "/d0/f0.txt", "/etc/")),
                          local_dirs={"context": str(ctx)}, progress=None)
    before = client.solve(base, progress=None)
    with before.mount() as root:
        etc_before = sorted(os.listdir(os.path.join(root, "etc")))
        etc_mtime = os.stat(os.path.join(root, "etc")).st_mtime_ns
    client.export_local(result, tmp_path / "out")
    assert (tmp_path / "out" / "etc" / "f0.txt").read_text() == "file 0\n"
    assert sorted(os.listdir(tmp_path / "out" / "etc")) == sorted([*etc_before, "f0.txt"])
    with result.mount() as root:
        assert os.stat(os.path.join(root, "etc")).st_mtime_ns == etc_mtime
    assert _nlinks(client)["d0/f0.txt"] == 2


def test_pruned_context_and_oci_export_keep_content(client, busybox_ref, tmp_path):
    _overlay(client)
    ctx = _context(tmp_path / "ctx", files=3)
    state = llb.image(busybox_ref).file(llb.copy(llb.local("context"), "/", "/app",
                                                 create_dest_path=True))
    result = client.solve(state, local_dirs={"context": str(ctx)}, progress=None)
    assert _nlinks(client)["d2/f2.txt"] == 2
    pruned = client.worker().store.prune(["type==source.local"])
    assert [p.record_type for p in pruned] == ["source.local"] and not _locals(client)
    client.export_local(result, tmp_path / "out")
    assert (tmp_path / "out" / "app" / "d2" / "f2.txt").read_text() == "file 2\n"

    rec = EventRecorder()
    client.solve(state, local_dirs={"context": str(ctx)}, progress=rec,
                 outputs=[{"type": "oci", "dest": str(tmp_path / "img.tar")}])
    with tarfile.open(tmp_path / "img.tar") as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest = json.load(tar.extractfile(
            "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
        top = manifest["layers"][-1]["digest"].split(":")[1]
        with tarfile.open(fileobj=tar.extractfile(f"blobs/sha256/{top}")) as layer:
            names = layer.getnames()
            assert layer.extractfile("app/d2/f2.txt").read() == b"file 2\n"
            assert not any(m.islnk() for m in layer.getmembers())
    assert "app/d0/f0.txt" in names


def test_checksums_of_committed_snapshots_are_kept_with_them(client, busybox_ref, monkeypatch):
    """A COPY --from another stage needs the checksum of the copied files: computed once per
    committed snapshot (mounting it), then read from the store; pruning the snapshot drops it."""
    from pybk.core.solver import ops
    from pybk.core.store.records import RECORD_CHECKSUM_PREFIX

    stage = llb.image(busybox_ref).run("echo staged > /staged").root()
    state = llb.image(busybox_ref).file(llb.copy(stage, "/staged", "/copied"))
    mounted = []
    real = ops.read_ref
    monkeypatch.setattr(ops, "read_ref",
                        lambda store, ref: mounted.append(ref) or real(store, ref))
    first = client.solve(state, progress=None)
    assert len(mounted) == 2  # the checksum, then the copy
    mounted.clear()
    second = client.solve(state, progress=None)
    assert mounted == [] and second.cache_key == first.cache_key

    store = client.worker().store
    kept = store.query("SELECT key FROM meta WHERE key LIKE ?", (RECORD_CHECKSUM_PREFIX + "%",))
    assert len(kept) == 1
    store.prune(all=True)
    assert store.query("SELECT key FROM meta WHERE key LIKE ?",
                       (RECORD_CHECKSUM_PREFIX + "%",)) == []
    mounted.clear()
    third = client.solve(state, progress=None)
    assert len(mounted) == 2 and third.cache_key == first.cache_key
