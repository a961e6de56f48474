"""The `op` fixture: one operator, no leader election, against the FAKE API server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gdn_operator.kube.api import KubeApi
from tests.operator.control.running import Running, halt, start
from tests.operator.operator_testlib import eventually


@pytest.fixture
def op(kube: KubeApi) -> Iterator[Running]:
    running = start(kube)
    eventually(lambda: running.operator.ready()[0] and running.operator.controller)
    yield running
    halt(running)
