"""Fixtures for exporter tests: a Client on a fresh store and small busybox-based graphs."""

from __future__ import annotations

import pytest
from support.engine import counting_client, runc_missing


@pytest.fixture
def make_client(tmp_path):
    reason = runc_missing()
    if reason:
        pytest.skip(reason)
    clients = []

    def make(name: str = "store"):
        client = counting_client(tmp_path / name)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="session")
def app_config():
    """A frontend-style image config for the test graphs."""
    return {"config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/app"},
            "history": [{"created_by": "busybox base"},
                        {"created_by": "RUN build app"},
                        {"created_by": "ENV PATH=/bin", "empty_layer": True}]}
