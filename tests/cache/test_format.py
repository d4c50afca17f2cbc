"""The cache config format, the manifest wrapper, object naming and option validation, checked
without running builds: stores are fed a content store holding hand-made blobs."""

from __future__ import annotations

import base64
import json

import pytest

from pybk.core.errors import UsageError
from pybk.core.images.layers import LayerBlob
from pybk.core.remotecache.config import (
    CACHE_CONFIG_MEDIA_TYPE,
    CacheConfig,
    CacheFormatError,
    ConfigBuilder,
    record_digest,
)
from pybk.core.remotecache.store import ExportPlan, load_cache
from pybk.core.store.content import ContentStore

KEY = "sha256:" + "ab" * 32


def make_plan(tmp_path, n=2):
    content = ContentStore(tmp_path / "content")
    builder = ConfigBuilder()
    blobs = []
    for i in range(n):
        data = f"layer {i}".encode() * 100
        digest = content.put_bytes(data)
        blobs.append(LayerBlob(digest=digest, size=len(data), diff_id="sha256:" + f"{i:064x}",
                               compression="gzip"))
    top = builder.add_chain(blobs)
    builder.add_record(KEY, top)
    builder.add_record(record_digest(KEY, 1), top - 1 if n > 1 else top, [[0]])
    return ExportPlan(config=builder.build(), content=content), blobs


def resolve(kind, flag, **attrs_):
    from pybk.core.engine.resolve import resolve as resolve_plugin

    use = "cache importer" if flag == "--cache-from" else "cache exporter"
    return resolve_plugin(use, {"type": kind, **attrs_}, where=flag)


def test_config_json_shape_and_roundtrip(tmp_path):
    plan, blobs = make_plan(tmp_path)
    raw = json.loads(plan.config.to_json())
    assert raw["layers"][0] == {"blob": blobs[0].digest, "parent": -1, "annotations": {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "diffID": blobs[0].diff_id, "size": blobs[0].size,
        "createdAt": raw["layers"][0]["annotations"]["createdAt"]}}
    assert "parent" not in raw["layers"][1]  # omitempty: parent 0
    assert raw["records"][0]["digest"] == KEY and raw["records"][0]["layers"][0]["layer"] == 1
    assert raw["records"][1]["inputs"] == [[{"selector": "", "link": 0}]]
    again = CacheConfig.from_json(plan.config.to_json())
    assert again == plan.config
    assert [x.blob for x in again.chain(again.records[0])] == [b.digest for b in blobs]


def test_config_errors_are_format_errors():
    with pytest.raises(CacheFormatError):
        CacheConfig.from_json(b"[]")
    with pytest.raises(CacheFormatError, match="out of range"):
        CacheConfig.from_json(b'{"layers":[{"blob":"sha256:x","parent":5}]}')


