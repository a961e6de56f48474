"""The rewrites that keep the local stack's listeners on loopback."""

from __future__ import annotations

import pytest

from gdn_serve.serve.loopback import loopback_address, loopback_binds

HAPROXY_CONFIG = """\
frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
frontend grpc
    bind *:9000 proto h2
listen stats
  bind *:8404
frontend v6
    bind [::]:81
frontend any
    bind 0.0.0.0:82
"""


def test_every_wildcard_bind_becomes_loopback_and_explicit_hosts_stay() -> None:
    binds = [
        line.split()[1]
        for line in loopback_binds(HAPROXY_CONFIG).splitlines()
        if line.strip().startswith("bind")
    ]
    assert binds == [
        "127.0.0.1:9101",
        "127.0.0.1:8000",
        "127.0.0.1:9000",
        "127.0.0.1:8404",
        "127.0.0.1:81",
        "127.0.0.1:82",
    ]
    assert "proto h2" in loopback_binds(HAPROXY_CONFIG)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:0", "127.0.0.1:0"),
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        (":7", "127.0.0.1:7"),
        ("10.1.2.3:0", "10.1.2.3:0"),
        ("127.0.0.1:9", "127.0.0.1:9"),
    ],
)
def test_grpc_address_rewrite(address: str, expected: str) -> None:
    assert loopback_address(address) == expected
