"""Fixtures for remote cache tests: clients on separate stores with counted runc runs, the
cache services, and one ``cache_backend`` parameter per backend."""

from __future__ import annotations

import json
import uuid

import attrs
import pytest
from support.cachefixtures import cache_azurite, cache_gha  # noqa: F401
from support.engine import counting_client, runc_missing


@pytest.fixture
def new_client(tmp_path):
    """``new_client("a")``: a Client on its own fresh store ``tmp_path/a``."""
    reason = runc_missing()
    if reason:
        pytest.skip(reason)

    clients = []

    def make(name: str):
        client = counting_client(tmp_path / f"store-{name}")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def base_digest(busybox_layout):
    index = json.loads((busybox_layout / "index.json").read_text())
    return index["manifests"][0]["digest"]


@attrs.frozen
class Backend:
    """How one test reaches one backend: ``to(**attrs)`` / ``from_(**attrs)`` cache specs and
    ``objects()`` every stored object's bytes (for leak checks)."""

    name: str
    export_attrs: dict
    import_attrs: dict
    objects: object

    def to(self, **extra):
        return {"type": self.name, **self.export_attrs, **extra}

    def from_(self, **extra):
        return {"type": self.name, **self.import_attrs, **extra}


def _local(request, tmp_path):
    directory = tmp_path / "cache-dir"

    def objects():
        return [p.read_bytes() for p in directory.rglob("*") if p.is_file()]
    return Backend("local", {"dest": str(directory)}, {"src": str(directory)}, objects)


def _s3(request, tmp_path):
    s3 = request.getfixturevalue("moto_s3")
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    attrs_ = s3.attrs(prefix=prefix)

    def objects():
        fs = s3.filesystem()
        return [fs.cat_file(p) for p in fs.find(f"{s3.bucket}/{prefix}")]
    return Backend("s3", attrs_, attrs_, objects)


def _azblob(request, tmp_path):
    from support.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    az = request.getfixturevalue("cache_azurite")
    container = f"c{uuid.uuid4().hex[:12]}"
    attrs_ = {"account_url": az.blob_endpoint, "account_name": ACCOUNT_NAME,
              "secret_access_key": ACCOUNT_KEY, "container": container}

    def objects():
        import adlfs

        fs = adlfs.AzureBlobFileSystem(connection_string=az.connection_string,
                                       skip_instance_cache=True)
        return [fs.cat_file(p) for p in fs.find(container)]
    return Backend("azblob", attrs_, attrs_, objects)


def _gha(request, tmp_path):
    gha = request.getfixturevalue("cache_gha")
    gha.reset()
    token = gha.mint_token()
    attrs_ = {"url": gha.url, "token": token, "scope": f"s{uuid.uuid4().hex[:8]}"}

    def objects():
        import adlfs

        fs = adlfs.AzureBlobFileSystem(connection_string=gha.azurite.connection_string,
                                       skip_instance_cache=True)
        found = []
        for container in fs.ls(""):
            found += [fs.cat_file(p) for p in fs.find(container)]
        return found
    return Backend("gha", attrs_, attrs_, objects)


def _registry(request, tmp_path):
    reg = request.getfixturevalue("registry")
    ref = f"{reg.host}/cache-{uuid.uuid4().hex[:8]}:latest"

    def objects():
        return [p.read_bytes() for p in reg.storage.rglob("data") if p.is_file()]
    attrs_ = {"ref": ref}
    return Backend("registry", attrs_, attrs_, objects)


BACKENDS = {"local": _local, "s3": _s3, "azblob": _azblob, "gha": _gha, "registry": _registry}


@pytest.fixture(params=list(BACKENDS))
def cache_backend(request, tmp_path):
    return BACKENDS[request.param](request, tmp_path)
