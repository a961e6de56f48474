"""The operator resolves `auto` per arch with gdn_serve's own rules: shared code, not a copy."""

from __future__ import annotations

import pytest

from gdn_operator.api import crd
from gdn_operator.api.spec import parse_spec
from gdn_operator.plan import planner
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.planner import plan_deployment
from gdn_serve.backends import rules
from tests.operator.operator_testlib import H100, QWEN35_35B_A3B, RTX4090, gpu_node, model

NODES = [gpu_node("rtx", RTX4090), gpu_node("h", H100, gpus=8)]


def test_planner_calls_the_rules_module_itself() -> None:
    assert planner.resolve_backend is rules.resolve_backend


@pytest.mark.parametrize("state_dtype", rules.STATE_DTYPES)
def test_auto_resolves_per_arch_like_the_runtime(state_dtype: str) -> None:
    spec = {
        "model": model(QWEN35_35B_A3B, maxModelLen=32768, quantization="awq"),
        "gdnStateDtype": state_dtype,
    }
    plan = plan_deployment(parse_spec(spec), build_inventory(NODES))
    assert {a.arch for a in plan.archs} == {"sm89", "sm90"}
    for arch in plan.archs:
        expected = rules.resolve_backend(
            arch.arch, rules.AUTO, state_dtype=state_dtype, head_dims=(128, 128)
        )
        assert arch.backend == expected


def test_forced_backend_per_arch_override() -> None:
    spec = {
        "model": model(QWEN35_35B_A3B, maxModelLen=32768, quantization="awq"),
        "archs": [{"arch": "sm90", "gdnBackend": "flashinfer"}],
    }
    plan = plan_deployment(parse_spec(spec), build_inventory(NODES))
    by_arch = {a.arch: a.backend for a in plan.archs}
    assert by_arch["sm90"] == rules.resolve_backend("sm90", "flashinfer", head_dims=(128, 128))
    assert by_arch["sm89"].requested == rules.AUTO


def test_a_backend_the_head_dims_rule_out_leaves_the_arch_out() -> None:
    # FlashInfer's GDN decode handles K = V = 128 only; a model with 64-dim heads cannot use it.
    config = {
        **QWEN35_35B_A3B["text_config"],
        "linear_key_head_dim": 64,
        "linear_value_head_dim": 64,
    }
    spec = {"model": model(config, maxModelLen=32768), "gdnBackend": "flashinfer"}
    plan = plan_deployment(parse_spec(spec), build_inventory([gpu_node("h", H100, gpus=8)]))
    assert not plan.archs
    assert "head dims" in plan.excluded[0].reason


def test_crd_accepts_exactly_the_known_backends() -> None:
    props = crd.spec_schema()["properties"]
    assert props["gdnBackend"]["enum"] == [rules.AUTO, *rules.KNOWN_BACKENDS]
    assert props["gdnStateDtype"]["enum"] == list(rules.STATE_DTYPES)
