"""What the operator reports when it cannot carry out a deployment, against the FAKE API server
(fake_kube_apiserver.py): unforeseen errors, KubeRay's own verdict, a foreign RayService, 403s,
and where ready replicas come from."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import yaml

from gdn_operator.control import reconciler
from gdn_operator.kube.resources import DEPLOYMENTS, ENDPOINT_SLICES, EVENTS, RAYSERVICES
from tests.operator.control.running import (
    MIXED_SAMPLE,
    NS,
    Running,
    cluster,
    condition,
    create,
    kuberay_reports_ready,
    rayservice,
)
from tests.operator.fake_kube_apiserver import FakeApiServer
from tests.operator.operator_testlib import eventually

# What a real kube-apiserver answers (NamespaceLifecycle admission) for a create in a namespace
# that is being deleted, and RBAC's answer for a verb the ServiceAccount lacks.
TERMINATING = (
    'rayservices.ray.io "qwen" is forbidden: unable to create new content in namespace llm'
    " because it is being terminated"
)
RBAC_DENIED = (
    'rayservices.ray.io "qwen" is forbidden: User "system:serviceaccount:ops:gdn-operator"'
    ' cannot patch resource "rayservices" in API group "ray.io" in the namespace "llm"'
)


def status(fake: FakeApiServer, name: str = "qwen") -> dict[str, Any]:
    return dict((fake.get(DEPLOYMENTS.path(NS, name)) or {}).get("status") or {})


def message(fake: FakeApiServer, kind: str, name: str = "qwen") -> str:
    for cond in status(fake, name).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["message"])
    return ""


def warnings(fake: FakeApiServer) -> dict[str, str]:
    return {
        e["reason"]: e["message"] for e in fake.all_objects(EVENTS.path()) if e["type"] == "Warning"
    }


def applies(fake: FakeApiServer) -> int:
    return sum(1 for r in fake.requests if r.method == "PATCH" and "/rayservices/" in r.path)


def test_an_unforeseen_planning_error_ends_degraded_and_backs_off(
    fake_api: FakeApiServer, op: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_planner(*_: Any) -> Any:
        raise ZeroDivisionError("division by zero")  # stands in for any bug in planning

    monkeypatch.setattr(reconciler, "plan_deployment", broken_planner)
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "InternalError"))
    assert "ZeroDivisionError: division by zero" in message(fake_api, "Degraded")
    assert condition(fake_api, "Progressing") == ("False", "Blocked")
    eventually(lambda: "InternalError" in warnings(fake_api))
    # Retried with the key's exponential backoff (0.5 s, 1 s, 2 s, ...), not in a hot loop.
    time.sleep(2.0)
    tries = op.count("gdn_operator_reconcile_errors_total", reason="InternalError")
    assert 2 <= tries <= 5
    assert rayservice(fake_api) is None
    controller = op.operator.controller
    assert controller is not None and controller.queue.failures(f"{NS}/qwen") >= 2
    assert op.operator.healthy() == (True, "ok")


def test_an_unforeseen_apply_error_ends_degraded(
    fake_api: FakeApiServer, op: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = reconciler.build_rayservice

    def unserializable(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = real(*args, **kwargs)
        body["spec"]["oops"] = object()  # the client cannot serialize this: a bug, reported
        return body

    monkeypatch.setattr(reconciler, "build_rayservice", unserializable)
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "InternalError"))
    assert "could not apply the RayService" in message(fake_api, "Degraded")


def test_kuberay_rejecting_the_rayservice_is_degraded_not_progress(
    fake_api: FakeApiServer, op: Running
) -> None:
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: rayservice(fake_api))
    eventually(lambda: condition(fake_api, "Progressing") == ("True", "RayServiceUpdating"))
    rs = rayservice(fake_api)
    assert rs is not None
    verdict = "spec.rayClusterConfig.workerGroupSpecs[0].groupName: too long"
    rs["status"] = {  # what KubeRay v1.7.0 writes when its validation fails (and nothing else)
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "ValidationFailed", "message": verdict}
        ]
    }
    fake_api.put(RAYSERVICES.path(NS), rs)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "KubeRayValidationFailed"))
    assert message(fake_api, "Degraded") == f"KubeRay: {verdict}"
    assert condition(fake_api, "Progressing") == ("False", "Blocked")
    assert condition(fake_api, "Ready") == ("False", "ValidationFailed")
    eventually(lambda: warnings(fake_api).get("KubeRayValidationFailed") == f"KubeRay: {verdict}")


def test_a_foreign_rayservice_is_not_reported_as_ours(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    foreign = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "qwen"},
        "spec": {"serveConfigV2": "someone else's"},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
            "activeServiceStatus": {"applicationStatuses": {"qwen35": {"status": "RUNNING"}}},
        },
    }
    fake_api.put(RAYSERVICES.path(NS), foreign)
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "NotOwned"))
    observed = status(fake_api)
    assert condition(fake_api, "Ready") == ("False", "NotOwned")
    assert observed["rayServiceName"] == "" and observed["endpoint"] == ""
    assert "serve" not in observed
    assert "not controlled by this deployment" in message(fake_api, "Ready")


def test_a_terminating_namespace_is_said_and_not_retried(
    fake_api: FakeApiServer, op: Running
) -> None:
    cluster(fake_api)
    fake_api.fail("PATCH", "/rayservices/", 403, times=100, message=TERMINATING, reason="Forbidden")
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "NamespaceTerminating"))
    assert "is being deleted" in message(fake_api, "Degraded")
    tried = applies(fake_api)
    controller = op.operator.controller
    assert controller is not None
    controller.enqueue_all()  # the periodic resync: still no re-create loop
    time.sleep(1.5)
    # at most one more attempt from the resync; nothing timed (RECHECK_S) or backed off
    assert applies(fake_api) <= tried + 1
    assert controller.queue.failures(f"{NS}/qwen") == 0


def test_rbac_forbidden_is_said_as_such(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    fake_api.fail("PATCH", "/rayservices/", 403, times=100, message=RBAC_DENIED, reason="Forbidden")
    create(fake_api)
    eventually(lambda: condition(fake_api, "Degraded") == ("True", "Forbidden"))
    text = message(fake_api, "Degraded")
    assert "RBAC" in text and "cannot patch resource" in text and "terminat" not in text


def serve_slice(name: str, endpoints: list[tuple[str, str, bool | None]]) -> dict[str, Any]:
    """An EndpointSlice of `<name>-serve-svc` as the EndpointSlice controller writes it: the
    Service's labels (KubeRay's) plus its own; (pod, node, ready) per endpoint."""
    entries: list[dict[str, Any]] = []
    for pod, node, ready in endpoints:
        conditions = {} if ready is None else {"ready": ready}
        entries.append(
            {
                "addresses": [f"10.0.0.{len(entries) + 1}"],
                "conditions": conditions,
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NS},
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-serve-svc-abcde",
            "labels": {
                "kubernetes.io/service-name": f"{name}-serve-svc",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "ray.io/originated-from-crd": "RayService",
                "ray.io/originated-from-cr-name": name,
                "ray.io/serve": f"{name}-serve",
            },
        },
        "addressType": "IPv4",
        "endpoints": entries,
        "ports": [{"name": "serve", "port": 8000, "protocol": "TCP"}],
    }


def ready_replicas(fake: FakeApiServer) -> dict[str, int]:
    return {a["arch"]: a.get("readyReplicas", 0) for a in status(fake).get("archs") or []}


def test_ready_replicas_come_from_the_serve_endpoints(fake_api: FakeApiServer, op: Running) -> None:
    cluster(fake_api)
    create(fake_api)
    eventually(lambda: rayservice(fake_api))
    kuberay_reports_ready(fake_api)
    slice_ = serve_slice(
        "qwen",
        [
            ("qwen-sm89-worker-a", "rtx-0", True),
            ("qwen-sm89-worker-b", "rtx-1", False),  # its Serve proxy is not healthy yet
            ("qwen-sm90-worker-c", "h100-0", None),  # unknown: the API says read it as ready
        ],
    )
    fake_api.put(ENDPOINT_SLICES.path(NS), slice_)
    # The IPv6 slice of a dual-stack cluster lists the same Pods again: counted once.
    twin = copy.deepcopy(slice_)
    twin["metadata"]["name"] = "qwen-serve-svc-v6"
    twin["addressType"] = "IPv6"
    fake_api.put(ENDPOINT_SLICES.path(NS), twin)
    # Another RayService's endpoints do not count.
    fake_api.put(ENDPOINT_SLICES.path(NS), serve_slice("other", [("o", "h100-0", True)]))
    eventually(lambda: ready_replicas(fake_api) == {"sm89": 1, "sm90": 1})
    # status.replicas (the scale subresource's) is per arch: the planned arch with the fewest
    assert status(fake_api)["replicas"] == 1
    slice_["endpoints"][1]["conditions"] = {"ready": True}
    fake_api.put(ENDPOINT_SLICES.path(NS), slice_)
    eventually(lambda: ready_replicas(fake_api) == {"sm89": 2, "sm90": 1})
    assert status(fake_api)["replicas"] == 1
    watched = {
        r.query.get("labelSelector") for r in fake_api.requests if "endpointslices" in r.path
    }
    assert watched == {"ray.io/originated-from-crd=RayService"}
    assert not [r for r in fake_api.requests if "/pods" in r.path]  # no Pod access at all


def test_the_status_names_the_kernel_the_replicas_run(fake_api: FakeApiServer, op: Running) -> None:

    cluster(fake_api)
    spec = copy.deepcopy(MIXED_SAMPLE["spec"])
    create(fake_api, spec=spec)
    eventually(lambda: len(status(fake_api).get("archs") or []) == 2 and rayservice(fake_api))
    rs = rayservice(fake_api)
    assert rs is not None
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    running = {a["arch"]: a["gdn_backend"] for a in app["args"]["archs"]}
    reported = {a["arch"]: a["gdnBackend"] for a in status(fake_api)["archs"] if not a["excluded"]}
    assert reported == running
