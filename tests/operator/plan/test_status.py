"""Status: conditions from the plan and the observed RayService, computed in one place."""

from __future__ import annotations

from typing import Any

from gdn_operator.api.spec import parse_spec
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.planner import Plan, plan_deployment
from gdn_operator.plan.status import Observed, Problem, compute_status
from tests.operator.operator_testlib import (
    H100,
    QWEN35_35B_A3B,
    RTX4090,
    deployment,
    gpu_node,
    model,
)

SPEC = {"model": model(QWEN35_35B_A3B, maxModelLen=32768)}
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def plan() -> Plan:
    nodes = [gpu_node("rtx", RTX4090), gpu_node("h", H100, gpus=8)]
    return plan_deployment(parse_spec(SPEC), build_inventory(nodes))


def rayservice(
    conditions: list[dict[str, Any]] | None = None,
    generation: int = 1,
    observed: int = 1,
    app: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed}
    if conditions is not None:
        status["conditions"] = conditions
    if app is not None:
        status["activeServiceStatus"] = {"applicationStatuses": {"qwen35": app}}
    return {"metadata": {"name": "qwen", "generation": generation}, "status": status}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_before_the_rayservice_exists() -> None:
    status = compute_status(deployment(SPEC), plan(), None, Observed(None, {}), T0)
    assert conditions(status) == {
        "Ready": ("False", "NotDeployed"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("False", "AsPlanned"),
    }
    assert status["endpoint"] == "" and status["observedGeneration"] == 1
    archs = {a["arch"]: a for a in status["archs"]}
    assert archs["sm89"]["excluded"] and "does not fit" in archs["sm89"]["reason"]
    assert archs["sm90"]["tensorParallelSize"] == 1
    assert archs["sm90"]["gdnBackend"] and archs["sm90"]["gdnBackendReason"]
    assert status["archSummary"] == "sm90 0/1"
    assert status["selector"] == "gdnserve.io/deployment=qwen,gdnserve.io/role=worker"


def test_ready_mirrors_kuberay() -> None:
    ready = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "NonZeroServeEndpoints",
            "message": "Number of serve endpoints is greater than 0",
        }
    ]
    app = {
        "status": "RUNNING",
        "serveDeploymentStatuses": {
            "LLM:sm90": {"status": "HEALTHY"},
            "Ingress": {"status": "HEALTHY"},
        },
    }
    status = compute_status(
        deployment(SPEC), plan(), None, Observed(rayservice(ready, app=app), {"sm90": 2}), T0
    )
    assert conditions(status) == {
        "Ready": ("True", "NonZeroServeEndpoints"),
        "Progressing": ("False", "Stable"),
        "Degraded": ("False", "AsPlanned"),
    }
    assert status["endpoint"] == "http://qwen-serve-svc.default.svc:8000/v1"
    assert status["rayServiceName"] == "qwen"
    assert status["replicas"] == 2 and status["archSummary"] == "sm90 2/1"
    assert status["serve"]["status"] == "RUNNING"
    assert [d["name"] for d in status["serve"]["deployments"]] == ["Ingress", "LLM:sm90"]


def test_ready_from_service_status_on_kuberay_without_conditions() -> None:
    rs = rayservice()
    rs["status"]["serviceStatus"] = "Running"
    status = compute_status(deployment(SPEC), plan(), None, Observed(rs, {}), T0)
    assert conditions(status)["Ready"] == ("True", "RayService")


def test_progressing_while_kuberay_catches_up_or_upgrades() -> None:
    pending = compute_status(
        deployment(SPEC), plan(), None, Observed(rayservice(generation=2, observed=1), {}), T0
    )
    assert conditions(pending)["Progressing"] == ("True", "RayServiceUpdating")
    upgrading = rayservice(
        [
            {"type": "Ready", "status": "True", "reason": "x"},
            {"type": "UpgradeInProgress", "status": "True", "reason": "y"},
        ]
    )
    status = compute_status(deployment(SPEC), plan(), None, Observed(upgrading, {}), T0)
    assert conditions(status)["Progressing"] == ("True", "Upgrading")


def test_unhealthy_serve_app_is_degraded() -> None:
    app = {"status": "DEPLOY_FAILED", "message": "replica crashed"}
    status = compute_status(
        deployment(SPEC), plan(), None, Observed(rayservice([], app=app), {}), T0
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ServeUnhealthy")
    assert "replica crashed" in degraded["message"]


def test_a_problem_blocks_progress_and_degrades() -> None:
    cr = deployment(SPEC)
    cr["status"] = {"archs": [{"arch": "sm90", "excluded": False}]}
    problem = Problem("InvalidSpec", "spec.engineArgs sets tensor_parallel_size")
    status = compute_status(cr, None, problem, Observed(None, {}), T0)
    assert conditions(status) == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "Blocked"),
        "Degraded": ("True", "InvalidSpec"),
    }
    assert status["archs"] == cr["status"]["archs"]  # what runs is still described


