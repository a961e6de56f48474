"""What the CR's status says, computed in one place from the plan and what the cluster reports.

Pure. Conditions follow the usual meaning: `Ready` mirrors the RayService (KubeRay's own `Ready`
condition, or its service status on KubeRay versions without conditions); `Progressing` is True
while something is being created, upgraded or waited for; `Degraded` is True when the operator
cannot carry out the spec (invalid spec, no arch fits, apply failed), when KubeRay has given up on
the RayService (its `Ready` condition says `ValidationFailed` or `InitializingTimeout`: terminal
for KubeRay, so never reported as progress), or Serve reports the application unhealthy. The
caller passes only a RayService this deployment controls (`Observed.rayservice`), so a foreign
object's name, endpoint or readiness never shows here. The caller writes the status only when
`compute_status` returns something different from what is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gdn_operator.plan.manifest import APP_NAME, serve_endpoint, worker_selector
from gdn_operator.plan.planner import Plan

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
UNHEALTHY_APP_STATES = ("DEPLOY_FAILED", "UNHEALTHY")
# KubeRay's reasons on a RayService's Ready=False after which it stops working on it (v1.3+:
# spec or metadata validation failed; the cluster did not come up within the initializing
# timeout). Ours, for Degraded: "KubeRay" + theirs.
KUBERAY_TERMINAL = ("ValidationFailed", "InitializingTimeout")
# The CRD's maxLength for messages and for reasons/products (api/crd.py): longer text (a KubeRay
# message, an exception) is cut, or the API server would refuse the whole status (422) and the
# deployment would report nothing at all.
MESSAGE_MAX, SHORT_MAX = 32768, 1024


@dataclass(frozen=True)
class Problem:
    """Why the operator could not carry out the spec: a CamelCase reason and a message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    rayservice: Mapping[str, Any] | None
    ready_pods: Mapping[str, int]  # arch -> ready worker Pods


def compute_status(
    cr: Mapping[str, Any],
    plan: Plan | None,
    problem: Problem | None,
    observed: Observed,
    now: str,
) -> dict[str, Any]:
    meta = cr["metadata"]
    name, generation = meta["name"], meta.get("generation", 0)
    old = cr.get("status") or {}
    rs = observed.rayservice
    problem = problem or rejected_by_kuberay(rs)
    archs = _arch_entries(plan, observed.ready_pods) if plan else old.get("archs", [])
    conditions = [
        _ready(rs, problem),
        _progressing(rs, problem),
        _degraded(rs, problem),
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": _with_transitions(conditions, old.get("conditions", []), generation, now),
        "rayServiceName": name if rs is not None else "",
        "endpoint": serve_endpoint(name, meta["namespace"]) if rs is not None else "",
        "archSummary": _summary(archs),
        "replicas": scale_replicas(archs),
        "selector": worker_selector(name),
        "archs": archs,
    }
    serve = _serve_status(rs)
    if serve:
        status["serve"] = serve
    return status


def rejected_by_kuberay(rs: Mapping[str, Any] | None) -> Problem | None:
    """KubeRay's own verdict when it has given up on the RayService, in KubeRay's words."""
    cond = _rs_condition(rs, "Ready") if rs is not None else None
    if cond is None or cond.get("status") != "False":
        return None
    reason = str(cond.get("reason") or "")
    if reason not in KUBERAY_TERMINAL:
        return None
    return Problem(f"KubeRay{reason}", f"KubeRay: {cond.get('message') or reason}")


def _arch_entries(plan: Plan, ready_pods: Mapping[str, int]) -> list[dict[str, Any]]:
    entries = [
        {
            "arch": a.arch,
            "product": clip(a.product, SHORT_MAX),
            "nodes": a.nodes,
            "gpusPerNode": a.gpus_per_node,
            "gpuMemoryMiB": a.gpu_memory_mib,
            "tensorParallelSize": a.tensor_parallel_size,
            "expertParallel": a.expert_parallel,
            "gdnBackend": a.backend.active,
            "gdnBackendReason": clip(a.backend.reason, SHORT_MAX),
            "desiredReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "readyReplicas": ready_pods.get(a.arch, 0),
            "excluded": False,
            **({"reason": a.note} if a.note else {}),
        }
        for a in plan.archs
    ]
    entries += [
        {
            "arch": e.arch,
            "product": clip(e.product, SHORT_MAX),
            "nodes": e.nodes,
            "gpusPerNode": e.gpus_per_node,
            "gpuMemoryMiB": e.gpu_memory_mib,
            "excluded": True,
            "reason": clip(e.reason, SHORT_MAX),
        }
        for e in plan.excluded
    ]
    return sorted(entries, key=lambda e: e["arch"])


