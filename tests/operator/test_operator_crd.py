"""The CRD generator: one source of truth, a structural schema, and the files made from it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from gdn_operator import crd, crd_docs
from gdn_operator.spec import SpecError, parse_spec
from k8s_binaries import ROOT
from operator_testlib import model

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
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
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


def test_python_m_prints_the_crd() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gdn_operator.crd"], check=True, capture_output=True, text=True
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
