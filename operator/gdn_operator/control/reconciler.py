"""One reconcile of one Qwen35Deployment: read caches, decide (pure), write only what changed.

    spec + inventory --plan_deployment--> plan --build_rayservice--> desired RayService
    desired vs observed --(changed or drifted)--> server-side apply
    plan + observed --compute_status--> status --(changed)--> server-side apply of the status

What the operator cannot carry out (invalid spec, no arch fits, KubeRay missing or rejecting the
RayService, a RayService it does not own, RBAC, a terminating namespace) ends as Degraded with a
Warning Event, never as an exception that would crash-loop; so does an error nobody foresaw while
planning or applying (reason InternalError, retried with the key's exponential backoff). Transient
API errors propagate to the work queue, which retries with backoff.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gdn_operator.api import crd
from gdn_operator.api.spec import SpecError, parse_spec
from gdn_operator.control.metrics import OperatorMetrics
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.events import NORMAL, WARNING, EventRecorder, utc_now
from gdn_operator.kube.resources import DEPLOYMENTS, RAYSERVICES
from gdn_operator.plan.inventory import Inventory
from gdn_operator.plan.manifest import ANNOTATION_PLAN_HASH, ManifestOptions, build_rayservice
from gdn_operator.plan.planner import Plan, plan_deployment
from gdn_operator.plan.status import DEGRADED, Observed, Problem, compute_status

log = logging.getLogger(__name__)

# Problems that a change elsewhere (KubeRay installed, RBAC fixed, a foreign RayService removed)
# may resolve without any event reaching this operator: look again after this long.
RECHECK_S = 60.0
# Problems that only a new spec, a node change or KubeRay's own status change can resolve, and
# each of those is an event that queues the deployment again: no timed retry.
SETTLED = ("InvalidSpec", "NoSchedulableArch", "InvalidManifest", "NamespaceTerminating")
INTERNAL = "InternalError"
# KubeRay names the Serve Service of a RayService `<name>-serve-svc`; its EndpointSlices carry the
# Service's labels and this one of the EndpointSlice controller.
SERVE_SERVICE_SUFFIX = "-serve-svc"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"


@dataclass(frozen=True)
class Caches:
    """What the reconciler reads, all from informer caches (no API reads on the hot path)."""

    deployment: Callable[[str], Mapping[str, Any] | None]
    rayservice: Callable[[str], Mapping[str, Any] | None]
    endpoint_slices: Callable[[], Iterable[Mapping[str, Any]]]
    node_arch: Callable[[str], str | None]  # node name -> its GPU arch, None if not a GPU node
    inventory: Callable[[], Inventory]


@dataclass(frozen=True)
class Decision:
    plan: Plan | None
    problem: Problem | None
    desired: dict[str, Any] | None  # the RayService to apply; None: leave it as it is


@dataclass(frozen=True)
class Again:
    """Look at the deployment again: after `after_s`, or (None) after the key's backoff."""

    after_s: float | None = None


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

    def reconcile(self, key: str) -> Again | None:
        """Bring one deployment in line; says when it should be looked at again, if at all."""
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
        # Only what this deployment controls is reported: never a foreign RayService's state.
        owned = rs if rs is not None and controlled_by(rs, cr) else None
        observed = Observed(owned, self._ready_replicas(cr))
        self._write_status(cr, compute_status(cr, decision.plan, problem, observed, self.now()))
        if problem is None:
            return None
        self.metrics.reconcile_errors.labels(problem.reason).inc()
        if problem.reason in SETTLED:
            return None
        return Again(None) if problem.reason == INTERNAL else Again(RECHECK_S)

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
            return self._decide(cr, rs)
        except Exception as exc:  # a spec the checks missed, or a bug: report it, never raise
            log.exception("planning %s failed", cr["metadata"].get("name"))
            return Decision(None, _internal("could not plan this deployment", exc), None)

    def _decide(self, cr: Mapping[str, Any], rs: Mapping[str, Any] | None) -> Decision:
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
                    f"RayService {rs['metadata']['name']} exists and is not controlled by this"
                    " deployment: it is left alone, and nothing is deployed",
                ),
                None,
            )
        try:
            desired = build_rayservice(cr, spec, plan, self.options, current=rs)
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
            return rs, _apply_problem(exc, cr["metadata"]["namespace"])
        except Exception as exc:  # e.g. a body the client cannot serialize: a bug, reported
            log.exception("applying the RayService of %s failed", cr["metadata"].get("name"))
            return rs, _internal("could not apply the RayService", exc)
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

    def _ready_replicas(self, cr: Mapping[str, Any]) -> dict[str, int]:
        """Ready serve endpoints per arch, from the EndpointSlices of the serve Service.

        KubeRay puts a worker in the serve Service once its Serve proxy is healthy, and each
        worker Pod holds one replica; the arch is that of the node the endpoint runs on. (No Pod
        reads: the operator has no access to Pod specs and their environment.)
        """
        meta = cr["metadata"]
        service = f"{meta['name']}{SERVE_SERVICE_SUFFIX}"
        seen: dict[str, str] = {}  # endpoint (Pod) -> arch; dual-stack lists a Pod per family
        for slice_ in self.caches.endpoint_slices():
            slice_meta = slice_.get("metadata") or {}
            labels = slice_meta.get("labels") or {}
            if slice_meta.get("namespace") != meta["namespace"]:
                continue
            if labels.get(LABEL_SERVICE_NAME) != service:
                continue
            for endpoint in slice_.get("endpoints") or []:
                # A missing `ready` means unknown, which the API says to read as ready.
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                arch = self.caches.node_arch(endpoint.get("nodeName") or "")
                ident = (endpoint.get("targetRef") or {}).get("name") or ",".join(
                    endpoint.get("addresses") or []
                )
                if arch is not None and ident:
                    seen[ident] = arch
        return dict(Counter(seen.values()))

    def _write_status(self, cr: Mapping[str, Any], status: dict[str, Any]) -> None:
        """Server-side apply of the status when it changed: one request, no resourceVersion,
        so no conflict and no read-modify-write loop, however many deployments start at once."""
        old = cr.get("status") or {}
        if status == old:
            return
        meta = cr["metadata"]
        body = {
            "apiVersion": crd.API_VERSION,
            "kind": crd.KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": status,
        }
        try:
            self.api.apply_status(DEPLOYMENTS, body)
        except ApiError as exc:
            if exc.not_found:
                return  # deleted meanwhile: nobody left to report to
            raise
        self.metrics.writes.labels("status").inc()
        self._report_degraded(cr, old, status)

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


def _apply_problem(exc: ApiError, namespace: str) -> Problem:
    if exc.not_found:
        return Problem(
            "RayServiceUnavailable",
            "the API server does not serve ray.io/v1 RayService: install KubeRay",
        )
    if exc.namespace_terminating:
        return Problem(
            "NamespaceTerminating",
            f"namespace {namespace} is being deleted: no RayService is created there",
        )
    if exc.forbidden:
        return Problem(
            "Forbidden",
            "the operator's RBAC does not allow applying the RayService (check the chart's"
            f" ClusterRole/Role): {exc.message}",
        )
    return Problem("ApplyRejected", f"the API server rejected the RayService: {exc.message}")


def _internal(what: str, exc: Exception) -> Problem:
    return Problem(
        INTERNAL,
        f"{what}: {type(exc).__name__}: {exc} (an operator bug or a spec its checks missed; the"
        " operator log has the traceback; retried with backoff)",
    )


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})
