"""How much GPU memory a model needs: weights, KV cache per token, GDN state per sequence.

Pure arithmetic over the model's `config.json` (Qwen3.5 layout: Gated DeltaNet `linear_attention`
layers mixed with gated `full_attention` layers, dense or MoE MLPs, optional vision tower), or
over the sizes the spec gives when there is no config. The numbers are what vLLM allocates, to the
precision that matters for choosing a tensor parallel size: a few percent, not bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gdn_operator.spec import DeploymentSpec, ModelSpec, SpecError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Bytes per weight of the quantized linear layers. AWQ/GPTQ: 4-bit weights plus an fp16 scale
# and a 4-bit zero point per group of 128. Embeddings, LM head, norms and routers stay unquantized.
QUANT_BYTES = {
    "awq": (4 + 16 / 128 + 4 / 128) / 8,
    "gptq": (4 + 16 / 128 + 4 / 128) / 8,
    "fp8": 1.0,
}


@dataclass(frozen=True)
class ModelNeeds:
    weight_bytes: int
    kv_bytes_per_token: int | None  # all full-attention layers and KV heads; None: unknown
    kv_heads: int | None
    state_bytes_per_seq: int  # GDN recurrent + conv state of one sequence, all layers
    max_model_len: int | None
    moe: bool
    # Head counts tensor parallelism must divide (name -> count), from the config.
    divisible_heads: Mapping[str, int]
    linear_head_dims: tuple[int, int] | None  # (K, V) of the GDN heads, for backend checks
    from_config: bool


def model_needs(spec: DeploymentSpec) -> ModelNeeds:
    model = spec.model
    text = _text_config(model.config) if model.config is not None else None
    if text is None:
        return _needs_from_spec(model)
    return _needs_from_config(spec, model.config or {}, text)


def _kv_bytes_per_token(spec: DeploymentSpec, text: Mapping[str, Any]) -> int:
    """Bytes per token of KV cache over all full-attention layers and KV heads."""
    kv_dtype = str(spec.engine_args.get("kv_cache_dtype", "auto"))
    per_elem = 1 if kv_dtype.startswith("fp8") else DTYPE_BYTES[spec.model.dtype]
    full_layers = sum(1 for t in _layer_types(text) if t == "full_attention")
    return 2 * _int(text, "num_key_value_heads") * _head_dim(text) * full_layers * per_elem


def _needs_from_spec(model: ModelSpec) -> ModelNeeds:
    if model.weight_bytes is not None:
        weights = model.weight_bytes
    elif model.total_params is not None:
        weights = int(model.total_params * _bytes_per_param(model))
    else:
        raise SpecError("model needs sizing: set model.config, model.totalParams or weightBytes")
    moe = (
        model.active_params is not None
        and model.total_params is not None
        and model.active_params < model.total_params
    )
    return ModelNeeds(weights, None, None, 0, model.max_model_len, moe, {}, None, False)


def _needs_from_config(
    spec: DeploymentSpec, config: Mapping[str, Any], text: Mapping[str, Any]
) -> ModelNeeds:
    model = spec.model
    embed, body = _param_split(config, text)
    if model.weight_bytes is not None:
        weights = model.weight_bytes
    else:
        weights = int(embed * DTYPE_BYTES[model.dtype] + body * _bytes_per_param(model))
    max_len = model.max_model_len or text.get("max_position_embeddings")
    return ModelNeeds(
        weight_bytes=weights,
        kv_bytes_per_token=_kv_bytes_per_token(spec, text),
        kv_heads=_int(text, "num_key_value_heads"),
        state_bytes_per_seq=_gdn_state_bytes(spec, text),
        max_model_len=int(max_len) if max_len else None,
        moe=_num_experts(text) > 0,
        divisible_heads=_divisible_heads(text),
        linear_head_dims=_linear_head_dims(text),
        from_config=True,
    )


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Multimodal Qwen3.5 checkpoints nest the language model's fields under text_config.
    text = config.get("text_config", config)
    if not isinstance(text, Mapping):
        raise SpecError("model.config.text_config must be an object")
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(text.get(name), int) or text[name] < 1:
            raise SpecError(f"model.config lacks a positive integer {name}")
    return text


def _int(text: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = text.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpecError(f"model.config.{name} must be a non-negative integer, got {value!r}")
    return value


def _head_dim(text: Mapping[str, Any]) -> int:
    return _int(text, "head_dim", _int(text, "hidden_size") // _int(text, "num_attention_heads"))


def _layer_types(text: Mapping[str, Any]) -> list[str]:
    layers = _int(text, "num_hidden_layers")
    types = text.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return [str(t) for t in types]
    interval = _int(text, "full_attention_interval", 4) or 1
    return [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)
    ]


def _num_experts(text: Mapping[str, Any]) -> int:
    return _int(text, "num_experts", 0)


def _has_linear_layers(text: Mapping[str, Any]) -> bool:
    return "linear_attention" in _layer_types(text)


def _linear_dims(text: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """(key heads, value heads, key dim, value dim, conv kernel) of the GDN layers."""
    return (
        _int(text, "linear_num_key_heads", 16),
        _int(text, "linear_num_value_heads", 32),
        _int(text, "linear_key_head_dim", 128),
        _int(text, "linear_value_head_dim", 128),
        _int(text, "linear_conv_kernel_dim", 4),
    )


def _linear_head_dims(text: Mapping[str, Any]) -> tuple[int, int] | None:
    if not _has_linear_layers(text):
        return None
    _, _, kd, vd, _ = _linear_dims(text)
    return kd, vd


def _divisible_heads(text: Mapping[str, Any]) -> dict[str, int]:
    heads = {"num_attention_heads": _int(text, "num_attention_heads")}
    if _has_linear_layers(text):
        kh, vh, _, _, _ = _linear_dims(text)
        heads.update(linear_num_key_heads=kh, linear_num_value_heads=vh)
    return heads


def _param_split(config: Mapping[str, Any], text: Mapping[str, Any]) -> tuple[int, int]:
    """(embedding + LM head params, everything else), the split quantization cares about."""
    hidden, vocab = _int(text, "hidden_size"), _int(text, "vocab_size")
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    embed = vocab * hidden * (1 if tied else 2)
    body = sum(_layer_params(text, kind) for kind in _layer_types(text))
    return embed, body + _vision_params(config.get("vision_config"))


def _layer_params(text: Mapping[str, Any], kind: str) -> int:
    mixer = _full_attention_params(text) if kind == "full_attention" else _gdn_params(text)
    return mixer + _mlp_params(text)


def _full_attention_params(text: Mapping[str, Any]) -> int:
    hidden, heads, kv = (
        _int(text, "hidden_size"),
        _int(text, "num_attention_heads"),
        _int(text, "num_key_value_heads"),
    )
    head_dim = _head_dim(text)
    # Qwen3.5's gated attention doubles the query projection (query + output gate).
    q_factor = 2 if text.get("attn_output_gate", True) else 1
    return hidden * head_dim * (heads * q_factor + 2 * kv) + heads * head_dim * hidden


def _gdn_params(text: Mapping[str, Any]) -> int:
    hidden = _int(text, "hidden_size")
    kh, vh, kd, vd, conv = _linear_dims(text)
    qkv = 2 * kh * kd + vh * vd
    # in_proj_qkv, in_proj_z, in_proj_b/a, conv1d over qkv, out_proj
    return hidden * qkv + hidden * vh * vd + 2 * hidden * vh + qkv * conv + vh * vd * hidden


def _mlp_params(text: Mapping[str, Any]) -> int:
    hidden, experts = _int(text, "hidden_size"), _num_experts(text)
    if experts == 0:
        return 3 * hidden * _int(text, "intermediate_size")
    routed = experts * 3 * hidden * _int(text, "moe_intermediate_size")
    shared = 3 * hidden * _int(text, "shared_expert_intermediate_size", 0)
    return routed + shared + hidden * experts  # + router


def _vision_params(vision: Any) -> int:
    # A ViT block: attention (4 h^2) and an MLP (2 h i); what vLLM loads with the LM.
    if not isinstance(vision, Mapping):
        return 0
    hidden, inter = int(vision.get("hidden_size", 0)), int(vision.get("intermediate_size", 0))
    return int(vision.get("depth", 0)) * (4 * hidden * hidden + 2 * hidden * inter)


def _gdn_state_bytes(spec: DeploymentSpec, text: Mapping[str, Any]) -> int:
    layers = sum(1 for t in _layer_types(text) if t == "linear_attention")
    if layers == 0:
        return 0
    kh, vh, kd, vd, conv = _linear_dims(text)
    recurrent = vh * kd * vd * DTYPE_BYTES[spec.gdn_state_dtype]
    conv_state = (conv - 1) * (2 * kh * kd + vh * vd) * DTYPE_BYTES[spec.model.dtype]
    return layers * (recurrent + conv_state)


def _bytes_per_param(model: ModelSpec) -> float:
    if model.quantization == "none":
        return float(DTYPE_BYTES[model.dtype])
    return QUANT_BYTES[model.quantization]
