"""What the CR's status says, computed in one place from the plan and what the cluster reports.

Pure. Conditions follow the usual meaning: `Ready` mirrors the RayService (KubeRay's own `Ready`
condition, or its service status on KubeRay versions without conditions); `Progressing` is True
while something is being created, upgraded or waited for; `Degraded` is True when the operator
cannot carry out the spec (invalid spec, no arch fits, apply failed) or Serve reports the
application unhealthy. The caller writes the status only when `compute_status` returns something
different from what is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gdn_operator.manifest import APP_NAME, serve_endpoint, worker_selector
from gdn_operator.planner import Plan

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
UNHEALTHY_APP_STATES = ("DEPLOY_FAILED", "UNHEALTHY")


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
        "replicas": sum(a.get("readyReplicas", 0) for a in archs if not a.get("excluded")),
        "selector": worker_selector(name),
        "archs": archs,
    }
    serve = _serve_status(rs)
    if serve:
        status["serve"] = serve
    return status


def _arch_entries(plan: Plan, ready_pods: Mapping[str, int]) -> list[dict[str, Any]]:
    entries = [
        {
            "arch": a.arch,
            "product": a.product,
            "nodes": a.nodes,
            "gpusPerNode": a.gpus_per_node,
            "gpuMemoryMiB": a.gpu_memory_mib,
            "tensorParallelSize": a.tensor_parallel_size,
            "expertParallel": a.expert_parallel,
            "gdnBackend": a.backend.active,
            "gdnBackendReason": a.backend.reason,
            "desiredReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "readyReplicas": ready_pods.get(a.arch, 0),
            "excluded": False,
        }
        for a in plan.archs
    ]
    entries += [
        {
            "arch": e.arch,
            "product": e.product,
            "nodes": e.nodes,
            "gpusPerNode": e.gpus_per_node,
            "gpuMemoryMiB": e.gpu_memory_mib,
            "excluded": True,
            "reason": e.reason,
        }
        for e in plan.excluded
    ]
    return sorted(entries, key=lambda e: e["arch"])


def _summary(archs: Sequence[Mapping[str, Any]]) -> str:
    planned = [
        f"{a['arch']} {a.get('readyReplicas', 0)}/{a.get('desiredReplicas', 0)}"
        for a in archs
        if not a.get("excluded")
    ]
    return ", ".join(planned) or "none"


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }


def _rs_condition(rs: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (rs.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def _ready(rs: Mapping[str, Any] | None, problem: Problem | None) -> dict[str, Any]:
    if rs is None:
        detail = f": {problem.message}" if problem else ""
        return _condition(
            READY, False, problem.reason if problem else "NotDeployed", f"no RayService yet{detail}"
        )
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
        {"name": n, "status": d.get("status", ""), "message": d.get("message", "")}
        for n, d in sorted((app.get("serveDeploymentStatuses") or {}).items())
    ]
    return {
        "status": app.get("status", ""),
        "message": app.get("message", ""),
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
