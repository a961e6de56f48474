"""Model memory needs from a config.json or from the spec."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from gdn_operator.api import crd
from gdn_operator.api.spec import SpecError, parse_spec
from gdn_operator.plan.sizing import ModelNeeds, model_needs
from tests.operator.operator_testlib import QWEN35_27B, QWEN35_35B_A3B, TINY, model

GIB = 2**30


def needs(**model_fields: Any) -> ModelNeeds:
    return model_needs(parse_spec({"model": model(**model_fields)}))


def test_moe_sized_by_total_parameters() -> None:
    n = needs(config=QWEN35_35B_A3B)
    params = n.weight_bytes / 2  # bf16
    assert 34e9 < params < 36e9  # "35B": all 256 experts, not the 3B active ones
    assert n.moe
    assert n.divisible_heads == {
        "num_attention_heads": 16,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
    }
    assert n.linear_head_dims == (128, 128)


def test_dense_model_parameters() -> None:
    n = needs(config=QWEN35_27B)
    assert 26e9 < n.weight_bytes / 2 < 28e9
    assert not n.moe


def test_kv_cache_only_for_full_attention_layers() -> None:
    n = needs(config=QWEN35_35B_A3B)
    # 10 of 40 layers are full attention: K and V, 2 KV heads x 256 dims, bf16.
    assert n.kv_bytes_per_token == 10 * 2 * 2 * 256 * 2
    assert n.kv_heads == 2
    assert n.max_model_len == 262144  # max_position_embeddings when maxModelLen is unset


def test_gdn_state_per_sequence() -> None:
    n = needs(config=QWEN35_35B_A3B)
    recurrent = 30 * 32 * 128 * 128 * 4  # 30 GDN layers, fp32 state K x V per value head
    conv = 30 * 3 * (2 * 16 * 128 + 32 * 128) * 2
    assert n.state_bytes_per_seq == recurrent + conv
    bf16 = model_needs(
        parse_spec({"model": model(config=QWEN35_35B_A3B), "gdnStateDtype": "bfloat16"})
    )
    assert bf16.state_bytes_per_seq == recurrent // 2 + conv


def test_fp8_kv_cache_halves_kv() -> None:
    spec = {"model": model(config=QWEN35_35B_A3B), "engineArgs": {"kv_cache_dtype": "fp8"}}
    assert model_needs(parse_spec(spec)).kv_bytes_per_token == 10 * 2 * 2 * 256


@pytest.mark.parametrize("quant", ["awq", "gptq"])
def test_four_bit_checkpoints_keep_embeddings_unquantized(quant: str) -> None:
    bf16 = needs(config=QWEN35_35B_A3B).weight_bytes
    q = needs(config=QWEN35_35B_A3B, quantization=quant).weight_bytes
    embed = 248320 * 2048 * 2 * 2  # untied embedding + LM head, bf16
    assert 0.26 < q / bf16 < 0.32
    assert q > embed + (bf16 - embed) / 4  # 4 bits + scales > a quarter of bf16


def test_weight_bytes_override_the_computed_size() -> None:
    assert needs(config=QWEN35_35B_A3B, weightBytes="20Gi").weight_bytes == 20 * GIB


def test_without_config() -> None:
    n = needs(totalParams=9_000_000_000, activeParams=9_000_000_000)
    assert n.weight_bytes == 18_000_000_000 and not n.moe and n.kv_bytes_per_token is None
    assert needs(totalParams=30_000_000_000, activeParams=3_000_000_000).moe
    assert needs(totalParams=8_000_000_000, quantization="fp8").weight_bytes == 8_000_000_000


def test_tiny_model() -> None:
    n = needs(config=TINY)
    assert n.weight_bytes < 2 * 2**20
    assert n.kv_bytes_per_token == 1 * 2 * 2 * 64 * 2


def test_bad_config_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="hidden_size"):
        needs(config={"num_hidden_layers": 2})
    with pytest.raises(SpecError, match="num_key_value_heads"):
        needs(config={**TINY, "num_key_value_heads": "two"})


# Nonsense a user can write. Each is refused twice: by the CRD's schema on apply (checked here
# with a JSON Schema validator over the same schema, OpenAPI v3 being draft 4 in these keywords)
# and by the planner for input that did not pass the API server, with the field in the message.
NONSENSE: dict[str, tuple[dict[str, Any], str]] = {
    "string gpu_memory_utilization": (
        {"model": model(TINY), "engineArgs": {"gpu_memory_utilization": "0.9"}},
        "gpu_memory_utilization must be a number",
    ),
    "gpu_memory_utilization 5": (
        {"model": model(TINY), "engineArgs": {"gpu_memory_utilization": 5}},
        r"gpu_memory_utilization must be in \(0, 1\]",
    ),
    "num_key_value_heads 0": (
        {"model": model({**TINY, "num_key_value_heads": 0})},
        "num_key_value_heads must be in 1..",
    ),
    "non-numeric max_position_embeddings": (
        {"model": model({**TINY, "max_position_embeddings": "4k"})},
        "max_position_embeddings must be an integer",
    ),
    "max_position_embeddings 0": (
        {"model": model({**TINY, "max_position_embeddings": 0})},
        "max_position_embeddings must be in 1..",
    ),
    "non-numeric vision_config.hidden_size": (
        {"model": model({**TINY, "vision_config": {"hidden_size": "big", "depth": 2}})},
        r"vision_config\.hidden_size must be an integer",
    ),
    "non-string layer_types entries": (
        {"model": model({**TINY, "layer_types": [1, 2, 3, 4]})},
        "layer_types must list only",
    ),
    "negative weightBytes": (
        {"model": model(weightBytes="-20Gi")},
        "weightBytes must be a positive quantity",
    ),
    "worker memory 0": (
        {"model": model(totalParams=9), "resources": {"workerPerGPU": {"memory": "0"}}},
        "workerPerGPU.memory must be a positive quantity",
    ),
}


@pytest.mark.parametrize("case", NONSENSE.values(), ids=NONSENSE.keys())
def test_nonsense_is_refused_by_the_schema_and_by_the_planner(
    case: tuple[dict[str, Any], str],
) -> None:
    spec, message = case
    validator = jsonschema.Draft4Validator(crd.spec_schema())
    assert list(validator.iter_errors(spec)), "the CRD schema admits it"
    with pytest.raises(SpecError, match=message):
        model_needs(parse_spec(spec))
    # Negative control: the same spec without the nonsense passes both.
    assert not list(validator.iter_errors({"model": model(TINY)}))


def test_max_model_len_beyond_the_model_is_refused() -> None:
    with pytest.raises(SpecError, match="maxModelLen 8192 exceeds the model's"):
        needs(config=TINY, maxModelLen=8192)
    assert needs(config=TINY, maxModelLen=4096).max_model_len == 4096
