"""Fixtures for the operator tests: a FAKE API server and a client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.client import without_hidden_retries
from tests.operator.fake_kube_apiserver import FakeApiServer


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kube(fake_api: FakeApiServer) -> KubeApi:
    configuration = client.Configuration()
    configuration.host = fake_api.url
    return KubeApi(client.ApiClient(without_hidden_retries(configuration)), timeout_s=(2.0, 10.0))
