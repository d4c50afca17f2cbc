"""Cache mounts that travel with a remote cache (``cache-mounts=true``, a pybk extension).

A step ``ls /cache > /out; …; echo x > /cache/f`` with ``--mount=type=cache,id=c`` runs on
store A and its cache is exported; on a fresh store B a step whose text differs (so it misses
the cache and runs) lists what its cache mount holds. Every backend exercised here (local, s3 on
moto, gha on the test cache service) stores the same format.
"""

from __future__ import annotations

import json

import pytest

from pybk.core import llb
from pybk.core.progress.events import EventRecorder
from pybk.core.remotecache.config import ANNOTATION_CACHE_MOUNT, CACHE_MOUNTS_KEY, CacheConfig

pytestmark = pytest.mark.slow


#: the backends the tests below run on (the conftest's ``cache_backend``, narrowed)
on_backends = pytest.mark.parametrize("cache_backend", ["local", "s3", "gha", "azblob", "registry"],
                                      indirect=True)


def step(base_digest, text, ids=("c",)):
    """One RUN listing each cache mount (and its file ``f``) into /out-ID, then writing
    ``text`` into ``f``."""
    base = llb.oci_layout(f"busybox@{base_digest}", store_id="base")
    script = "; ".join(f"ls /cache-{i} > /out-{i}; cat /cache-{i}/f >> /out-{i} 2>/dev/null;"
                       f" echo {text} > /cache-{i}/f" for i in ids)
    return base.run(script, mounts=[llb.cache_mount(f"/cache-{i}", i) for i in ids]).root()


def build(client, state, layout, tmp_path, name, *, imports=(), exports=()):
    rec = EventRecorder()
    result = client.solve(state, oci_layouts={"base": str(layout)}, progress=rec,
                          cache_imports=imports, cache_exports=exports)
    out = tmp_path / f"fs-{name}"
    client.export_local(result, out)
    return result, rec, out


def statuses(rec, prefix):
    return {s.id: s for s in rec.statuses() if s.id.startswith(prefix) and s.completed}


def warnings(rec):
    return [w.short.decode() for u in rec.updates for w in u.warnings]


@on_backends
def test_cache_mount_travels(new_client, cache_backend, busybox_layout, base_digest, tmp_path):
    a = new_client("a")
    result, rec, out = build(a, step(base_digest, "x"), busybox_layout, tmp_path, "a",
                             exports=[cache_backend.to(**{"cache-mounts": "true"})])
    assert (out / "out-c").read_text() == ""
    [exported] = statuses(rec, "exporting cache mount ").values()
    assert exported.id == "exporting cache mount c" and exported.total > 0
    response = result.metadata["cache.responses"][0]
    # the base layer, the step's layer and the cache mount
    assert response["cache.blobs.uploaded"] == response["cache.blobs.total"] == 3
    # the same contents make the same blob: a second export uploads nothing
    again, _, _ = build(a, step(base_digest, "x"), busybox_layout, tmp_path, "a2",
                        exports=[cache_backend.to(**{"cache-mounts": "true"})])
    # (the step is cached now: its cache mount is exported all the same)
    assert again.metadata["cache.responses"][0]["cache.blobs.uploaded"] == 0
    assert again.metadata["cache.responses"][0]["cache.blobs.total"] == 3

    b = new_client("b")
    _, rec, out = build(b, step(base_digest, "y"), busybox_layout, tmp_path, "b",
                        imports=[cache_backend.from_(**{"cache-mounts": "true"})])
    assert b.executor.calls == 1
    assert (out / "out-c").read_text() == "f\nx\n"
    [imported] = statuses(rec, "importing cache mount ").values()
    assert imported.id == "importing cache mount c"
    assert imported.current == imported.total == exported.total
    assert not warnings(rec)
    # restored, then written by the step: the store's cache mount holds the step's own write
    assert (b.worker().store.cache_mount_path("c") / "f").read_text() == "y\n"

    # a cache exported with cache-mounts=true imports as any other (the step is cached)
    c = new_client("c")
    _, rec, _ = build(c, step(base_digest, "x"), busybox_layout, tmp_path, "c",
                      imports=[cache_backend.from_()])
    assert c.executor.calls == 0 and not warnings(rec)
    assert not statuses(rec, "importing cache mount ")
    # a step found in the cache restores nothing, even when asked to
    d = new_client("d")
    _, rec, _ = build(d, step(base_digest, "x"), busybox_layout, tmp_path, "d",
                      imports=[cache_backend.from_(**{"cache-mounts": "true"})])
    assert d.executor.calls == 0 and not warnings(rec)
    assert not statuses(rec, "importing cache mount ")
    assert not d.worker().store.has_cache_mount("c")