def test_local_layout(tmp_path):
    from pybk.core.remotecache.store import LayoutCacheStore

    plan, blobs = make_plan(tmp_path)
    dest = tmp_path / "cache"
    LayoutCacheStore(str(dest), tag="v1").export(plan)
    LayoutCacheStore(str(dest), tag="v2", image_manifest=False).export(plan)
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    assert set(tags) == {"v1", "v2"}
    manifest = json.loads((dest / "blobs/sha256" / tags["v1"]["digest"][7:]).read_bytes())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == CACHE_CONFIG_MEDIA_TYPE
    assert [d["annotations"]["containerd.io/uncompressed"] for d in manifest["layers"]] == [
        b.diff_id for b in blobs]
    config = json.loads((dest / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert "annotations" not in config["layers"][0]  # carried by the descriptors instead
    wrapped = json.loads((dest / "blobs/sha256" / tags["v2"]["digest"][7:]).read_bytes())
    assert wrapped["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert wrapped["manifests"][-1]["mediaType"] == CACHE_CONFIG_MEDIA_TYPE
    for tag in ("v1", "v2"):
        [read] = LayoutCacheStore(str(dest), tag=tag).read_configs()
        assert read == plan.config
    [by_digest] = LayoutCacheStore(str(dest), digest=tags["v2"]["digest"]).read_configs()
    assert by_digest == plan.config
    # re-export with another tag: blobs are not copied again
    before = {p: p.stat().st_mtime_ns for p in (dest / "blobs/sha256").iterdir()}
    response = LayoutCacheStore(str(dest), tag="v3").export(plan)
    assert response["cache.blobs.uploaded"] == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_local_reset_removes_unreferenced_blobs(tmp_path):
    from pybk.core.remotecache.store import LayoutCacheStore

    plan, _ = make_plan(tmp_path)
    dest = tmp_path / "cache"
    LayoutCacheStore(str(dest)).export(plan)
    stray = dest / "blobs/sha256" / ("0" * 64)
    stray.write_bytes(b"old")
    LayoutCacheStore(str(dest), reset=True).export(plan)
    assert not stray.exists()
    assert LayoutCacheStore(str(dest)).read_configs() == [plan.config]


def test_docker_media_types_without_oci(tmp_path):
    from pybk.core.remotecache.store import wrap_config

    plan, _ = make_plan(tmp_path)
    wrapped = wrap_config(plan.config, image_manifest=False, oci=False)
    body = json.loads(wrapped.manifest)
    assert body["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert body["manifests"][0]["mediaType"] == (
        "application/vnd.docker.image.rootfs.diff.tar.gzip")


def test_s3_object_names(tmp_path, moto_s3):
    exporter = resolve("s3", "--cache-to", **moto_s3.attrs(prefix="p/", name="one;two"))
    plan, blobs = make_plan(tmp_path)
    exporter.open(plan.info).export(plan)
    fs = moto_s3.filesystem()
    keys = sorted(p[len(moto_s3.bucket) + 1:] for p in fs.find(f"{moto_s3.bucket}/p/"))
    assert keys == sorted([f"p/blobs/{b.digest}" for b in blobs]
                          + ["p/manifests/one", "p/manifests/two"])
    stored = CacheConfig.from_json(fs.cat_file(f"{moto_s3.bucket}/p/manifests/two"))
    assert stored == plan.config  # the bare config, annotations included
    importer = resolve("s3", "--cache-from", **moto_s3.attrs(prefix="p/", name="two"))
    [loaded] = load_cache(importer, {})
    content = ContentStore(tmp_path / "other")
    loaded.store.fetch_blob(loaded.config.layers[0], content)
    assert content.read_bytes(blobs[0].digest) == b"layer 0" * 100


def test_azblob_object_names_and_container_creation(tmp_path, cache_azurite):
    import adlfs
    from support.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    attrs_ = {"account_url": cache_azurite.blob_endpoint, "account_name": ACCOUNT_NAME,
              "secret_access_key": ACCOUNT_KEY, "container": "fresh-container",
              "prefix": "pre"}
    plan, blobs = make_plan(tmp_path)
    resolve("azblob", "--cache-to", **attrs_).open(plan.info).export(plan)
    fs = adlfs.AzureBlobFileSystem(connection_string=cache_azurite.connection_string,
                                   skip_instance_cache=True)
    names = sorted(fs.find("fresh-container"))
    assert names == sorted([f"fresh-container/pre/blobs/{b.digest}" for b in blobs]
                           + ["fresh-container/pre/manifests/buildkit"])
    [loaded] = load_cache(resolve("azblob", "--cache-from", **attrs_), {})
    assert loaded.config == plan.config


def test_gha_keys(tmp_path, cache_gha):
    cache_gha.reset()
    token = cache_gha.mint_token()
    plan, blobs = make_plan(tmp_path)
    resolve("gha", "--cache-to", url=cache_gha.url, token=token,
            scope="app").open(plan.info).export(plan)
    from pybk.cachebackends.gha import GHACacheFileSystem

    fs = GHACacheFileSystem(url=cache_gha.url, token=token, scope="app",
                            skip_instance_cache=True)
    for b in blobs:
        assert fs.cache_key(f"blobs/{b.digest}")[0] == f"buildkit-blob-1-{b.digest}"
        assert fs.exists(f"blobs/{b.digest}")
    assert fs.index_key().startswith("index-app-1-")
    assert CacheConfig.from_json(fs.cat_file("index")) == plan.config
    [loaded] = load_cache(resolve("gha", "--cache-from", url=cache_gha.url, token=token,
                                  scope="app"), {})
    assert loaded.config == plan.config


def test_inline_config_names_image_layers(tmp_path):
    from pybk.core.images.layers import ExportedLayer
    from pybk.core.remotecache.inline import inline_config, read_inline

    _, blobs = make_plan(tmp_path)
    encoded = inline_config(KEY, [ExportedLayer(None, b) for b in blobs])
    raw = json.loads(base64.b64decode(encoded))
    assert raw["records"] == [{"digest": KEY, "chains": [
        {"layers": [0, 1], "createdAt": raw["records"][0]["chains"][0]["createdAt"]}]}]
    image = {"rootfs": {"diff_ids": [b.diff_id for b in blobs]},
             "moby.buildkit.cache.v0": encoded}
    config = read_inline(json.dumps(image).encode(),
                         [b.descriptor(True) for b in blobs], "img")
    assert [x.diff_id for x in config.chain(config.records[0])] == [b.diff_id for b in blobs]
    with pytest.raises(CacheFormatError, match="no inline"):
        read_inline(b'{"rootfs":{}}', [], "img")


@pytest.mark.parametrize(("kind", "flag", "attrs_", "message"), [
    ("s3", "--cache-to", {"region": "eu-west-1"}, "needs bucket"),
    ("s3", "--cache-to", {"bucket": "b", "region": "r", "mode": "all"}, "not one of min, max"),
    ("s3", "--cache-to", {"bucket": "b", "region": "r", "upload_parallelism": "0"}, "at least 1"),
    ("local", "--cache-to", {}, "needs dest"),
    ("local", "--cache-to", {"dest": "d", "oci-mediatypes": "false", "image-manifest": "true"},
     "needs oci-mediatypes"),
    ("local", "--cache-from", {"src": "d", "digest": "sha256:zz"}, "expected sha256"),
    ("local", "--cache-from", {"source": "d"}, 'did you mean "src"'),
    ("registry", "--cache-to", {}, "needs ref"),
    ("registry", "--cache-to", {"ref": "x", "compression": "gzip",
                                "compression-level": "12"}, "gzip takes 0-9"),
    ("local", "--cache-to", {"dest": "d", "compression": "zstd", "compression-level": "23"},
     "zstd takes 0-22"),
    ("azblob", "--cache-from", {}, "needs account_url"),
    ("gha", "--cache-from", {"url": "http://127.0.0.1:1/"}, "needs token"),
    ("inline", "--cache-from", {}, "type=registry,ref=IMAGE"),
    ("nope", "--cache-from", {}, "unknown cache type"),
])
def test_bad_options_fail_early(kind, flag, attrs_, message, monkeypatch):
    for var in ("AWS_BUCKET", "AWS_REGION", "AWS_DEFAULT_REGION", "ACTIONS_RUNTIME_TOKEN",
                "BUILDKIT_AZURE_STORAGE_ACCOUNT_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError, match=message):
        resolve(kind, flag, **attrs_)


def test_env_fallbacks(monkeypatch):
    monkeypatch.setenv("AWS_BUCKET", "from-env")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    exporter = resolve("s3", "--cache-to")
    assert exporter.where == "s3://from-env/"
    monkeypatch.setenv("BUILDKIT_AZURE_STORAGE_ACCOUNT_URL", "https://acct.blob.example")
    assert resolve("azblob", "--cache-from").where == "azblob://buildkit-cache"


def test_duplicate_exports_fail(tmp_path):
    from pybk.core.engine.client import _check_cache_exports

    a = resolve("local", "--cache-to", dest=str(tmp_path / "x"))
    b = resolve("local", "--cache-to", dest=str(tmp_path / "x"), mode="max")
    with pytest.raises(UsageError, match="duplicate"):
        _check_cache_exports([a, b])
    inline = resolve("inline", "--cache-to")
    assert len(_check_cache_exports([inline, inline, a])) == 2
