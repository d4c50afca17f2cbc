"""Remote cache services for tests: a moto S3 server, Azurite and the GitHub Actions cache
service, each started once per session on 127.0.0.1 (import the fixtures into a conftest)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

S3_REGION = "eu-west-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """A ThreadedMotoServer with one bucket (``bucket``) in ``S3_REGION``."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.bucket = "pybk-cache"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        self.server.start()
        # moto keeps its state per process: a second server in this process sees the bucket
        with contextlib.suppress(FileExistsError):
            self.filesystem().mkdir(self.bucket, region_name=S3_REGION)
        return self

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": S3_REGION},
                                 skip_instance_cache=True)

    def attrs(self, **extra: str) -> dict[str, str]:
        return {"bucket": self.bucket, "region": S3_REGION, "endpoint_url": self.endpoint,
                "use_path_style": "true", "access_key_id": "testing",
                "secret_access_key": "testing", **extra}

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cache_azurite():
    from support.azurite import SKIP_REASON, AzuriteServer, find_azurite_blob

    if find_azurite_blob() is None:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob (an adlfs dependency) "
                        "is needed")
    server = AzuriteServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cache_gha(cache_azurite):
    from support.ghacache import GHACacheServer

    server = GHACacheServer(cache_azurite).start()
    yield server
    server.stop()
