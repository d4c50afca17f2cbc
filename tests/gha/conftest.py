"""Fixtures for the GitHub Actions cache tests: Azurite and the test cache service.

- ``azurite``: a session-wide Azurite blob service (skips when ``azurite-blob`` is not installed).
- ``gha_server``: the session-wide cache service (v1 and, with Azurite, v2).
- ``gha``: ``gha_server`` emptied of entries and counters for one test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.azurite import SKIP_REASON, AzuriteServer, find_azurite_blob
from support.ghacache import GHACacheServer


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    if find_azurite_blob() is None:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob (an adlfs dependency) "
                        "is needed to create SAS URLs")
    server = AzuriteServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gha_server(azurite: AzuriteServer) -> Iterator[GHACacheServer]:
    server = GHACacheServer(azurite).start()
    yield server
    server.stop()


@pytest.fixture
def gha(gha_server: GHACacheServer) -> GHACacheServer:
    gha_server.reset()
    return gha_server
