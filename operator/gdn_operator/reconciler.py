"""One reconcile of one Qwen35Deployment: read caches, decide (pure), write only what changed.

    spec + inventory --plan_deployment--> plan --build_rayservice--> desired RayService
    desired vs observed --(changed or drifted)--> server-side apply
    plan + observed --compute_status--> status --(changed)--> status subresource patch

What the operator cannot carry out (invalid spec, no arch fits, KubeRay missing, a RayService it
does not own) ends as Degraded with a Warning Event, never as an exception that would crash-loop.
Transient API errors propagate to the work queue, which retries with backoff.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils.retry import Backoff as RetryBackoff
from kubernetes.utils.retry import retry_on_conflict

from gdn_operator import crd
from gdn_operator.inventory import Inventory
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.events import NORMAL, WARNING, EventRecorder, utc_now
from gdn_operator.kube.resources import DEPLOYMENTS, RAYSERVICES
from gdn_operator.manifest import (
    ANNOTATION_PLAN_HASH,
    LABEL_ARCH,
    LABEL_DEPLOYMENT,
    LABEL_ROLE,
    ManifestOptions,
    build_rayservice,
)
from gdn_operator.metrics import OperatorMetrics
from gdn_operator.planner import Plan, plan_deployment
from gdn_operator.spec import SpecError, parse_spec
from gdn_operator.status import DEGRADED, Observed, Problem, compute_status

log = logging.getLogger(__name__)

# Problems that a change elsewhere (KubeRay installed, RBAC fixed, a foreign RayService removed)
# may resolve without any event reaching this operator: look again after this long.
RECHECK_S = 60.0
STATUS_CONFLICT_RETRY = RetryBackoff(steps=4, duration=0.05, factor=2.0, jitter=0.1)


@dataclass(frozen=True)
class Caches:
    """What the reconciler reads, all from informer caches (no API reads on the hot path)."""

    deployment: Callable[[str], Mapping[str, Any] | None]
    rayservice: Callable[[str], Mapping[str, Any] | None]
    pods: Callable[[], Iterable[Mapping[str, Any]]]
    inventory: Callable[[], Inventory]


@dataclass(frozen=True)
class Decision:
    plan: Plan | None
    problem: Problem | None
    desired: dict[str, Any] | None  # the RayService to apply; None: leave it as it is


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        caches: Caches,
        recorder: EventRecorder,
        metrics: OperatorMetrics,
        options: ManifestOptions,
        now: Callable[[], str] = utc_now,
    ) -> None:
        self.api = api
        self.caches = caches
        self.recorder = recorder
        self.metrics = metrics
        self.options = options
        self.now = now

    def reconcile(self, key: str) -> float | None:
        """Bring one deployment in line; returns seconds until it should be looked at again."""
        cr = self.caches.deployment(key)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            # Owner references hand the RayService to the garbage collector; nothing to do.
            return None
        rs = self.caches.rayservice(key)
        decision = self.decide(cr, rs)
        if decision.desired is not None and rs is None:
            rs = self._read_rayservice(cr)  # about to create: is the name really free?
            if rs is not None:
                decision = self.decide(cr, rs)
        problem = decision.problem
        if decision.desired is not None and needs_apply(decision.desired, rs):
            rs, problem = self._apply(cr, decision, rs)
        observed = Observed(rs, self._ready_pods(cr))
        self._write_status(
            cr, lambda obj: compute_status(obj, decision.plan, problem, observed, self.now())
        )
        if problem is None:
            return None
        self.metrics.reconcile_errors.labels(problem.reason).inc()
        return None if problem.reason in ("InvalidSpec", "NoSchedulableArch") else RECHECK_S

    def _read_rayservice(self, cr: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The cache only holds RayServices this operator labelled, so it cannot tell that
        someone else's has the name (server-side apply would take it over): ask the server."""
        meta = cr["metadata"]
        try:
            return self.api.get(RAYSERVICES, meta["name"], meta["namespace"])
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def decide(self, cr: Mapping[str, Any], rs: Mapping[str, Any] | None) -> Decision:
        try:
            spec = parse_spec(cr.get("spec") or {})
            plan = plan_deployment(spec, self.caches.inventory())
        except SpecError as exc:
            return Decision(None, Problem("InvalidSpec", str(exc)), None)
        nothing = plan.problem()
        if nothing:
            return Decision(plan, Problem("NoSchedulableArch", nothing), None)
        if rs is not None and not controlled_by(rs, cr):
            return Decision(
                plan,
                Problem(
                    "NotOwned",
                    f"RayService {rs['metadata']['name']}"
                    " exists and is not controlled by this deployment",
                ),
                None,
            )
        try:
            desired = build_rayservice(cr, spec, plan, self.options)
        except ValueError as exc:  # ManifestError, or the Serve app's own ConfigError
            return Decision(plan, Problem("InvalidManifest", str(exc)), None)
        return Decision(plan, None, desired)

    def _apply(
        self, cr: Mapping[str, Any], decision: Decision, rs: Mapping[str, Any] | None
    ) -> tuple[Mapping[str, Any] | None, Problem | None]:
        assert decision.desired is not None and decision.plan is not None
        try:
            applied = self.api.apply(RAYSERVICES, decision.desired)
        except ApiError as exc:
            if exc.transient or exc.conflict:
                raise
            return rs, _apply_problem(exc)
        self.metrics.writes.labels("rayservice").inc()
        self._record_plan(cr, decision.plan)
        return applied, None

    def _record_plan(self, cr: Mapping[str, Any], plan: Plan) -> None:
        summary = "; ".join(
            f"{a.arch}: TP={a.tensor_parallel_size}, replicas {a.min_replicas}..{a.max_replicas}"
            f", backend {a.backend.active}"
            for a in plan.archs
        )
        self._event(cr, NORMAL, "PlanApplied", summary)
        for arch in plan.archs:
            self._event(
                cr,
                NORMAL,
                "BackendSelected",
                f"{arch.arch}: {arch.backend.active} ({arch.backend.reason})",
            )
        for left_out in plan.excluded:
            self._event(cr, WARNING, "ArchExcluded", f"{left_out.arch}: {left_out.reason}")

    def _ready_pods(self, cr: Mapping[str, Any]) -> dict[str, int]:
        meta = cr["metadata"]
        ready: Counter[str] = Counter()
        for pod in self.caches.pods():
            labels = pod["metadata"].get("labels") or {}
            if (
                pod["metadata"].get("namespace") == meta["namespace"]
                and labels.get(LABEL_DEPLOYMENT) == meta["name"]
                and labels.get(LABEL_ROLE) == "worker"
                and pod_ready(pod)
            ):
                ready[labels.get(LABEL_ARCH, "")] += 1
        return dict(ready)

    def _write_status(
        self, cr: Mapping[str, Any], compute: Callable[[Mapping[str, Any]], dict[str, Any]]
    ) -> None:
        """Patch the status if it changed, optimistically locked; on conflict re-read, redo."""
        attempts = [cr]

        def attempt() -> None:
            obj = attempts[-1]
            if obj["metadata"].get("generation") != cr["metadata"].get("generation"):
                return  # a newer spec arrived; its own reconcile reports on it
            status = compute(obj)
            old = obj.get("status") or {}
            if status == old:
                return
            try:
                self._patch_status(obj, old, status)
            except ApiError as exc:
                if exc.not_found:
                    return  # deleted meanwhile: nobody left to report to
                if exc.conflict:
                    meta = cr["metadata"]
                    attempts.append(self.api.get(DEPLOYMENTS, meta["name"], meta["namespace"]))
                raise
            self._report_degraded(obj, old, status)

        retry_on_conflict(attempt, backoff=STATUS_CONFLICT_RETRY)

    def _patch_status(
        self, obj: Mapping[str, Any], old: Mapping[str, Any], status: Mapping[str, Any]
    ) -> None:
        meta = obj["metadata"]
        # A merge patch keeps keys it does not mention: send null for those that went away.
        body = {**{k: None for k in old if k not in status}, **status}
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": body}
        self.api.patch(DEPLOYMENTS, meta["name"], meta["namespace"], patch, subresource="status")
        self.metrics.writes.labels("status").inc()

    def _report_degraded(
        self, obj: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        """One Warning Event when Degraded turns True or its reason/message changes."""
        before, after = _condition(old, DEGRADED), _condition(new, DEGRADED)
        if after.get("status") != "True":
            return
        if (before.get("status"), before.get("reason"), before.get("message")) != (
            after.get("status"),
            after.get("reason"),
            after.get("message"),
        ):
            self._event(obj, WARNING, str(after.get("reason")), str(after.get("message")))

    def _event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        if self.recorder.record(
            {"apiVersion": crd.API_VERSION, "kind": crd.KIND, **obj}, kind, reason, message
        ):
            self.metrics.writes.labels("event").inc()


def needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Apply when the plan changed (hash) or someone edited what the operator owns (drift)."""
    if observed is None:
        return True
    annotations = observed["metadata"].get("annotations") or {}
    if (
        annotations.get(ANNOTATION_PLAN_HASH)
        != desired["metadata"]["annotations"][ANNOTATION_PLAN_HASH]
    ):
        return True
    return not contains(observed, desired)


def contains(actual: Any, desired: Any) -> bool:
    """Every field of `desired` is in `actual` with the same value (the server may add more)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and contains(actual[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    return any(
        ref.get("controller") and ref.get("uid") == uid
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def _apply_problem(exc: ApiError) -> Problem:
    if exc.not_found:
        return Problem(
            "RayServiceUnavailable",
            "the API server does not serve ray.io/v1 RayService: install KubeRay",
        )
    if exc.status == 403:
        return Problem("Forbidden", f"not allowed to apply the RayService: {exc.message}")
    return Problem("ApplyRejected", f"the API server rejected the RayService: {exc.message}")


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def pod_ready(pod: Mapping[str, Any] | None) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in ((pod or {}).get("status") or {}).get("conditions") or []
    )
