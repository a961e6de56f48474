"""Alert rules (one PrometheusRule; runbooks in docs/operations.md), named and annotated the way
kubernetes-mixin does: CamelCase names, a `severity`, `summary`, `description`, `runbook_url`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from observability import boards as b
from observability import promql as q

RUNBOOKS = "https://github.com/qwen35-stack/qwen35-stack/blob/main/docs/operations.md"
DEPLOYMENT = "namespace, qwen35_deployment"
PER_ARCH = f"{DEPLOYMENT}, arch"
WINDOW = "5m"
# A kernel is slow when its median over the last 10 minutes is this many times its median over
# the 6 hours before (same backend, arch and batch bucket).
DECODE_SLOWDOWN = 2.0
ERROR_RATIO = 0.05
QUEUE_WAITING = 10
# Alertmanager templates of the annotations
ON = "{{ $labels.arch }} of {{ $labels.qwen35_deployment }}"
WHERE = "{{ $labels.namespace }}/{{ $labels.qwen35_deployment }}"
KERNEL = "{{ $labels.backend }}, {{ $labels.arch }}, B={{ $labels.batch }}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    @property
    def anchor(self) -> str:
        return self.name.lower()

    def rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_:
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{RUNBOOKS}#{self.anchor}",
        }
        return rule


def _p95(histogram: str) -> str:
    return q.quantile(0.95, histogram, by=PER_ARCH, window=WINDOW)


def _decode_median(window: str, offset: str = "") -> str:
    by = f"{PER_ARCH}, backend, batch"
    return q.quantile(0.5, b.DECODE, by=by, window=window, offset=offset)


SERVING = [
    Alert(
        "Qwen35DeploymentNoReadyReplicas",
        f"sum by ({DEPLOYMENT}) ({b.REPLICA_HEALTHY}{{{q.LLM_DEPLOYMENTS}}}) < 1",
        "5m", "critical",
        f"Qwen35Deployment {WHERE} has no healthy replica.",
        "No LLM replica of any arch passes Ray Serve's health check: every request fails.",
    ),
    Alert(
        "Qwen35ArchNoReadyReplicas",
        f"sum by ({PER_ARCH}) ({b.REPLICA_HEALTHY}{{{q.LLM_DEPLOYMENTS}}}) < 1",
        "10m", "warning",
        "Arch {{ $labels.arch }} of " + WHERE + " has no healthy replica.",
        "The ingress sends this arch's share of requests to the other archs; capacity is reduced.",
    ),
    Alert(
        "Qwen35TimeToFirstTokenHigh",
        f"{_p95(b.TTFT)} > {b.TTFT_SLO_S:g}",
        "10m", "warning",
        f"TTFT p95 above {b.TTFT_SLO_S:g} s on {ON}.",
        "Time to first token p95 is {{ $value | humanizeDuration }} over 5 minutes.",
    ),
    Alert(
        "Qwen35InterTokenLatencyHigh",
        f"{_p95(b.ITL)} > {b.ITL_SLO_S:g}",
        "10m", "warning",
        f"Inter-token latency p95 above {b.ITL_SLO_S:g} s on {ON}.",
        "Inter-token latency p95 is {{ $value | humanizeDuration }} over 5 minutes.",
    ),
    Alert(
        "Qwen35KVCacheSaturated",
        f"max by ({PER_ARCH}) ({b.KV_CACHE}) > {b.KV_CACHE_FULL:g}",
        "15m", "warning",
        "KV cache of {{ $labels.arch }} engines of {{ $labels.qwen35_deployment }} nearly full.",
        "KV-cache usage is {{ $value | humanizePercentage }}: requests wait or are preempted.",
    ),
    Alert(
        "Qwen35RequestQueueGrowing",
        f"sum by ({PER_ARCH}) ({b.WAITING}) > {QUEUE_WAITING} "
        f"and sum by ({PER_ARCH}) (deriv({b.WAITING}[10m])) > 0",
        "10m", "warning",
        "Requests queue up on {{ $labels.arch }} of {{ $labels.qwen35_deployment }}.",
        "{{ $value }} requests wait in the engines' queues and the queue keeps growing.",
    ),
    Alert(
        "Qwen35HighErrorRatio",
        q.ratio(b.SERVE_ERRORS, b.SERVE_REQUESTS, q.LLM_DEPLOYMENTS, by=PER_ARCH, window=WINDOW)
        + f" > {ERROR_RATIO:g}",
        "10m", "critical",
        "More than 5% of requests to {{ $labels.arch }} of {{ $labels.qwen35_deployment }} fail.",
        "Error ratio {{ $value | humanizePercentage }} over 5 minutes.",
    ),
]  # fmt: skip

KERNELS = [
    Alert(
        "GDNBackendFallback",
        f"max by ({PER_ARCH}, chosen, backend, reason) ({b.FALLBACKS}) > 0",
        "5m", "warning",
        "GDN decode on {{ $labels.arch }} fell back from {{ $labels.chosen }} to "
        "{{ $labels.backend }}.",
        "Engines run another GDN decode backend than the one chosen: {{ $labels.reason }}.",
    ),
    Alert(
        "GDNDecodeLatencyAboveBaseline",
        f"{_decode_median('10m')} > {DECODE_SLOWDOWN:g} * {_decode_median('6h', offset='10m')}",
        "15m", "warning",
        f"GDN decode ({KERNEL}) is slower than its baseline.",
        "The decode kernel's median over 10 minutes is more than twice its median of the 6 hours "
        "before.",
    ),
]  # fmt: skip

OPERATOR = [
    Alert(
        "Qwen35OperatorReconcileErrors",
        f"sum by (namespace, reason) (rate({b.RECONCILE_ERRORS}[10m])) > 0",
        "15m", "warning",
        "gdn-operator reconciles fail ({{ $labels.reason }}).",
        "Reconciles have failed for 15 minutes; Qwen35Deployments are not brought to their spec.",
    ),
    Alert(
        "Qwen35DeploymentDegraded",
        f'max by (namespace) ({b.DEPLOYMENTS}{{condition="Degraded", status="True"}}) > 0',
        "10m", "warning",
        "{{ $value }} Qwen35Deployment(s) Degraded.",
        "The operator cannot realise these deployments; their Degraded condition says why.",
    ),
    Alert(
        "Qwen35OperatorNoLeader",
        f"max by (namespace) ({b.LEADER}) < 1 or absent({b.LEADER})",
        "5m", "critical",
        "No gdn-operator replica leads.",
        "Without a leader nothing is reconciled: new and changed Qwen35Deployments wait.",
    ),
]  # fmt: skip

GROUPS = {"qwen35-serving": SERVING, "qwen35-gdn-kernels": KERNELS, "qwen35-operator": OPERATOR}
ALERTS = [alert for group in GROUPS.values() for alert in group]


def rule_groups() -> dict[str, Any]:
    """The rule file (also a PrometheusRule's spec)."""
    return {"groups": [{"name": name, "rules": [a.rule() for a in alerts]}
                       for name, alerts in GROUPS.items()]}  # fmt: skip
