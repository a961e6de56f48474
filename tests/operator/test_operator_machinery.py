"""Client, informer, events and leader election against the FAKE API server
(fake_kube_apiserver.py): list+watch, bookmarks, 410 re-list, backoff with Retry-After, SSA,
optimistic locking, event aggregation, Lease handover."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_kube_apiserver import FakeApiServer
from gdn_operator.kube import api as kube_api
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.backoff import Backoff
from gdn_operator.kube.client import without_hidden_retries
from gdn_operator.kube.events import EventRecorder
from gdn_operator.kube.informer import Informer
from gdn_operator.kube.resources import EVENTS, LEASES, NODES, PODS, RAYSERVICES
from gdn_operator.leader import LeaderElector, LeaseConfig
from operator_testlib import eventually, gpu_node

NODES_PATH = NODES.path()


class Recorder:
    """An informer handler that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, kind: str, old: Any, new: Any) -> None:
        self.events.append((kind, (new or old)["metadata"]["name"]))


@pytest.fixture
def watched(kube: KubeApi) -> Iterator[tuple[Informer, Recorder]]:
    handler = Recorder()
    informer = Informer(
        kube, NODES, handler, watch_timeout_s=1, backoff=Backoff(base_s=0.05, cap_s=0.5)
    )
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    yield informer, handler
    stop.set()
    informer.stop()
    thread.join(5)


def watch_requests(fake: FakeApiServer) -> list[dict[str, str]]:
    return [r.query for r in fake.requests if r.query.get("watch") == "true"]


# -- client ---------------------------------------------------------------------------------


def test_server_side_apply_uses_one_field_manager(fake_api: FakeApiServer, kube: KubeApi) -> None:
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "q", "namespace": "ns"},
        "spec": {"serveConfigV2": "x"},
    }
    created = kube.apply(RAYSERVICES, body)
    assert created["metadata"]["resourceVersion"]
    (request,) = fake_api.writes()
    assert request.method == "PATCH"
    assert request.content_type == "application/apply-patch+yaml"
    assert request.query == {"fieldManager": "gdn-operator", "force": "true"}
    assert request.path == "/apis/ray.io/v1/namespaces/ns/rayservices/q"


def test_errors_carry_status_reason_and_retry_after(fake_api: FakeApiServer, kube: KubeApi) -> None:
    with pytest.raises(ApiError) as missing:
        kube.get(RAYSERVICES, "nope", "ns")
    assert missing.value.not_found and not missing.value.transient
    fake_api.fail("GET", "/rayservices/", 429, headers={"Retry-After": "7"})
    with pytest.raises(ApiError) as throttled:
        kube.get(RAYSERVICES, "nope", "ns")
    assert throttled.value.transient and throttled.value.retry_after_s == 7.0


def test_unreachable_server_is_a_transient_error() -> None:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ApiError) as error:
        api = KubeApi(client.ApiClient(without_hidden_retries(configuration)), timeout_s=(0.5, 0.5))
        api.get(NODES, "x")
    assert error.value.status == 0 and error.value.transient


def test_list_follows_pagination(
    fake_api: FakeApiServer, kube: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_api, "LIST_PAGE", 2)
    for i in range(5):
        fake_api.put(NODES_PATH, gpu_node(f"n{i}"))
    items, version = kube.list(NODES)
    assert [n["metadata"]["name"] for n in items] == [f"n{i}" for i in range(5)]
    assert version == str(fake_api.rv)
    pages = [r.query.get("continue") for r in fake_api.requests]
    assert pages == [None, "2", "4"]


def test_merge_patch_with_resource_version_detects_conflicts(
    fake_api: FakeApiServer, kube: KubeApi
) -> None:
    fake_api.put(PODS.path("ns"), {"metadata": {"name": "p"}, "spec": {}})
    current = kube.get(PODS, "p", "ns")["metadata"]["resourceVersion"]
    stale = {"metadata": {"resourceVersion": "0"}, "spec": {"x": 1}}
    with pytest.raises(ApiError) as conflict:
        kube.patch(PODS, "p", "ns", stale)
    assert conflict.value.conflict
    kube.patch(PODS, "p", "ns", {"metadata": {"resourceVersion": current}, "spec": {"x": 1}})


# -- informer -------------------------------------------------------------------------------


def test_list_then_watch_keeps_the_cache(
    fake_api: FakeApiServer, watched: tuple[Informer, Recorder]
) -> None:
    informer, handler = watched
    fake_api.put(NODES_PATH, gpu_node("a"))
    eventually(lambda: informer.get("a"))
    fake_api.put(NODES_PATH, gpu_node("a", gpus=2))
    fake_api.put(NODES_PATH, gpu_node("b"))
    fake_api.delete(NODES.path(name="a"))
    eventually(lambda: ("DELETED", "a") in handler.events)
    assert handler.events == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert [n["metadata"]["name"] for n in informer.items()] == ["b"]
    assert informer.synced.is_set() and informer.relists == 1