def test_transition_times_move_only_when_a_status_flips() -> None:
    cr = deployment(SPEC)
    first = compute_status(cr, plan(), None, Observed(None, {}), T0)
    cr["status"] = first
    same = compute_status(cr, plan(), None, Observed(None, {}), T1)
    assert same == first  # recomputing an unchanged state changes nothing: no write
    ready = rayservice([{"type": "Ready", "status": "True", "reason": "r"}])
    flipped = compute_status(cr, plan(), None, Observed(ready, {}), T1)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times == {"Ready": T1, "Progressing": T1, "Degraded": T0}
    assert all(c["observedGeneration"] == 1 for c in flipped["conditions"])


def test_kuberay_giving_up_is_degraded_with_its_message() -> None:
    for reason in ("ValidationFailed", "InitializingTimeout"):
        rejected = rayservice(
            [{"type": "Ready", "status": "False", "reason": reason, "message": "groupName bad"}],
            generation=2,
            observed=1,  # KubeRay does not move observedGeneration when it rejects a spec
        )
        status = compute_status(deployment(SPEC), plan(), None, Observed(rejected, {}), T0)
        assert conditions(status) == {
            "Ready": ("False", reason),
            "Progressing": ("False", "Blocked"),
            "Degraded": ("True", f"KubeRay{reason}"),
        }
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["message"] == "KubeRay: groupName bad"
    # Negative control: a RayService still initializing is progress, not a failure.
    starting = rayservice(
        [{"type": "Ready", "status": "False", "reason": "Initializing", "message": "starting"}]
    )
    status = compute_status(deployment(SPEC), plan(), None, Observed(starting, {}), T0)
    assert conditions(status)["Degraded"] == ("False", "AsPlanned")
    assert conditions(status)["Progressing"] == ("True", "WaitingForReady")


def test_a_problem_without_a_rayservice_is_the_ready_reason() -> None:
    problem = Problem("NotOwned", "RayService qwen exists and is not controlled by this deployment")
    status = compute_status(deployment(SPEC), plan(), problem, Observed(None, {}), T0)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "NotOwned",
        problem.message,
    )
    assert status["rayServiceName"] == "" and status["endpoint"] == ""


def test_long_texts_are_cut_to_what_the_crd_accepts() -> None:
    """A KubeRay message past the CRD's maxLength would make the API server refuse the status."""
    verdict = "x" * 40000
    rejected = rayservice(
        [{"type": "Ready", "status": "False", "reason": "ValidationFailed", "message": verdict}]
    )
    status = compute_status(deployment(SPEC), plan(), None, Observed(rejected, {}), T0)
    messages = {c["type"]: c["message"] for c in status["conditions"]}
    assert all(len(m) <= 32768 for m in messages.values())
    assert messages["Degraded"].startswith("KubeRay: xxx") and messages["Degraded"].endswith("...")


def test_scale_status_counts_the_per_arch_quantity_its_spec_path_sets() -> None:
    # spec.autoscaling.minReplicas (the scale subresource's spec path) is a per-arch minimum, so
    # status.replicas is the ready count of the planned arch with the fewest: `kubectl scale
    # --replicas=3` is met once every planned arch has 3 ready.
    spec = {
        "model": model(QWEN35_35B_A3B, maxModelLen=32768, quantization="awq"),
        "autoscaling": {"minReplicas": 3},
        "archs": [{"arch": "sm89", "maxReplicas": 2}],
    }
    nodes = [gpu_node(f"r-{i}", RTX4090) for i in range(4)] + [gpu_node("h", H100, gpus=8)]
    planned = plan_deployment(parse_spec(spec), build_inventory(nodes))
    status = compute_status(
        deployment(spec), planned, None, Observed(None, {"sm89": 2, "sm90": 3}), T0
    )
    assert status["replicas"] == 2
    archs = {a["arch"]: a for a in status["archs"]}
    # The capped arch stays in the plan and says why it has fewer than asked.
    assert archs["sm89"]["desiredReplicas"] == 2 and not archs["sm89"]["excluded"]
    assert "is above maxReplicas 2 (spec.archs[sm89].maxReplicas)" in archs["sm89"]["reason"]
    assert "reason" not in archs["sm90"]
