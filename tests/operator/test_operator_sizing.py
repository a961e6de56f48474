"""Model memory needs from a config.json or from the spec."""

from __future__ import annotations

from typing import Any

import pytest
from gdn_operator.sizing import ModelNeeds, model_needs
from gdn_operator.spec import SpecError, parse_spec
from operator_testlib import QWEN35_27B, QWEN35_35B_A3B, TINY, model

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
