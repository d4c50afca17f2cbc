"""Fixtures for end-to-end solves: a Client on a fresh store, runc counted, busybox base."""

from __future__ import annotations

import pytest
from support.engine import counting_client, runc_missing

from pybk.core.config.schema import Config
from pybk.core.progress.events import EventRecorder


@pytest.fixture
def store_root(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def make_client(store_root):
    reason = runc_missing()
    if reason:
        pytest.skip(reason)

    clients = []

    def make(*, max_parallelism: int = 8, insecure_entitlements=()):
        import attrs

        base = Config(root=store_root, insecure_entitlements=list(insecure_entitlements))
        oci = attrs.evolve(base.worker.oci, max_parallelism=max_parallelism)
        config = attrs.evolve(base, worker=attrs.evolve(base.worker, oci=oci))
        client = counting_client(store_root, config)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def recorder():
    return EventRecorder()
