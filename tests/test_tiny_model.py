"""The embedded default model: what vLLM and transformers accept, deterministic, peaked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from gdn_serve.tiny_model import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    SHAPES,
    TinyModelSpec,
    build_config,
    ensure_tiny_model,
    is_current,
    write_tiny_model,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_config_is_the_qwen35_text_architecture_with_both_layer_kinds(tiny: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny)
    assert config.model_type == "qwen3_5_text"
    assert config.architectures == ["Qwen3_5ForCausalLM"]
    assert set(config.layer_types) == {"linear_attention", "full_attention"}
    assert config.dtype == torch.bfloat16


def test_vllm_accepts_the_config(tiny: Path) -> None:
    from vllm.config import ModelConfig

    model_config = ModelConfig(model=str(tiny), dtype="bfloat16", max_model_len=512)
    assert model_config.architectures == ["Qwen3_5ForCausalLM"]
    # vLLM resolves it to its own Qwen3.5 implementation, a hybrid (GDN + attention) model.
    model_cls, arch = model_config.registry.resolve_model_cls(
        model_config.architectures, model_config=model_config
    )
    assert arch == "Qwen3_5ForCausalLM"
    assert getattr(model_cls, "is_hybrid", False)


def test_transformers_loads_it_and_greedy_logits_are_peaked(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    top2 = logits.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]) / top2[:, 0].abs()
    # bf16 carries ~3 significant digits; a 30 % lead cannot flip between batching paths.
    assert bool((margin > 0.3).all()), margin


def test_tokenizer_round_trips_and_applies_the_chat_template(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    text = "Grüße, 世界! tabs\tand\nnewlines"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_same_seed_same_bytes_other_seed_other_weights(tiny: Path, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again")
    other = write_tiny_model(tmp_path / "other", TinyModelSpec(seed=1))
    assert _digest(again) == _digest(tiny)
    assert _digest(other)["model.safetensors"] != _digest(tiny)["model.safetensors"]


def test_ensure_rewrites_only_what_is_missing_or_stale(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    assert not is_current(folder)
    ensure_tiny_model(folder)
    written = (folder / "model.safetensors").stat().st_mtime_ns
    ensure_tiny_model(folder)  # identical: left alone
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    assert not is_current(folder, TinyModelSpec(seed=7))  # another spec is stale


@pytest.mark.parametrize("shape", ["qwen3.5-27b-layers", "qwen3.5-35b-a3b-layers"])
def test_real_shaped_specs_have_production_gdn_layers_and_vllm_takes_them(shape: str) -> None:
    """The real-shaped variants: Qwen3.5's GDN dims at TP = 1, one full-attention layer in four,
    dense or MoE; vLLM resolves the architecture. (Weights are not written here: 1-3.5 GB,
    written on the GPU machine that loads them.)"""
    from vllm.model_executor.models import ModelRegistry

    spec = SHAPES[shape]
    config = build_config(spec, eos_token_id=1, pad_token_id=0)
    assert (config.linear_num_value_heads, config.linear_num_key_heads) == (32, 16)
    assert (config.linear_key_head_dim, config.linear_value_head_dim) == (128, 128)
    assert config.layer_types.count("full_attention") * 4 == len(config.layer_types) == 8
    assert config.architectures == ["Qwen3_5MoeForCausalLM" if spec.moe else "Qwen3_5ForCausalLM"]
    assert spec.moe == (getattr(config, "num_experts", 0) == 8)
    assert config.architectures[0] in ModelRegistry.get_supported_archs()
