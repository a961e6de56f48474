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
from kubernetes import client

from gdn_operator.kube import api as kube_api
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.backoff import Backoff
from gdn_operator.kube.client import new_api_client, without_hidden_retries
from gdn_operator.kube.events import EventRecorder
from gdn_operator.kube.informer import Informer
from gdn_operator.kube.resources import DEPLOYMENTS, EVENTS, NODES, RAYSERVICES, Resource
from tests.operator.fake_kube_apiserver import FakeApiServer
from tests.operator.operator_testlib import eventually, gpu_node

NODES_PATH = NODES.path()
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)


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
    fake_api.put(CONFIGMAPS.path("ns"), {"metadata": {"name": "p"}, "spec": {}})
    current = kube.get(CONFIGMAPS, "p", "ns")["metadata"]["resourceVersion"]
    stale = {"metadata": {"resourceVersion": "0"}, "spec": {"x": 1}}
    with pytest.raises(ApiError) as conflict:
        kube.patch(CONFIGMAPS, "p", "ns", stale)
    assert conflict.value.conflict
    kube.patch(CONFIGMAPS, "p", "ns", {"metadata": {"resourceVersion": current}, "spec": {"x": 1}})


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
        fake_api.put(CONFIGMAPS.path("ns"), {"metadata": {"name": f"p{i}"}})

    def resumed_from_a_bookmark() -> list[dict[str, str]]:
        # A bookmark reaches open watches only: ask again until one was open to receive it.
        fake_api.bookmark()
        return [q for q in watch_requests(fake_api) if q["resourceVersion"] == str(fake_api.rv)]

    # The 1 s watch ends; the next one must resume from the bookmark, not from the list.
    resume = eventually(resumed_from_a_bookmark, interval_s=0.2)
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
    control/test_queue.py, so here only the call pattern and the waits are checked."""

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


def test_a_403_says_whether_the_namespace_is_terminating() -> None:
    terminating = ApiError(
        403,
        "Forbidden",
        'rayservices.ray.io "q" is forbidden: unable to create new content in namespace llm'
        " because it is being terminated",
    )
    by_cause = ApiError(
        403, "Forbidden", "forbidden", details={"causes": [{"reason": "NamespaceTerminating"}]}
    )
    rbac = ApiError(403, "Forbidden", 'User "x" cannot patch resource "rayservices"')
    assert terminating.namespace_terminating and by_cause.namespace_terminating
    assert rbac.forbidden and not rbac.namespace_terminating
    # Negative control: the same words on another status are not a terminating namespace.
    assert not ApiError(422, "Invalid", terminating.message).namespace_terminating


def test_status_apply_is_one_request_without_a_precondition(
    fake_api: FakeApiServer, kube: KubeApi
) -> None:
    path = DEPLOYMENTS.path("ns")
    fake_api.put(path, {"metadata": {"name": "d"}, "spec": {}, "status": {"old": True}})
    since = len(fake_api.requests)
    body = {
        "apiVersion": DEPLOYMENTS.api_version,
        "kind": DEPLOYMENTS.kind,
        "metadata": {"name": "d", "namespace": "ns"},
        "status": {"observedGeneration": 1},
    }
    kube.apply_status(DEPLOYMENTS, body)
    (request,) = fake_api.requests[since:]
    assert (request.method, request.path) == ("PATCH", DEPLOYMENTS.path("ns", "d", "status"))
    assert request.content_type == "application/apply-patch+yaml"
    assert request.query == {"fieldManager": "gdn-operator", "force": "true"}
    assert request.body == body
    assert (fake_api.get(DEPLOYMENTS.path("ns", "d")) or {})["status"] == {"observedGeneration": 1}


def test_with_timeout_bounds_both_timeouts(kube: KubeApi) -> None:
    assert kube.with_timeout(0.7).timeout_s == (0.7, 0.7)
    assert kube.with_timeout(60).timeout_s == kube.timeout_s  # never longer than configured
    assert kube.timeout_s == (2.0, 10.0)  # the original is left alone


def test_the_lease_client_has_no_urllib3_retries() -> None:
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:1"
    lease_client = new_api_client(configuration, connect_retries=0)
    main_client = new_api_client(configuration)
    retries = lease_client.rest_client.pool_manager.connection_pool_kw["retries"]
    assert (retries.total, retries.connect, retries.read, retries.status) == (0, 0, 0, 0)
    assert main_client.rest_client.pool_manager.connection_pool_kw["retries"].connect == 3
    assert configuration.retries is None  # each client got its own copy
