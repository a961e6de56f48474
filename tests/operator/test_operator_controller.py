"""The whole operator (informers, queue, reconciler, status, events, leader election) against the
FAKE API server: what it writes, when it writes nothing, how it treats bad objects."""

from __future__ import annotations

import copy
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from fake_kube_apiserver import FakeApiServer
from gdn_operator.controller import ControllerOptions
from gdn_operator.endpoints import OperatorHTTPServer
from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.resources import DEPLOYMENTS, EVENTS, NODES, RAYSERVICES
from gdn_operator.leader import LeaseConfig
from gdn_operator.manifest import ManifestOptions
from gdn_operator.metrics import OperatorMetrics
from gdn_operator.runner import Operator, OperatorConfig
from k8s_binaries import ROOT
from operator_testlib import H100, RTX4090, eventually, gpu_node
from prometheus_client import CollectorRegistry

MIXED_SAMPLE = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/mixed.yaml").read_text())
NS = "llm"


@dataclass
class Running:
    operator: Operator
    registry: CollectorRegistry
    stop: threading.Event
    thread: threading.Thread

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def reconciles(self) -> float:
        return sum(
            self.count("gdn_operator_reconcile_duration_seconds_count", result=r)
            for r in ("ok", "requeue", "error")
        )


def start(
    kube: KubeApi,
    lease: LeaseConfig | None = None,
    namespace: str | None = None,
    identity: str = "op-0",
) -> Running:
    registry = CollectorRegistry()
    options = ControllerOptions(
        namespace=namespace,
        workers=2,
        watch_timeout_s=5,
        sync_timeout_s=5,
        manifest=ManifestOptions(default_image="gdn-serve:test"),
    )
    operator = Operator(kube, OperatorConfig(identity, options, lease), OperatorMetrics(registry))
    stop = threading.Event()
    thread = threading.Thread(target=operator.run, args=(stop,), daemon=True)
    thread.start()
    return Running(operator, registry, stop, thread)


def halt(running: Running) -> None:
    running.stop.set()
    running.thread.join(10)


@pytest.fixture
def op(kube: KubeApi) -> Iterator[Running]:
    running = start(kube)
    eventually(lambda: running.operator.ready()[0] and running.operator.controller)
    yield running
    halt(running)


def cluster(fake: FakeApiServer) -> None:
    for node in (
        gpu_node("rtx-0", RTX4090),
        gpu_node("rtx-1", RTX4090),
        gpu_node("h100-0", H100, gpus=8),
    ):
        fake.put(NODES.path(), node)


def create(
    fake: FakeApiServer, name: str = "qwen", spec: dict[str, Any] | None = None, namespace: str = NS
) -> dict[str, Any]:
    body = {
        "apiVersion": "gdnserve.io/v1alpha1",
        "kind": "Qwen35Deployment",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec if spec is not None else MIXED_SAMPLE["spec"]),
    }
    return fake.put(DEPLOYMENTS.path(namespace), body)


def rayservice(fake: FakeApiServer, name: str = "qwen") -> dict[str, Any] | None:
    return fake.get(RAYSERVICES.path(NS, name))


def groups(rs: dict[str, Any] | None) -> list[str]:
    return [
        g["groupName"]
        for g in (rs or {}).get("spec", {}).get("rayClusterConfig", {}).get("workerGroupSpecs", [])
    ]


