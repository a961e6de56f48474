"""The whole operator (informers, queue, reconciler, status, events, leader election) against the
FAKE API server: what it writes, when it writes nothing, how it treats bad objects."""

from __future__ import annotations

import copy
import socket
import threading
import time
import urllib.request

import pytest
from kubernetes import client

from gdn_operator.control.endpoints import OperatorHTTPServer
from gdn_operator.control.leader import LeaseConfig
from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.client import without_hidden_retries
from gdn_operator.kube.resources import DEPLOYMENTS, EVENTS, NODES, RAYSERVICES
from tests.operator.control.running import (
    CPU_IMAGE,
    CPU_SAMPLE,
    MIXED_SAMPLE,
    NS,
    Running,
    cluster,
    condition,
    create,
    event_reasons,
    groups,
    halt,
    kuberay_reports_ready,
    rayservice,
    start,
)
from tests.operator.fake_kube_apiserver import FakeApiServer
from tests.operator.operator_testlib import H100, RTX4090, cpu_node, eventually, gpu_node


def test_creates_the_rayservice_and_reports_status(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    cr = create(fake_api)
    # the nodes reach the operator one watch event at a time: a first plan may hold only the
    # arches seen so far, and the plan with both follows
    eventually(lambda: groups(rayservice(fake_api)) == ["sm89", "sm90"])
    rs = rayservice(fake_api)
    assert rs is not None
    (owner,) = rs["metadata"]["ownerReferences"]
    assert owner["uid"] == cr["metadata"]["uid"] and owner["controller"] is True
    eventually(lambda: condition(fake_api, "Progressing") == ("True", "RayServiceUpdating"))
    assert condition(fake_api, "Degraded") == ("False", "AsPlanned")
    assert condition(fake_api, "Ready") == ("False", "RayService")
    eventually(lambda: {"PlanApplied", "BackendSelected"} <= set(event_reasons(fake_api)))
    kuberay_reports_ready(fake_api)
    eventually(lambda: condition(fake_api, "Ready") == ("True", "NonZeroServeEndpoints"))
    after = fake_api.get(DEPLOYMENTS.path(NS, "qwen"))
    assert after is not None
    status = after["status"]
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


def test_a_new_arch_is_appended_to_the_running_worker_groups(
    fake_api: FakeApiServer, op: Running
) -> None:
    # KubeRay updates a Ray cluster in place only when worker groups are appended: the
    # reconciler hands the planner the RayService it read, so sm89 arriving later goes last.
    fake_api.put(NODES.path(), gpu_node("h100-0", H100, gpus=8))
    create(fake_api)
    eventually(lambda: groups(rayservice(fake_api)) == ["sm90"])
    fake_api.put(NODES.path(), gpu_node("rtx-0", RTX4090))
    fake_api.put(NODES.path(), gpu_node("rtx-1", RTX4090))
    eventually(lambda: groups(rayservice(fake_api)) == ["sm90", "sm89"])


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
        return str(cr["status"]["conditions"][2]["message"]) if cr and cr.get("status") else ""

    # The CR can be planned before the node informer has seen rtx-0 ("no schedulable GPU
    # nodes"); the node event then re-plans it, and the message names the arch that is too small.
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "NoSchedulableArch"))
    eventually(lambda: "sm89: does not fit" in degraded_message())
    fake_api.put(NODES.path(), gpu_node("h100-0", H100, gpus=8))
    eventually(lambda: groups(rayservice(fake_api)) == ["sm90"])
    eventually(lambda: condition(fake_api, "Degraded") == ("False", "AsPlanned"))


def _degraded_message(fake_api: FakeApiServer, name: str = "qwen") -> str:
    cr = fake_api.get(DEPLOYMENTS.path(NS, name))
    conditions = (cr or {}).get("status", {}).get("conditions", [])
    return next((str(c.get("message")) for c in conditions if c["type"] == "Degraded"), "")


def test_cpu_nodes_serve_only_the_deployment_that_lists_cpu(
    fake_api: FakeApiServer, op: Running
) -> None:
    fake_api.put(NODES.path(), gpu_node("rtx-0", RTX4090))
    create(fake_api, spec=CPU_SAMPLE["spec"])
    create(fake_api, name="gpu", spec={**CPU_SAMPLE["spec"], "archs": []})
    # A GPU node is no CPU node: the CPU deployment waits for one, readably.
    eventually(lambda: "no schedulable CPU nodes" in _degraded_message(fake_api))
    assert rayservice(fake_api) is None
    fake_api.put(NODES.path(), cpu_node("cpu-0", cpu="8", memory="32Gi"))
    eventually(lambda: groups(rayservice(fake_api)) == ["cpu"])
    rs = rayservice(fake_api)
    assert rs is not None
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == CPU_IMAGE
    eventually(lambda: condition(fake_api, "Degraded") == ("False", "AsPlanned"))
    # The same model without the opt-in lands on the GPU node, never on the CPU one.
    eventually(lambda: groups(rayservice(fake_api, "gpu")) == ["sm89"])


def test_a_gpu_deployment_on_a_cluster_without_gpus_stays_degraded(
    fake_api: FakeApiServer, op: Running
) -> None:
    fake_api.put(NODES.path(), cpu_node("cpu-0", cpu="8", memory="32Gi"))
    create(fake_api, spec={**CPU_SAMPLE["spec"], "archs": []})
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "NoSchedulableArch"))
    eventually(lambda: "list arch cpu in spec.archs" in _degraded_message(fake_api))
    assert rayservice(fake_api) is None


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


