"""The operator's own Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "gdn_operator"
CONDITIONS = ("Ready", "Progressing", "Degraded")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time to reconcile one Qwen35Deployment, by result (ok, requeue, error).",
            ["result"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors_total",
            "Reconciles that failed, by reason (API error status or problem reason).",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_workqueue_depth", "Keys waiting in the work queue.", registry=registry
        )
        self.writes = Counter(
            f"{PREFIX}_api_writes_total",
            "Writes to the API server by kind (rayservice, status, event).",
            ["kind"],
            registry=registry,
        )
        self.leader = Gauge(
            f"{PREFIX}_leader", "1 while this replica is the leader.", registry=registry
        )
        self.lease_errors = Counter(
            f"{PREFIX}_lease_errors_total",
            "Failed leader election Lease calls, by operation (get, create, update, release) and"
            " HTTP status (0: no answer).",
            ["operation", "status"],
            registry=registry,
        )
        self._objects: _ConditionCollector | None = None

    def watch_objects(self, objects: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Export Qwen35Deployments per condition and status, read from `objects` on scrape."""
        self.unwatch_objects()
        self._objects = _ConditionCollector(objects)
        self.registry.register(self._objects)

    def unwatch_objects(self) -> None:
        if self._objects is not None:
            self.registry.unregister(self._objects)
            self._objects = None


class _ConditionCollector(Collector):
    def __init__(self, objects: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.objects = objects

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_deployments",
            "Qwen35Deployments by condition type and status.",
            labels=["condition", "status"],
        )
        tally: Tally[tuple[str, str]] = Tally()
        for obj in self.objects():
            found = {
                c.get("type"): c.get("status", "Unknown")
                for c in (obj.get("status") or {}).get("conditions") or []
            }
            for kind in CONDITIONS:
                tally[(kind, str(found.get(kind, "Unknown")))] += 1
        for (kind, status), count in sorted(tally.items()):
            family.add_metric([kind, status], count)
        yield family
