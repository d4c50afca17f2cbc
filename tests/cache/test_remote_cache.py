"""Remote build caches end to end: export from one store, import into an empty one.

Every backend (local, s3 on moto, azblob on Azurite, gha on the test cache service, registry on
the Distribution registry) is exercised with real runc builds; ``inline`` goes through an image
pushed to the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pybk.core import llb
from pybk.core.errors import BuildError
from pybk.core.progress.events import EventRecorder

SECRET = b"s3cr3t-0f-the-build-7a1c9e"

pytestmark = pytest.mark.slow


def stages(base_digest):
    """Two stages: ``first`` (two RUNs, one reading a secret, one using a cache mount) and
    ``final`` (one RUN, then a COPY from ``first``, then a RUN reading the copy)."""
    base = llb.oci_layout(f"busybox@{base_digest}", store_id="base")
    first = base.run("cat /run/secrets/tok | wc -c > /secret-len; echo first > /a.txt",
                     mounts=[llb.secret("/run/secrets/tok", "tok")]).root()
    first = first.run("echo cached > /cache/x; seq 1 40000 > /rand",
                      mounts=[llb.cache_mount("/cache", "c1")]).root()
    final = base.run("echo final > /f.txt").root()
    final = final.file(llb.copy(first, "/a.txt", "/from-first.txt"))
    final = final.file(llb.copy(first, "/rand", "/rand"))
    final = final.run("cat /from-first.txt /f.txt > /g.txt").root()
    return first, final


def solve(client, state, layout, tmp_path, *, imports=(), exports=(), out=None, rec=None,
          outputs=None):
    rec = rec if rec is not None else EventRecorder()
    if outputs is None and out is not None:
        outputs = [{"type": "oci", "dest": str(out), "tar": "false"}]
    result = client.solve(state, oci_layouts={"base": str(layout)}, secrets={"tok": SECRET},
                          progress=rec, cache_imports=imports, cache_exports=exports,
                          outputs=outputs or ())
    return result, rec


def graph_vertices(rec):
    return {d: v for d, v in rec.final_vertexes().items() if not d.startswith("cache-")}


def warnings(rec):
    return [w.short.decode() for u in rec.updates for w in u.warnings]


def layout_layers(directory: Path) -> list[str]:
    index = json.loads((directory / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((directory / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def test_export_then_import_on_empty_store(new_client, cache_backend, busybox_layout,
                                           base_digest, tmp_path):
    _, final = stages(base_digest)
    a = new_client("a")
    result_a, _ = solve(a, final, busybox_layout, tmp_path, exports=[cache_backend.to(mode="max")],
                        out=tmp_path / "out-a")
    assert a.executor.calls == 4
    response = result_a.metadata["cache.responses"][0]
    assert response["cache.blobs.uploaded"] == response["cache.blobs.total"] > 0

    b = new_client("b")
    result_b, rec = solve(b, final, busybox_layout, tmp_path, imports=[cache_backend.from_()],
                          out=tmp_path / "out-b")
    assert b.executor.calls == 0
    vertices = graph_vertices(rec)
    assert vertices and all(v.cached for v in vertices.values()), [
        v.name for v in vertices.values() if not v.cached]
    assert result_b.stats.executed == 0
    assert not warnings(rec)
    assert layout_layers(tmp_path / "out-a") == layout_layers(tmp_path / "out-b")
    b.export_local(result_b, tmp_path / "fs-b")
    assert (tmp_path / "fs-b" / "g.txt").read_text() == "first\nfinal\n"

    # a second export of the same cache uploads no blob again
    again, _ = solve(b, final, busybox_layout, tmp_path, exports=[cache_backend.to(mode="max")])
    assert again.metadata["cache.responses"][0]["cache.blobs.uploaded"] == 0

    # neither the secret nor the cache mount's contents reached the cache
    objects = cache_backend.objects()
    assert objects
    assert not [o for o in objects if SECRET in o]
    assert not any(o == b"cached\n" for o in objects)


def test_mode_min_reruns_intermediate_stage(new_client, cache_backend, busybox_layout,
                                            base_digest, tmp_path):
    _, final = stages(base_digest)
    solve(new_client("a"), final, busybox_layout, tmp_path, exports=[cache_backend.to()])
    b = new_client("b")
    _, rec = solve(b, final, busybox_layout, tmp_path, imports=[cache_backend.from_()])
    # the first stage's two RUNs run again (their content feeds the COPY keys); the final
    # stage's result comes from the cache
    assert b.executor.calls == 2
    def vertex(text):
        [found] = [v for v in graph_vertices(rec).values() if text in v.name]
        return found

    assert vertex("cat /from-first.txt").cached
    assert vertex("echo final > /f.txt").cached and vertex("echo first").started


def test_two_imports_one_per_stage(new_client, busybox_layout, base_digest, tmp_path):
    first, final = stages(base_digest)
    cache1, cache2 = tmp_path / "c1", tmp_path / "c2"
    solve(new_client("a"), first, busybox_layout, tmp_path,
          exports=[{"type": "local", "dest": str(cache1)}])
    solve(new_client("c"), final, busybox_layout, tmp_path,
          exports=[{"type": "local", "dest": str(cache2)}])
    only_final = new_client("b1")
    solve(only_final, final, busybox_layout, tmp_path,
          imports=[{"type": "local", "src": str(cache2)}])
    assert only_final.executor.calls == 2
    both = new_client("b2")
    result, rec = solve(both, final, busybox_layout, tmp_path,
                        imports=[{"type": "local", "src": str(cache1)},
                                 {"type": "local", "src": str(cache2)}])
    assert both.executor.calls == 0
    both.export_local(result, tmp_path / "fs")
    assert (tmp_path / "fs" / "g.txt").read_text() == "first\nfinal\n"


def test_inline_cache_through_registry(new_client, registry, busybox_layout, base_digest,
                                       tmp_path):
    _, final = stages(base_digest)
    image = f"{registry.host}/inline-app:1"
    a = new_client("a")
    solve(a, final, busybox_layout, tmp_path, exports=[{"type": "inline"}],
          outputs=[{"type": "image", "name": image, "push": "true"}])
    b = new_client("b")
    result, rec = solve(b, final, busybox_layout, tmp_path,
                        imports=[{"type": "registry", "ref": image}])
    # inline is mode=min: the first stage runs again, the image's own result is cached
    assert b.executor.calls == 2
    assert not warnings(rec)
    [last] = [v for v in graph_vertices(rec).values() if "cat /from-first.txt" in v.name]
    assert last.cached
    b.export_local(result, tmp_path / "fs")
    assert (tmp_path / "fs" / "g.txt").read_text() == "first\nfinal\n"


def test_unusable_imports_warn_and_build(new_client, registry, busybox_layout, base_digest,
                                         tmp_path):
    _, final = stages(base_digest)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "index.json").write_text("{not json")
    client = new_client("a")
    result, rec = solve(client, final, busybox_layout, tmp_path, imports=[
        {"type": "local", "src": str(tmp_path / "missing")},
        {"type": "local", "src": str(corrupt)},
        {"type": "registry", "ref": "127.0.0.1:9/nothing:here"},
        {"type": "registry", "ref": f"{registry.host}/never-pushed:x"},
    ])
    assert client.executor.calls == 4
    found = warnings(rec)
    assert len(found) == 4 and all("cache import from" in w for w in found), found
    client.export_local(result, tmp_path / "fs")
    assert (tmp_path / "fs" / "g.txt").read_text() == "first\nfinal\n"


def test_tampered_blob_is_a_miss(new_client, busybox_layout, base_digest, tmp_path):
    _, final = stages(base_digest)
    cache = tmp_path / "cache"
    solve(new_client("a"), final, busybox_layout, tmp_path,
          exports=[{"type": "local", "dest": str(cache)}])
    index = json.loads((cache / "index.json").read_text())
    manifest = json.loads((cache / "blobs/sha256" /
                           index["manifests"][0]["digest"][7:]).read_text())
    top = manifest["layers"][-1]["digest"]
    (cache / "blobs/sha256" / top[7:]).write_bytes(b"garbage")
    b = new_client("b")
    result, rec = solve(b, final, busybox_layout, tmp_path,
                        imports=[{"type": "local", "src": str(cache)}])
    assert b.executor.calls == 4
    assert any("digest" in w.lower() for w in warnings(rec)), warnings(rec)


def test_unreachable_export_fails_unless_ignore_error(new_client, busybox_layout, base_digest,
                                                      tmp_path):
    first, _ = stages(base_digest)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    client = new_client("a")
    for spec in ({"type": "local", "dest": str(blocker / "cache")},
                 {"type": "registry", "ref": "127.0.0.1:9/cache:x"}):
        with pytest.raises(BuildError, match="failed to export cache"):
            solve(client, first, busybox_layout, tmp_path, exports=[spec])
        result, rec = solve(client, first, busybox_layout, tmp_path,
                            exports=[{**spec, "ignore-error": "true"}])
        assert "cache.error" in result.metadata["cache.responses"][0]
        assert any("ignore-error" in w for w in warnings(rec))


def test_no_cache_vertices_are_not_exported(new_client, busybox_layout, base_digest, tmp_path):
    from pybk.core.remotecache.config import CacheConfig

    base = llb.oci_layout(f"busybox@{base_digest}", store_id="base")
    state = base.run("echo volatile > /v", ignore_cache=True).root().run("echo x > /x").root()
    cache = tmp_path / "cache"
    result, _ = solve(new_client("a"), state, busybox_layout, tmp_path,
                      exports=[{"type": "local", "dest": str(cache), "mode": "max"}])
    index = json.loads((cache / "index.json").read_text())
    manifest = json.loads((cache / "blobs/sha256" /
                           index["manifests"][0]["digest"][7:]).read_text())
    config = CacheConfig.from_json((cache / "blobs/sha256" /
                                    manifest["config"]["digest"][7:]).read_bytes())
    assert [r.digest for r in config.records] == [result.cache_key]