def test_bookmarks_move_the_resume_point_without_a_relist(
    fake_api: FakeApiServer, watched: tuple[Informer, Recorder]
) -> None:
    informer, _ = watched
    eventually(informer.synced.is_set)
    for i in range(3):  # changes elsewhere move the server's resourceVersion on
        fake_api.put(PODS.path("ns"), {"metadata": {"name": f"p{i}"}})
    fake_api.bookmark()
    # The 1 s watch ends; the next one must resume from the bookmark, not from the list.
    resume = eventually(
        lambda: [q for q in watch_requests(fake_api) if q["resourceVersion"] == str(fake_api.rv)]
    )
    assert resume[0]["allowWatchBookmarks"] == "true"
    assert informer.relists == 1


def test_expired_resource_version_relists_and_reports_what_was_missed(
    fake_api: FakeApiServer, watched: tuple[Informer, Recorder]
) -> None:
    informer, handler = watched
    for name in ("a", "b", "c"):
        fake_api.put(NODES_PATH, gpu_node(name))
    eventually(lambda: len(informer.items()) == 3)
    fake_api.pause_watches()  # partitioned: nothing reaches the informer ...
    fake_api.delete(NODES.path(name="b"))  # ... while b goes away
    fake_api.put(NODES_PATH, gpu_node("c", gpus=4))  # and c changes
    fake_api.compact()  # and the history it would resume from is gone
    fake_api.pause_watches(False)
    eventually(lambda: informer.relists == 2)
    assert ("DELETED", "b") in handler.events
    assert ("MODIFIED", "c") in handler.events
    assert sorted(n["metadata"]["name"] for n in informer.items()) == ["a", "c"]
    changed = informer.get("c")
    assert changed is not None and changed["status"]["allocatable"]["nvidia.com/gpu"] == "4"


class RecordingBackoff(Backoff):
    """The real backoff, keeping what the informer asked it: its delays are unit-tested in
    test_operator_queue, so here only the call pattern and the waits are checked."""

    def __init__(self) -> None:
        super().__init__(base_s=0.05, cap_s=1.0)
        self.asked: list[tuple[int, float | None, float]] = []

    def delay(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        chosen = super().delay(attempt, retry_after_s, rand)
        self.asked.append((attempt, retry_after_s, chosen))
        return chosen


def test_failures_back_off_and_honour_retry_after(fake_api: FakeApiServer, kube: KubeApi) -> None:
    fake_api.fail("GET", NODES_PATH, 429, headers={"Retry-After": "1"})
    fake_api.fail("GET", NODES_PATH, 500, times=2)
    backoff = RecordingBackoff()
    informer = Informer(kube, NODES, Recorder(), backoff=backoff)
    stop = threading.Event()
    threading.Thread(target=informer.run, args=(stop,), daemon=True).start()
    try:
        eventually(informer.synced.is_set, timeout_s=5)
    finally:
        stop.set()
        informer.stop()
    # Three failures in a row: attempts count up (exponential), the 429's Retry-After is passed.
    assert [(a, r) for a, r, _ in backoff.asked] == [(1, 1.0), (2, None), (3, None)]
    assert backoff.asked[0][2] >= 1.0  # Retry-After wins over the 0.05 s backoff
    lists = [r.at for r in fake_api.requests if r.query.get("watch") != "true"]
    gaps = [b - a for a, b in itertools.pairwise(lists)][:3]
    # Each retry waited at least what was chosen. Only lower bounds: a loaded CI machine
    # stretches sleeps, it never shortens them.
    waits = [chosen for _, _, chosen in backoff.asked]
    assert all(gap >= wait * 0.95 for gap, wait in zip(gaps, waits, strict=True))


# -- events ---------------------------------------------------------------------------------


def test_repeated_events_are_counted_not_duplicated(fake_api: FakeApiServer, kube: KubeApi) -> None:
    recorder = EventRecorder(kube, "op-0", time.monotonic)
    obj = {
        "apiVersion": "gdnserve.io/v1alpha1",
        "kind": "Qwen35Deployment",
        "metadata": {"name": "q", "namespace": "ns", "uid": "u1"},
    }
    assert recorder.record(obj, "Warning", "InvalidSpec", "bad")
    assert recorder.record(obj, "Warning", "InvalidSpec", "bad")
    assert recorder.record(obj, "Normal", "PlanApplied", "ok")
    events, _ = kube.list(EVENTS, "ns")
    counts = sorted((e["reason"], e["count"]) for e in events)
    assert counts == [("InvalidSpec", 2), ("PlanApplied", 1)]
    assert events[0]["involvedObject"]["uid"] == "u1"
    fake_api.fail("POST", "/events", 403)
    assert not recorder.record(obj, "Normal", "Other", "refused")  # logged, never raised


# -- leader election ------------------------------------------------------------------------


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