def condition(fake: FakeApiServer, kind: str, name: str = "qwen") -> tuple[str, str] | None:
    cr = fake.get(DEPLOYMENTS.path(NS, name)) or {}
    for cond in (cr.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return cond["status"], cond["reason"]
    return None


def event_reasons(fake: FakeApiServer) -> list[str]:
    return [e["reason"] for e in fake.all_objects(EVENTS.path())]


def kuberay_reports_ready(fake: FakeApiServer, name: str = "qwen") -> None:
    rs = rayservice(fake, name)
    assert rs is not None
    rs["status"] = {
        "observedGeneration": rs["metadata"]["generation"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
        "activeServiceStatus": {"applicationStatuses": {"qwen35": {"status": "RUNNING"}}},
    }
    fake.put(RAYSERVICES.path(NS), rs)


def test_creates_the_rayservice_and_reports_status(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    cr = create(fake_api)
    rs = eventually(lambda: rayservice(fake_api))
    assert rs is not None and groups(rs) == ["sm89", "sm90"]
    (owner,) = rs["metadata"]["ownerReferences"]
    assert owner["uid"] == cr["metadata"]["uid"] and owner["controller"] is True
    eventually(lambda: condition(fake_api, "Progressing") == ("True", "RayServiceUpdating"))
    assert condition(fake_api, "Degraded") == ("False", "AsPlanned")
    assert condition(fake_api, "Ready") == ("False", "RayService")
    eventually(lambda: {"PlanApplied", "BackendSelected"} <= set(event_reasons(fake_api)))
    kuberay_reports_ready(fake_api)
    eventually(lambda: condition(fake_api, "Ready") == ("True", "NonZeroServeEndpoints"))
    status = fake_api.get(DEPLOYMENTS.path(NS, "qwen"))["status"]
    assert status["endpoint"] == "http://qwen-serve-svc.llm.svc:8000/v1"
    assert status["observedGeneration"] == 1
    assert condition(fake_api, "Progressing") == ("False", "Stable")


def test_a_reconcile_with_nothing_to_do_writes_nothing(
    fake_api: FakeApiServer, op: Running
) -> None:
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: rayservice(fake_api))
    kuberay_reports_ready(fake_api)
    eventually(lambda: condition(fake_api, "Ready") == ("True", "NonZeroServeEndpoints"))
    settled = len(fake_api.writes())
    done = op.reconciles()
    controller = op.operator.controller
    assert controller is not None
    controller.enqueue_all()  # what the periodic resync does
    heartbeat = gpu_node("h100-0", H100, gpus=8, labels={"nvidia.com/gfd.timestamp": "1"})
    fake_api.put(NODES.path(), heartbeat)  # GFD relabels, kubelet heartbeats: nothing to plan
    eventually(lambda: op.reconciles() >= done + 1)
    time.sleep(0.3)  # room for anything the node change might (wrongly) trigger
    assert fake_api.writes()[settled:] == []


def test_node_changes_replan(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: groups(rayservice(fake_api)) == ["sm89", "sm90"])
    fake_api.put(NODES.path(), gpu_node("h100-0", H100, gpus=8, unschedulable=True))
    eventually(lambda: groups(rayservice(fake_api)) == ["sm89"])
    fake_api.put(NODES.path(), gpu_node("h100-0", H100, gpus=8))
    eventually(lambda: groups(rayservice(fake_api)) == ["sm89", "sm90"])
    fake_api.delete(NODES.path(name="rtx-0"))
    fake_api.delete(NODES.path(name="rtx-1"))
    eventually(lambda: groups(rayservice(fake_api)) == ["sm90"])


def test_bad_objects_end_degraded_with_an_event(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    spec = copy.deepcopy(MIXED_SAMPLE["spec"])
    spec["engineArgs"] = {"tensor_parallel_size": 2}
    create(fake_api, "bad", spec)
    create(fake_api, "good")
    eventually(lambda: condition(fake_api, "Degraded", "bad") == ("True", "InvalidSpec"))
    eventually(lambda: rayservice(fake_api, "good"))  # the others carry on
    assert rayservice(fake_api, "bad") is None
    eventually(lambda: "InvalidSpec" in event_reasons(fake_api))
    controller = op.operator.controller
    assert controller is not None
    for thread in threading.enumerate():
        if thread.name.startswith("worker-"):
            assert thread.is_alive()


def test_nothing_fits_until_a_node_arrives(fake_api: FakeApiServer, op: Running) -> None:
    fake_api.put(NODES.path(), gpu_node("rtx-0", RTX4090))
    spec = copy.deepcopy(MIXED_SAMPLE["spec"])
    spec["model"]["quantization"] = "none"  # bf16: ~65 GiB of weights
    create(fake_api, spec=spec)

    def degraded_message() -> str:
        cr = fake_api.get(DEPLOYMENTS.path(NS, "qwen"))
        return str(cr["status"]["conditions"][2]["message"]) if cr.get("status") else ""

    # The CR can be planned before the node informer has seen rtx-0 ("no schedulable GPU
    # nodes"); the node event then re-plans it, and the message names the arch that is too small.
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "NoSchedulableArch"))
    eventually(lambda: "sm89: does not fit" in degraded_message())
    fake_api.put(NODES.path(), gpu_node("h100-0", H100, gpus=8))
    eventually(lambda: groups(rayservice(fake_api)) == ["sm90"])
    eventually(lambda: condition(fake_api, "Degraded") == ("False", "AsPlanned"))


def test_leaves_a_rayservice_it_does_not_own_alone(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    foreign = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "qwen"},
        "spec": {"serveConfigV2": "someone else's"},
    }
    fake_api.put(RAYSERVICES.path(NS), foreign)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "NotOwned"))
    assert rayservice(fake_api)["spec"] == foreign["spec"]  # type: ignore[index]