def test_status_is_one_server_side_apply_without_a_precondition(
    fake_api: FakeApiServer, op: Running
) -> None:
    """A burst of 100 new deployments: every status write is a single apply call on the status
    subresource, no resourceVersion (so nothing a 409 could hit), and no re-read of the object."""
    cluster(fake_api)
    names = [f"burst-{i}" for i in range(100)]
    for name in names:
        create(fake_api, name)

    # 100 RayServices, ~400 Events and the status writes through one in-process fake on a
    # shared 2-core machine: give it time.
    def all_planned() -> bool:
        return all(condition(fake_api, "Degraded", n) == ("False", "AsPlanned") for n in names)

    eventually(all_planned, timeout_s=120, interval_s=0.5)
    writes = [r for r in fake_api.requests if r.path.endswith("/status")]
    assert {r.path.split("/")[-2] for r in writes} == set(names)
    for request in writes:
        assert request.method == "PATCH"
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query == {"fieldManager": "gdn-operator", "force": "true"}
        assert "resourceVersion" not in request.body["metadata"]
        assert set(request.body) == {"apiVersion", "kind", "metadata", "status"}
    reads = [
        r
        for r in fake_api.requests
        if r.method == "GET" and r.path.startswith(DEPLOYMENTS.path(NS) + "/")
    ]
    assert reads == []  # no read-modify-write
    assert op.count("gdn_operator_reconcile_errors_total", reason="api_409") == 0


def test_a_status_the_operator_no_longer_sends_goes_away(
    fake_api: FakeApiServer, op: Running
) -> None:
    """Negative control for the apply above: the applied status replaces what was there (a
    merge patch would have kept the stale `serve` entry)."""
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: rayservice(fake_api))
    kuberay_reports_ready(fake_api)
    eventually(
        lambda: (fake_api.get(DEPLOYMENTS.path(NS, "qwen")) or {}).get("status", {}).get("serve")
    )
    rs = rayservice(fake_api)
    assert rs is not None
    rs["status"].pop("activeServiceStatus")
    fake_api.put(RAYSERVICES.path(NS), rs)
    eventually(
        lambda: (
            "serve"
            not in (
                (fake_api.get(DEPLOYMENTS.path(NS, "qwen")) or {}).get("status") or {"serve": 1}
            )
        )
    )


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
        eventually(lambda: b.operator.ready() == (True, "standby (not the leader)"))
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


def short_lease(identity: str) -> LeaseConfig:
    return LeaseConfig(
        name="gdn-operator",
        namespace="ops",
        identity=identity,
        lease_duration_s=2.0,
        renew_deadline_s=1.2,
        retry_period_s=0.2,
    )


def test_the_api_server_gone_longer_than_the_renew_deadline() -> None:
    """The leader steps down: its controller stops (no reconcile without the Lease), `run`
    returns False (the process exits and Kubernetes restarts it as a fresh candidate), and the
    failed Lease calls are counted."""
    gone = FakeApiServer().start()
    configuration = client.Configuration()
    configuration.host = gone.url
    api = KubeApi(client.ApiClient(without_hidden_retries(configuration)), timeout_s=(1.0, 5.0))
    cluster(gone)
    create(gone)
    leader = start(api, lease=short_lease("a"), identity="a")
    try:
        eventually(lambda: rayservice(gone) and leader.count("gdn_operator_leader") == 1)
        gone.go_dark()
        stopped_at = time.monotonic()
        leader.thread.join(10)
        took = time.monotonic() - stopped_at
    finally:
        leader.stop.set()
        gone.stop()
    assert leader.returned == [False]  # on its own, not because it was stopped
    assert took < 1.2 + 2.0  # renew deadline + the call in flight + a retry period
    assert leader.count("gdn_operator_leader") == 0
    controller_thread = leader.operator._thread
    assert controller_thread is not None and not controller_thread.is_alive()
    failed = sum(
        leader.count("gdn_operator_lease_errors_total", operation=verb, status="0")
        for verb in ("get", "update")
    )
    assert failed >= 1


def test_a_standby_that_cannot_reach_the_lease_is_not_ready(
    fake_api: FakeApiServer, kube: KubeApi
) -> None:
    a = start(kube, lease=short_lease("a"), identity="a")
    eventually(lambda: a.count("gdn_operator_leader") == 1)
    b = start(kube, lease=short_lease("b"), identity="b")
    try:
        eventually(lambda: b.operator.ready() == (True, "standby (not the leader)"))
        # From now on the Lease cannot be read: the API server answers 503 to every Lease GET.
        fake_api.fail("GET", "/leases/", 503, times=10**6)
        halt(a)
        eventually(lambda: not b.operator.ready()[0], timeout_s=5)
        detail = b.operator.ready()[1]
        assert detail.startswith("cannot reach the Lease for ")
        assert "503" in detail
    finally:
        halt(b)


def test_the_http_endpoint_binds_an_ipv6_pod_address(op: Running) -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6 stack")
    try:
        server = OperatorHTTPServer("::1", 0, op.registry, op.operator.healthy, op.operator.ready)
    except OSError as exc:  # IPv6 compiled in but no ::1 configured (some containers)
        pytest.skip(f"::1 cannot be bound here: {exc}")
    server.start()
    try:
        assert urllib.request.urlopen(f"http://[::1]:{server.port}/healthz").status == 200
    finally:
        server.stop()
