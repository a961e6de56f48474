"""Lease leader election against the FAKE API server (fake_kube_apiserver.py): acquisition,
failover after a crash, handover on clean shutdown, never two leaders, stepping down."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from kubernetes import client

from gdn_operator.control.leader import LeaderElector, LeaseConfig
from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.client import new_api_client
from gdn_operator.kube.resources import LEASES
from tests.operator.fake_kube_apiserver import FakeApiServer
from tests.operator.operator_testlib import eventually


def lease(identity: str, duration: float = 1.0) -> LeaseConfig:
    return LeaseConfig(
        name="gdn-operator",
        namespace="ops",
        identity=identity,
        lease_duration_s=duration,
        renew_deadline_s=duration * 0.6,
        retry_period_s=0.1,
    )


def run_elector(elector: LeaderElector, stop: threading.Event, log: list[str]) -> threading.Thread:
    name = elector.config.identity
    thread = threading.Thread(
        target=elector.run,
        args=(stop, lambda: log.append(f"{name} started"), lambda: log.append(f"{name} stopped")),
        daemon=True,
    )
    thread.start()
    return thread


def test_failover_after_the_leader_dies(kube: KubeApi) -> None:
    dead = LeaderElector(kube, lease("a"))
    assert dead.try_acquire_or_renew()  # a leads, then stops renewing (crash)
    died_at = time.monotonic()
    stop, log = threading.Event(), list[str]()
    run_elector(LeaderElector(kube, lease("b")), stop, log)
    try:
        eventually(lambda: "b started" in log, timeout_s=5, interval_s=0.01)
        took = time.monotonic() - died_at
    finally:
        stop.set()
    # Not before the lease expires; well before a second lease duration (a loaded CI machine
    # stretches the 0.1 s retry period, so the upper bound leaves room for that).
    assert 0.9 <= took <= 1.6
    holder = kube.get(LEASES, "gdn-operator", "ops")["spec"]
    assert holder["leaseTransitions"] == 1


def test_clean_shutdown_hands_over_within_a_retry_period(kube: KubeApi) -> None:
    stop_a, stop_b, log = threading.Event(), threading.Event(), list[str]()
    a, b = LeaderElector(kube, lease("a", 10.0)), LeaderElector(kube, lease("b", 10.0))
    thread_a = run_elector(a, stop_a, log)
    eventually(a.is_leader.is_set)
    run_elector(b, stop_b, log)
    time.sleep(0.3)
    assert not b.is_leader.is_set()  # a holds a 10 s lease
    stopped_at = time.monotonic()
    stop_a.set()
    thread_a.join(2)
    try:
        eventually(b.is_leader.is_set, timeout_s=2, interval_s=0.01)
    finally:
        stop_b.set()
    assert time.monotonic() - stopped_at < 1.0  # released, not waited out (10 s)
    assert log[:3] == ["a started", "a stopped", "b started"]


def test_never_two_leaders(kube: KubeApi) -> None:
    stop, log = threading.Event(), list[str]()
    electors = [LeaderElector(kube, lease(n)) for n in "abc"]
    for elector in electors:
        run_elector(elector, stop, log)
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            assert sum(e.is_leader.is_set() for e in electors) <= 1
            time.sleep(0.01)
        assert sum(e.is_leader.is_set() for e in electors) == 1
    finally:
        stop.set()


def test_a_leader_that_cannot_renew_steps_down(fake_api: FakeApiServer, kube: KubeApi) -> None:
    stop, log = threading.Event(), list[str]()
    elector = LeaderElector(kube, lease("a"))
    thread = run_elector(elector, stop, log)
    eventually(elector.is_leader.is_set)
    fake_api.fail("PUT", "/leases/", 500, times=1000)
    thread.join(3)  # returns on its own: renew deadline 0.6 s passed without a renewal
    assert not thread.is_alive() and not stop.is_set()
    assert log == ["a started", "a stopped"]


class Blackhole:
    """A TCP server that accepts connections and never answers: an API server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def client_for(url: str) -> KubeApi:
    configuration = client.Configuration()
    configuration.host = url
    # The operator's defaults (5 s connect, 30 s read): only the deadline can cut a call short.
    return KubeApi(new_api_client(configuration, connect_retries=0))