def test_missing_kuberay_is_reported(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    fake_api.fail("PATCH", "/rayservices/", 404)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "RayServiceUnavailable"))


def test_transient_errors_are_retried(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    fake_api.fail("PATCH", "/rayservices/", 500, times=2)
    create(fake_api)
    eventually(lambda: rayservice(fake_api))
    assert op.count("gdn_operator_reconcile_errors_total", reason="api_500") == 2


def test_status_conflicts_are_retried_on_a_fresh_read(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    fake_api.fail("PATCH", "/status", 409)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("False", "AsPlanned"))
    patches = [r for r in fake_api.requests if r.path.endswith("/status")]
    assert len(patches) >= 2
    reads = [
        r for r in fake_api.requests if r.method == "GET" and r.path == DEPLOYMENTS.path(NS, "qwen")
    ]
    assert reads  # the retry re-read the object instead of reusing the stale one


def test_deleting_the_deployment(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Progressing") == ("True", "RayServiceUpdating"))
    time.sleep(0.3)  # settled: the reconciles the operator's own writes caused are done
    writes, done = len(fake_api.writes()), op.reconciles()
    fake_api.delete(DEPLOYMENTS.path(NS, "qwen"))
    eventually(lambda: op.reconciles() > done)
    assert fake_api.writes()[writes:] == []  # nothing to clean up by hand ...
    # ... because the owner reference hands the RayService to Kubernetes' garbage collector,
    # which this fake (like a bare API server) does not run.
    owner = rayservice(fake_api)["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert (owner["kind"], owner["name"]) == ("Qwen35Deployment", "qwen")


def test_namespaced_watch_ignores_other_namespaces(fake_api: FakeApiServer, kube: KubeApi) -> None:
    running = start(kube, namespace=NS)
    try:
        cluster(fake_api)
        create(fake_api, "other", namespace="elsewhere")
        create(fake_api)
        eventually(lambda: rayservice(fake_api))
        assert fake_api.get(RAYSERVICES.path("elsewhere", "other")) is None
        watched = {r.path for r in fake_api.requests if r.query.get("watch") == "true"}
        assert DEPLOYMENTS.path(NS) in watched and DEPLOYMENTS.path() not in watched
    finally:
        halt(running)


def test_metrics_and_probes(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: rayservice(fake_api))
    kuberay_reports_ready(fake_api)
    eventually(lambda: condition(fake_api, "Ready") == ("True", "NonZeroServeEndpoints"))
    server = OperatorHTTPServer("127.0.0.1", 0, op.registry, op.operator.healthy, op.operator.ready)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
        assert 'gdn_operator_deployments{condition="Ready",status="True"} 1.0' in metrics
        assert "gdn_operator_reconcile_duration_seconds_bucket" in metrics
        assert "gdn_operator_workqueue_depth" in metrics
        assert 'gdn_operator_api_writes_total{kind="rayservice"}' in metrics
        assert urllib.request.urlopen(f"{base}/healthz").status == 200
        assert urllib.request.urlopen(f"{base}/readyz").read() == b"leading, caches synced\n"
    finally:
        server.stop()


def test_two_replicas_one_leader_and_handover(fake_api: FakeApiServer, kube: KubeApi) -> None:
    cluster(fake_api)
    create(fake_api, "first")

    def config(identity: str) -> LeaseConfig:
        return LeaseConfig(
            name="gdn-operator",
            namespace="ops",
            identity=identity,
            lease_duration_s=3.0,
            renew_deadline_s=2.0,
            retry_period_s=0.2,
        )

    a = start(kube, lease=config("a"), identity="a")
    eventually(lambda: rayservice(fake_api, "first"))
    b = start(kube, lease=config("b"), identity="b")
    try:
        assert a.count("gdn_operator_leader") == 1 and b.count("gdn_operator_leader") == 0
        assert b.operator.ready() == (True, "standby (not the leader)")
        halt(a)  # a rolling update stops the leader; it releases the Lease
        eventually(lambda: b.count("gdn_operator_leader") == 1, timeout_s=3)
        create(fake_api, "second")
        eventually(lambda: rayservice(fake_api, "second"))
        events = eventually(
            lambda: [
                e
                for e in fake_api.all_objects(EVENTS.path())
                if e["involvedObject"]["name"] == "second"
            ]
        )
        assert {e["reportingInstance"] for e in events} == {"b"}
    finally:
        halt(b)
