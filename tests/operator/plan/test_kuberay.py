"""KubeRay's rules for a RayService: each rule broken on purpose in a RayService the operator
built, the rule's words in the answer; the operator's own RayServices break none."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml

from gdn_operator.api import crd
from gdn_operator.api.spec import parse_spec
from gdn_operator.plan import kuberay
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.manifest import ManifestError, build_rayservice
from gdn_operator.plan.planner import plan_deployment
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import deployment
from tests.operator.plan.test_manifest import MIXED, OPTIONS, SPEC
from tests.operator.plan.test_planner import SAMPLE_CLUSTERS

Edit = Callable[[dict[str, Any]], None]


def built(name: str = "qwen") -> dict[str, Any]:
    spec = {**SPEC, "nodeSelector": {}}
    parsed = parse_spec(spec)
    plan = plan_deployment(parsed, build_inventory(MIXED))
    return build_rayservice(deployment(spec, name=name), parsed, plan, OPTIONS)


def cluster(rs: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = rs["spec"]["rayClusterConfig"]
    return config


def worker(rs: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = cluster(rs)["workerGroupSpecs"][0]
    return first


BREAKS: dict[str, tuple[Edit, str]] = {
    "name longer than 47": (
        lambda rs: rs["metadata"].update(name="q" * 48),
        "has 48 characters; KubeRay allows at most 47",
    ),
    "name not a DNS-1035 label": (
        lambda rs: rs["metadata"].update(name="qwen3.5-a3b"),
        "must be a DNS-1035 label",
    ),
    "label value too long": (
        lambda rs: rs["metadata"]["labels"].update(x="v" * 64),
        "is not a valid label value",
    ),
    "incremental upgrade without its options": (
        lambda rs: rs["spec"].update(upgradeStrategy={"type": "NewClusterWithIncrementalUpgrade"}),
        "NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions",
    ),
    "incremental upgrade without a gateway class": (
        lambda rs: rs["spec"].update(
            upgradeStrategy={
                "type": "NewClusterWithIncrementalUpgrade",
                "clusterUpgradeOptions": {"stepSizePercent": 10, "intervalSeconds": 30},
            }
        ),
        "needs clusterUpgradeOptions.gatewayClassName",
    ),
    "unknown upgrade type": (
        lambda rs: rs["spec"].update(upgradeStrategy={"type": "Rolling"}),
        "upgradeStrategy.type 'Rolling' is not one of",
    ),
    "token auth on an old Ray": (
        lambda rs: cluster(rs).update(rayVersion="2.50.0"),
        "needs Ray 2.52.0 or later",
    ),
    "head Service name set": (
        lambda rs: cluster(rs)["headGroupSpec"].update(headService={"metadata": {"name": "x"}}),
        "headService.metadata.name must not be set",
    ),
    "worker without containers": (
        lambda rs: worker(rs)["template"]["spec"].update(containers=[]),
        "the Pod template has no container",
    ),
    "duplicate worker groups": (
        lambda rs: cluster(rs)["workerGroupSpecs"].append(copy.deepcopy(worker(rs))),
        "is listed twice",
    ),
    "min above max": (
        lambda rs: worker(rs).update(minReplicas=5, maxReplicas=2),
        "minReplicas 5 is greater than maxReplicas 2",
    ),
    "rayStartParams labels": (
        lambda rs: worker(rs)["rayStartParams"].update(labels="a=b"),
        "rayStartParams['labels'] is not supported",
    ),
    "resources in both places": (
        lambda rs: worker(rs).update(resources={"CPU": "1"}),
        "resources are set both in rayStartParams",
    ),
    "escaped resources KubeRay cannot parse": (
        lambda rs: worker(rs)["rayStartParams"].update(resources='"{\\"gdn-arch-sm89\\": 1}"'),
        "is not a JSON object of numbers once KubeRay strips its quotes",
    ),
}


@pytest.mark.parametrize("case", BREAKS.values(), ids=BREAKS.keys())
def test_each_rule_names_what_is_wrong(case: tuple[Edit, str]) -> None:
    edit, words = case
    rs = built()
    assert kuberay.violations(rs) == []  # negative control: as built, nothing is wrong
    edit(rs)
    found = kuberay.violations(rs)
    assert any(words in f for f in found), found


def test_a_cr_name_kuberay_refuses_is_a_manifest_error_not_an_apply() -> None:
    # The CRD's CEL refuses such names on create; a CR stored before the rule still gets a
    # Degraded with the rule's words (the reconciler reports a ManifestError as InvalidManifest).
    with pytest.raises(ManifestError, match=r"KubeRay would reject.*DNS-1035 label"):
        built(name="qwen3.5-a3b")
    with pytest.raises(ManifestError, match="at most 47"):
        built(name="q" * 48)
    assert built(name="q" * 47)["metadata"]["name"] == "q" * 47


@pytest.mark.parametrize("name", SAMPLE_CLUSTERS)
def test_the_chart_samples_pass_the_crd_schema_and_kuberays_rules(name: str) -> None:
    sample = yaml.safe_load((ROOT / f"charts/qwen35-stack/examples/{name}.yaml").read_text())
    assert not list(jsonschema.Draft4Validator(crd.spec_schema()).iter_errors(sample["spec"]))
    nodes, _ = SAMPLE_CLUSTERS[name]
    parsed = parse_spec(sample["spec"])
    cr = deployment(sample["spec"], name=sample["metadata"]["name"])
    rs = build_rayservice(cr, parsed, plan_deployment(parsed, build_inventory(nodes)), OPTIONS)
    assert kuberay.violations(rs) == []


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("'{\"gdn-arch-sm89\":1}'", {"gdn-arch-sm89": 1.0}),
        ('{"a": 2}', {"a": 2.0}),
        ('"{\\"a\\": 1}"', None),  # the escaped form: KubeRay's JSON parse fails on it
        ("'[1]'", None),
        ('\'{"a": "x"}\'', None),
    ],
)
def test_resources_as_kuberay_reads_them(value: str, parsed: dict[str, float] | None) -> None:
    assert kuberay.parse_resources(value) == parsed