@on_backends
def test_nothing_travels_without_the_attribute(new_client, cache_backend, busybox_layout, base_digest,
                                               tmp_path):
    a = new_client("a")
    build(a, step(base_digest, "x"), busybox_layout, tmp_path, "a",
          exports=[cache_backend.to(**{"cache-mounts": "true"})])
    # an import without cache-mounts=true restores nothing
    b = new_client("b")
    _, rec, out = build(b, step(base_digest, "y"), busybox_layout, tmp_path, "b",
                        imports=[cache_backend.from_()])
    assert b.executor.calls == 1
    assert (out / "out-c").read_text() == ""
    assert not statuses(rec, "importing cache mount ")

    # an export without it writes no cache mount: a later opted-in import finds none
    c = new_client("c")
    result, rec, _ = build(c, step(base_digest, "z"), busybox_layout, tmp_path, "c",
                           exports=[cache_backend.to()])
    assert not statuses(rec, "exporting cache mount ")
    assert result.metadata["cache.responses"][0]["cache.blobs.total"] == 2
    d = new_client("d")
    _, rec, out = build(d, step(base_digest, "w"), busybox_layout, tmp_path, "d",
                        imports=[cache_backend.from_(**{"cache-mounts": "true"})])
    assert (out / "out-c").read_text() == ""
    assert not statuses(rec, "importing cache mount ")


def test_selected_ids(new_client, busybox_layout, base_digest, tmp_path):
    cache = tmp_path / "cache"
    a = new_client("a")
    _, rec, _ = build(a, step(base_digest, "x", ids=("c", "d")), busybox_layout, tmp_path, "a",
                      exports=[{"type": "local", "dest": str(cache), "cache-mounts": "true",
                                "cache-mount-ids": "d;nope"}])
    config = _local_config(cache)
    assert [m.id for m in config.mounts] == ["d"]
    assert warnings(rec) == ["cache-mount-ids: no step of this build uses cache mount 'nope'"]

    b = new_client("b")
    _, _, out = build(b, step(base_digest, "y", ids=("c", "d")), busybox_layout, tmp_path, "b",
                      imports=[{"type": "local", "src": str(cache), "cache-mounts": "true"}])
    assert (out / "out-c").read_text() == ""
    assert (out / "out-d").read_text() == "f\nx\n"

    # both exported; the import selects one
    both = tmp_path / "both"
    build(a, step(base_digest, "x", ids=("c", "d")), busybox_layout, tmp_path, "a2",
          exports=[{"type": "local", "dest": str(both), "cache-mounts": "true"}])
    assert sorted(m.id for m in _local_config(both).mounts) == ["c", "d"]
    c = new_client("c")
    _, rec, out = build(c, step(base_digest, "y", ids=("c", "d")), busybox_layout, tmp_path, "c",
                        imports=[{"type": "local", "src": str(both), "cache-mounts": "true",
                                  "cache-mount-ids": "c"}])
    assert (out / "out-c").read_text() == "f\nx\n"
    assert (out / "out-d").read_text() == ""
    assert list(statuses(rec, "importing cache mount ")) == ["importing cache mount c"]