def test_each_lease_call_ends_by_the_renew_deadline() -> None:
    hang = Blackhole()
    errors: list[tuple[str, int]] = []
    try:
        elector = LeaderElector(
            client_for(hang.url), lease("a"), on_error=lambda *e: errors.append(e)
        )
        started = time.monotonic()
        assert not elector.try_acquire_or_renew(deadline=started + 0.5)
        took = time.monotonic() - started
    finally:
        hang.close()
    assert 0.4 <= took < 1.5  # the read timeout was cut to what was left, not 30 s
    assert errors == [("get", 0)]
    # No time left: no call at all.
    assert not elector.try_acquire_or_renew(deadline=time.monotonic() - 1)
    assert errors == [("get", 0)]


def test_a_leader_whose_api_server_hangs_steps_down_on_time() -> None:
    hang = Blackhole()
    config = lease("a", duration=2.0)  # renew deadline 1.2 s, retry period 0.1 s
    fake = FakeApiServer().start()
    stop, log = threading.Event(), list[str]()
    try:
        elector = LeaderElector(client_for(fake.url), config)
        thread = run_elector(elector, stop, log)
        eventually(elector.is_leader.is_set)
        elector.api = client_for(hang.url)  # from now on every request hangs
        lost_at = time.monotonic()
        thread.join(5)
        took = time.monotonic() - lost_at
    finally:
        stop.set()
        hang.close()
        fake.stop()
    assert not thread.is_alive() and log == ["a started", "a stopped"]
    # within the renew deadline plus one retry period and the call in flight, not 30 s
    assert took < config.renew_deadline_s + 1.0


def test_lease_errors_are_warnings_and_counted(
    fake_api: FakeApiServer, kube: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[str, int]] = []
    elector = LeaderElector(kube, lease("a"), on_error=lambda *e: errors.append(e))
    fake_api.fail("GET", "/leases/", 500)
    with caplog.at_level(logging.INFO, logger="gdn_operator.control.leader"):
        assert not elector.try_acquire_or_renew()
        assert elector.try_acquire_or_renew()  # created
        fake_api.fail("PUT", "/leases/", 503)
        assert not elector.try_acquire_or_renew()
        fake_api.fail("PUT", "/leases/", 409)
        assert not elector.try_acquire_or_renew()
    assert errors == [("get", 500), ("update", 503), ("update", 409)]
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "lease get failed: 500 injected failure: injected failure") in levels
    assert any(lvl == "WARNING" and "lease update failed: 503" in m for lvl, m in levels)
    # losing a race to another candidate is contention, said at INFO
    assert any(lvl == "INFO" and "lease update lost a race" in m for lvl, m in levels)


def test_reachable_tells_a_standby_from_one_cut_off(fake_api: FakeApiServer, kube: KubeApi) -> None:
    holder = LeaderElector(kube, lease("a", duration=10.0))
    assert holder.try_acquire_or_renew()
    clock = [100.0]
    standby = LeaderElector(kube, lease("b", duration=10.0), clock=lambda: clock[0])
    assert standby.reachable() == (False, "no answer about the Lease yet")
    assert not standby.try_acquire_or_renew()  # held by a
    assert standby.reachable() == (True, "the Lease is reachable")
    fake_api.fail("GET", "/leases/", 503, times=100)
    clock[0] += 11.0
    assert not standby.try_acquire_or_renew()
    ok, detail = standby.reachable()
    assert not ok
    assert detail == "cannot reach the Lease for 11s: get: 503 injected failure: injected failure"
