"""The CRD generator: one source of truth, a structural schema, and the files made from it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gdn_operator.api import crd, crd_docs
from gdn_operator.api.spec import SpecError, parse_spec
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import model

VERSION = crd.definition()["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from nodes(prop, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def test_names_and_scope() -> None:
    spec = crd.definition()["spec"]
    assert spec["group"] == "gdnserve.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Qwen35Deployment",
        "listKind": "Qwen35DeploymentList",
        "plural": "qwen35deployments",
        "singular": "qwen35deployment",
        "shortNames": ["q35"],
    }
    assert crd.definition()["metadata"]["name"] == "qwen35deployments.gdnserve.io"
    assert VERSION["name"] == "v1alpha1" and VERSION["served"] and VERSION["storage"]


def test_subresources_and_columns() -> None:
    assert VERSION["subresources"]["status"] == {}
    scale = VERSION["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.autoscaling.minReplicas"
    assert scale["statusReplicasPath"] == ".status.replicas"
    assert scale["labelSelectorPath"] == ".status.selector"
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert {"Ready", "Archs", "Endpoint", "Age"} <= set(columns)
    assert columns["Age"]["type"] == "date"


def test_schema_is_structural() -> None:
    for path, node in nodes(SCHEMA):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path


def test_scale_path_always_has_a_value() -> None:
    # GET /scale fails when specReplicasPath is unset, so autoscaling and its minReplicas default.
    defaulted = crd.default_spec({"model": model(totalParams=1)})
    assert defaulted["autoscaling"]["minReplicas"] == 1


def test_cel_rules_name_only_fields_of_their_object() -> None:
    rules = 0
    for path, node in nodes(SCHEMA):
        for rule in node.get("x-kubernetes-validations", []):
            rules += 1
            for field in re.findall(r"self\.(\w+)", rule["rule"]):
                assert field in node["properties"], (path, field)
            assert rule["message"]
    assert rules >= 6


def test_lists_with_cel_have_bounds() -> None:
    # The API server refuses CEL whose cost it cannot bound: lists and strings need maxima.
    for path, node in nodes(SCHEMA):
        if node.get("type") == "array":
            assert "maxItems" in node, path


def test_defaults() -> None:
    spec = crd.default_spec({"model": {"source": "Qwen/Qwen3.5-9B", "totalParams": 9}})
    assert spec["gdnBackend"] == "auto" and spec["gdnStateDtype"] == "float32"
    assert spec["upgradeStrategy"] == "NewCluster"
    assert spec["autoscaling"] == {"targetOngoingRequests": 16, "minReplicas": 1}
    assert spec["resources"] == {
        "head": {"cpu": "2", "memory": "8Gi"},
        "workerPerGPU": {"cpu": "4", "memory": "32Gi"},
        "cpuWorker": {"cpu": "4", "memory": "16Gi"},
    }
    assert spec["model"]["quantization"] == "none" and spec["model"]["dtype"] == "bfloat16"


def test_spec_parsing() -> None:
    parsed = parse_spec({"model": model(totalParams=9, source="pvc://m/qwen/9b-awq")})
    assert parsed.model.served_name == "9b-awq"
    with pytest.raises(SpecError, match="tensor_parallel_size"):
        parse_spec({"model": model(totalParams=9), "engineArgs": {"tensor_parallel_size": 2}})
    with pytest.raises(SpecError, match=r"spec.archs\[sm89\].engineArgs sets quantization"):
        parse_spec(
            {
                "model": model(totalParams=9),
                "archs": [{"arch": "sm89", "engineArgs": {"quantization": "awq"}}],
            }
        )
    with pytest.raises(SpecError, match="lists sm89 twice"):
        parse_spec({"model": model(totalParams=9), "archs": [{"arch": "sm89"}, {"arch": "sm89"}]})
    with pytest.raises(SpecError, match=r"spec\.model is required"):
        parse_spec({})


def test_cpu_is_an_explicit_opt_in_and_comes_alone() -> None:
    base = {"model": model(totalParams=9)}
    assert not parse_spec(base).on_cpu
    assert parse_spec({**base, "archs": [{"arch": "sm89"}]}).on_cpu is False
    cpu = parse_spec({**base, "archs": [{"arch": "cpu"}]})
    assert cpu.on_cpu and cpu.cpu_worker_resources.memory == "16Gi"
    assert re.match(crd.ARCH_PATTERN, "cpu") and not re.match(crd.ARCH_PATTERN, "cpu0")
    # The CRD's CEL rules, repeated by the parser for objects the API server did not check.
    with pytest.raises(SpecError, match="lists cpu with other archs"):
        parse_spec({**base, "archs": [{"arch": "cpu"}, {"arch": "sm90"}]})
    for setting in ({"exclude": True}, {"tensorParallelSize": 2}):
        with pytest.raises(SpecError, match=r"archs\[cpu\] takes neither exclude"):
            parse_spec({**base, "archs": [{"arch": "cpu", **setting}]})
    with pytest.raises(SpecError, match="kv_cache_memory_bytes must be an integer"):
        parse_spec({**base, "engineArgs": {"kv_cache_memory_bytes": "1Gi"}})
    rules = [r["rule"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("a.arch == 'cpu'" in r for r in rules)


def test_python_m_prints_the_crd() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gdn_operator.api.crd"], check=True, capture_output=True, text=True
    ).stdout
    assert out == crd.render_yaml()
    assert yaml.safe_load(out) == crd.definition()


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/operator_generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
    assert (ROOT / "docs/crd-reference.md").read_text() == crd_docs.render()


def test_reference_documents_every_field() -> None:
    text = crd_docs.render()
    for path, _ in nodes(SCHEMA["properties"]["spec"], "spec"):
        if path != "spec":
            assert f"`{path.rsplit('.', 1)[-1].rstrip('[]')}`" in text, path


def test_the_name_rule_kuberay_needs_is_on_the_cr() -> None:
    (name_rule,) = SCHEMA["x-kubernetes-validations"]
    assert "self.metadata.name.size() <= 47" in name_rule["rule"]
    pattern = re.search(r"matches\('([^']*)'\)", name_rule["rule"])
    assert pattern is not None
    for name, ok in [("qwen35-a3b", True), ("qwen3.5-a3b", False), ("3q", False), ("q-", False)]:
        assert bool(re.match(pattern.group(1), name)) is ok, name


def test_only_upgrade_strategies_the_operator_can_carry_out() -> None:
    strategy = SCHEMA["properties"]["spec"]["properties"]["upgradeStrategy"]
    assert strategy["enum"] == ["NewCluster", "None"]  # no incremental: no gateway class written
    for sample in (ROOT / "charts/qwen35-stack/examples").glob("*.yaml"):
        spec = yaml.safe_load(sample.read_text())["spec"]
        assert spec.get("upgradeStrategy", "NewCluster") in strategy["enum"], sample.name


def test_sizing_fields_are_typed_with_bounds() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    engine = spec["engineArgs"]["properties"]["gpu_memory_utilization"]
    assert (engine["minimum"], engine["exclusiveMinimum"], engine["maximum"]) == (0, True, 1)
    config = spec["model"]["properties"]["config"]
    for level in (config, config["properties"]["text_config"]):
        fields = level["properties"]
        assert fields["num_key_value_heads"]["minimum"] == 1
        assert fields["max_position_embeddings"]["minimum"] == 1
        assert fields["layer_types"]["items"]["enum"] == ["full_attention", "linear_attention"]
        assert level["x-kubernetes-preserve-unknown-fields"]  # the rest of config.json is kept
    quantity = spec["model"]["properties"]["weightBytes"]
    assert quantity["minimum"] == 1 and not re.match(quantity["pattern"], "-20Gi")
