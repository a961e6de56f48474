"""The chart's monitoring objects with the real `helm`: rendered only when asked or when the
cluster serves monitoring.coreos.com/v1, labelled for the Prometheus and the Grafana sidecar that
pick them up, and carrying the generated boards and rules unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.charts.test_chart import CHART, by_kind, helm, pytestmark, render

__all__ = ["pytestmark"]
KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
WITH_CRDS = ("--api-versions", "monitoring.coreos.com/v1")
MONITORING = CHART / "monitoring"


def monitoring_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    boards = [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    return [d for k in KINDS for d in by_kind(docs, k)] + boards


def test_auto_renders_nothing_without_the_prometheus_operator() -> None:
    assert monitoring_objects(render()) == []


def test_off_renders_nothing_even_with_the_crds() -> None:
    assert monitoring_objects(render(*WITH_CRDS, "--set", "monitoring.enabled=false")) == []


@pytest.mark.parametrize(
    "how", [WITH_CRDS, ("--set", "monitoring.enabled=true")], ids=["auto", "on"]
)
def test_renders_every_object_with_the_release_label(how: tuple[str, str]) -> None:
    docs = render(*how)
    objects = monitoring_objects(docs)
    assert sorted(d["kind"] for d in objects) == sorted([*KINDS, *["ConfigMap"] * 3])
    for obj in objects:
        if obj["kind"] in KINDS:
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
            assert obj["metadata"]["namespace"] == "ops"


def test_release_label_is_configurable() -> None:
    docs = render(*WITH_CRDS, "--set", "monitoring.labels.release=prom")
    assert {d["metadata"]["labels"]["release"] for d in monitoring_objects(docs)[:3]} == {"prom"}


def test_pod_monitor_selects_the_ray_pods_the_operator_writes() -> None:
    """KubeRay labels every Ray Pod ray.io/is-ray-node=yes and names the metrics-export port
    `metrics`; the operator's manifest puts gdnserve.io/deployment (and on workers
    gdnserve.io/arch) on the Pod templates."""
    from gdn_operator.plan import manifest

    (monitor,) = by_kind(render(*WITH_CRDS), "PodMonitor")
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    assert spec["selector"]["matchExpressions"] == [
        {"key": manifest.LABEL_DEPLOYMENT, "operator": "Exists"}
    ]
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    sources = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]}
    assert sources["pod_arch"] == "__meta_kubernetes_pod_label_" + manifest.LABEL_ARCH.replace(
        ".", "_"
    ).replace("/", "_")
    assert sources["qwen35_deployment"].endswith("gdnserve_io_deployment")
    relabel = yaml.safe_load((MONITORING / "arch-relabel.yaml").read_text())
    assert endpoint["metricRelabelings"] == relabel


def test_pod_monitor_follows_the_watched_namespace() -> None:
    (monitor,) = by_kind(render(*WITH_CRDS, "--set", "watchNamespace=team-a"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_service_monitor_scrapes_the_operator_service() -> None:
    docs = render(*WITH_CRDS)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
        p["name"] for p in service["spec"]["ports"]
    ]


def test_prometheus_rule_is_the_generated_rule_file() -> None:
    (rule,) = by_kind(render(*WITH_CRDS), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((MONITORING / "rules.yaml").read_text())


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    docs = render(*WITH_CRDS, "--set", "monitoring.dashboards.namespace=grafana")
    boards = [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    assert {d["metadata"]["labels"]["grafana_dashboard"] for d in boards} == {"1"}
    assert {d["metadata"]["namespace"] for d in boards} == {"grafana"}
    shipped = {
        p.name: json.loads(p.read_text()) for p in (MONITORING / "dashboards").glob("*.json")
    }
    rendered = {k: json.loads(v) for d in boards for k, v in d["data"].items()}
    assert rendered == shipped


@pytest.mark.parametrize(
    "bad", ["monitoring.enabled=maybe", "monitoring.interval=often", "monitoring.typo=1"]
)
def test_values_schema_rejects_bad_monitoring_values(bad: str) -> None:
    result = helm("template", "demo", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0
    assert "values don't meet" in result.stderr.lower() or "schema" in result.stderr.lower()