def test_existing_cache_mount_is_left_alone(new_client, busybox_layout, base_digest, tmp_path):
    cache = tmp_path / "cache"
    build(new_client("a"), step(base_digest, "x"), busybox_layout, tmp_path, "a",
          exports=[{"type": "local", "dest": str(cache), "cache-mounts": "true"}])
    b = new_client("b")
    base = llb.oci_layout(f"busybox@{base_digest}", store_id="base")
    mine = base.run("echo mine > /cache/local", mounts=[llb.cache_mount("/cache", "c")]).root()
    build(b, mine, busybox_layout, tmp_path, "b0")
    _, rec, out = build(b, step(base_digest, "y"), busybox_layout, tmp_path, "b",
                        imports=[{"type": "local", "src": str(cache), "cache-mounts": "true"}])
    assert (out / "out-c").read_text() == "local\n"
    assert not statuses(rec, "importing cache mount ")


def test_first_import_wins_and_replaces_a_seed(new_client, busybox_layout, base_digest,
                                               tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    build(new_client("a1"), step(base_digest, "one"), busybox_layout, tmp_path, "a1",
          exports=[{"type": "local", "dest": str(one), "cache-mounts": "true"}])
    build(new_client("a2"), step(base_digest, "two"), busybox_layout, tmp_path, "a2",
          exports=[{"type": "local", "dest": str(two), "cache-mounts": "true"}])
    base = llb.oci_layout(f"busybox@{base_digest}", store_id="base")
    seed = base.file(llb.mkfile("/seeded", 0o644, b"seed\n"))
    seeded = base.run("ls /cache > /out; cat /cache/f > /f", mounts=[
        llb.cache_mount("/cache", "c", source=seed)]).root()
    b = new_client("b")
    _, _, out = build(b, seeded, busybox_layout, tmp_path, "b",
                      imports=[{"type": "local", "src": str(two), "cache-mounts": "true"},
                               {"type": "local", "src": str(one), "cache-mounts": "true"}])
    assert (out / "out").read_text() == "f\n"
    assert (out / "f").read_text() == "two\n"


def test_unusable_blob_warns_and_mount_is_empty(new_client, busybox_layout, base_digest,
                                                tmp_path):
    cache = tmp_path / "cache"
    build(new_client("a"), step(base_digest, "x"), busybox_layout, tmp_path, "a",
          exports=[{"type": "local", "dest": str(cache), "cache-mounts": "true"}])
    [mount] = _local_config(cache).mounts
    (cache / "blobs" / "sha256" / mount.layer.blob.split(":")[1]).write_bytes(b"garbage")
    b = new_client("b")
    _, rec, out = build(b, step(base_digest, "y"), busybox_layout, tmp_path, "b",
                        imports=[{"type": "local", "src": str(cache), "cache-mounts": "true"}])
    assert b.executor.calls == 1
    assert (out / "out-c").read_text() == ""
    assert any("importing cache mount c" in w and "failed" in w for w in warnings(rec)), \
        warnings(rec)


def test_local_format(new_client, busybox_layout, base_digest, tmp_path):
    """The config lists the mount under its own key; the manifest lists its blob with the
    cache mount annotation; the blob is the directory's tar, compressed like the layers."""
    import gzip
    import io
    import tarfile

    cache = tmp_path / "cache"
    build(new_client("a"), step(base_digest, "x"), busybox_layout, tmp_path, "a",
          exports=[{"type": "local", "dest": str(cache), "cache-mounts": "true"}])
    manifest = _local_manifest(cache)
    raw = json.loads(_blob(cache, manifest["config"]["digest"]))
    [entry] = raw[CACHE_MOUNTS_KEY]
    assert entry["id"] == "c"
    assert entry["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    [desc] = [d for d in manifest["layers"]
              if (d.get("annotations") or {}).get(ANNOTATION_CACHE_MOUNT) == "c"]
    assert desc["digest"] == entry["blob"] and desc["size"] == entry["size"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(cache, entry["blob"])))) as tar:
        member = tar.extractfile("f")
        assert member is not None and member.read() == b"x\n"
    # the records' layers are the step's alone
    assert entry["blob"] not in {layer["blob"] for layer in raw["layers"]}


def _local_manifest(cache):
    index = json.loads((cache / "index.json").read_text())
    return json.loads(_blob(cache, index["manifests"][0]["digest"]))


def _blob(cache, digest):
    return (cache / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _local_config(cache) -> CacheConfig:
    return CacheConfig.from_json(_blob(cache, _local_manifest(cache)["config"]["digest"]))