def scale_replicas(archs: Sequence[Mapping[str, Any]]) -> int:
    """The scale subresource's status: ready replicas of the planned arch with the fewest, the
    same per-arch quantity `spec.autoscaling.minReplicas` (its spec path) sets, so HPA and
    `kubectl scale` compare like with like."""
    planned = [a.get("readyReplicas", 0) for a in archs if not a.get("excluded")]
    return min(planned, default=0)


def _summary(archs: Sequence[Mapping[str, Any]]) -> str:
    planned = [
        f"{a['arch']} {a.get('readyReplicas', 0)}/{a.get('desiredReplicas', 0)}"
        for a in archs
        if not a.get("excluded")
    ]
    return ", ".join(planned) or "none"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": clip(reason, SHORT_MAX),
        "message": clip(message, MESSAGE_MAX),
    }


def _rs_condition(rs: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (rs.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def _ready(rs: Mapping[str, Any] | None, problem: Problem | None) -> dict[str, Any]:
    if rs is None:
        if problem is not None:
            return _condition(READY, False, problem.reason, problem.message)
        return _condition(READY, False, "NotDeployed", "no RayService yet")
    cond = _rs_condition(rs, "Ready")
    if cond is not None:
        return _condition(
            READY,
            cond.get("status") == "True",
            cond.get("reason") or "RayService",
            f"RayService: {cond.get('message') or cond.get('reason', '')}".strip(),
        )
    service_status = (rs.get("status") or {}).get("serviceStatus", "")
    return _condition(
        READY,
        service_status == "Running",
        "RayService",
        f"RayService serviceStatus={service_status or 'unknown'}",
    )


def _progressing(rs: Mapping[str, Any] | None, problem: Problem | None) -> dict[str, Any]:
    if problem is not None:
        return _condition(PROGRESSING, False, "Blocked", f"cannot proceed: {problem.message}")
    if rs is None:
        return _condition(PROGRESSING, True, "Creating", "creating the RayService")
    upgrade = _rs_condition(rs, "UpgradeInProgress")
    if upgrade is not None and upgrade.get("status") == "True":
        return _condition(PROGRESSING, True, "Upgrading", "KubeRay is upgrading the Ray cluster")
    rs_status = rs.get("status") or {}
    if rs_status.get("observedGeneration", 0) < rs["metadata"].get("generation", 0):
        return _condition(
            PROGRESSING,
            True,
            "RayServiceUpdating",
            "KubeRay has not yet acted on the latest RayService spec",
        )
    if _ready(rs, None)["status"] != "True":
        return _condition(PROGRESSING, True, "WaitingForReady", "waiting for the Serve app")
    return _condition(PROGRESSING, False, "Stable", "deployed as planned")


def _degraded(rs: Mapping[str, Any] | None, problem: Problem | None) -> dict[str, Any]:
    if problem is not None:
        return _condition(DEGRADED, True, problem.reason, problem.message)
    app = _application(rs)
    if app.get("status") in UNHEALTHY_APP_STATES:
        return _condition(
            DEGRADED,
            True,
            "ServeUnhealthy",
            f"Serve application {app['status']}: {app.get('message', '')}".strip(),
        )
    return _condition(DEGRADED, False, "AsPlanned", "the spec is carried out")


def _application(rs: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if rs is None:
        return {}
    active = (rs.get("status") or {}).get("activeServiceStatus") or {}
    return (active.get("applicationStatuses") or {}).get(APP_NAME) or {}


def _serve_status(rs: Mapping[str, Any] | None) -> dict[str, Any]:
    app = _application(rs)
    if not app:
        return {}
    deployments = [
        {
            "name": n,
            "status": d.get("status", ""),
            "message": clip(str(d.get("message", "")), MESSAGE_MAX),
        }
        for n, d in sorted((app.get("serveDeploymentStatuses") or {}).items())
    ]
    return {
        "status": app.get("status", ""),
        "message": clip(str(app.get("message", "")), MESSAGE_MAX),
        "deployments": deployments,
    }


def _with_transitions(
    conditions: list[dict[str, Any]], old: Sequence[Mapping[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """Stamp generation and keep lastTransitionTime unless the status flipped."""
    previous = {c.get("type"): c for c in old}
    for cond in conditions:
        before = previous.get(cond["type"]) or {}
        same = before.get("status") == cond["status"]
        cond["lastTransitionTime"] = before.get("lastTransitionTime", now) if same else now
        cond["observedGeneration"] = generation
    return conditions
