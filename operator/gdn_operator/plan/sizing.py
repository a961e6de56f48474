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

from gdn_operator.api.crd import LAYER_TYPES, MAX_CONFIG_INT, MAX_LAYERS
from gdn_operator.api.spec import DeploymentSpec, ModelSpec, SpecError

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


@dataclass(frozen=True)
class _Config:
    """Typed reads of one level of a config.json; every wrong value is a SpecError naming the
    field, so no arithmetic below ever sees a string, a bool, a zero head count or a float."""

    fields: Mapping[str, Any]
    where: str  # e.g. "model.config.text_config"

    def count(
        self,
        name: str,
        default: int | None = None,
        *,
        minimum: int = 1,
        maximum: int = MAX_CONFIG_INT,
    ) -> int:
        value = self.fields.get(name, default)
        if value is None:
            raise SpecError(f"{self.where} lacks {name} (an integer >= {minimum})")
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.where}.{name} must be an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise SpecError(f"{self.where}.{name} must be in {minimum}..{maximum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.fields.get(name, default)
        if not isinstance(value, bool):
            raise SpecError(f"{self.where}.{name} must be true or false, got {value!r}")
        return value

    def has(self, name: str) -> bool:
        return self.fields.get(name) is not None


def model_needs(spec: DeploymentSpec) -> ModelNeeds:
    model = spec.model
    if model.config is None:
        return _needs_from_spec(model)
    if not isinstance(model.config, Mapping):
        raise SpecError("model.config must be an object (the checkpoint's config.json)")
    return _needs_from_config(spec, model.config, _text_config(model.config))


def _kv_bytes_per_token(spec: DeploymentSpec, text: _Config) -> int:
    """Bytes per token of KV cache over all full-attention layers and KV heads."""
    kv_dtype = str(spec.engine_args.get("kv_cache_dtype", "auto"))
    per_elem = 1 if kv_dtype.startswith("fp8") else DTYPE_BYTES[spec.model.dtype]
    full_layers = sum(1 for t in _layer_types(text) if t == "full_attention")
    return 2 * text.count("num_key_value_heads") * _head_dim(text) * full_layers * per_elem


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
    spec: DeploymentSpec, config: Mapping[str, Any], text: _Config
) -> ModelNeeds:
    model = spec.model
    embed, body = _param_split(config, text)
    if model.weight_bytes is not None:
        weights = model.weight_bytes
    else:
        weights = int(embed * DTYPE_BYTES[model.dtype] + body * _bytes_per_param(model))
    return ModelNeeds(
        weight_bytes=weights,
        kv_bytes_per_token=_kv_bytes_per_token(spec, text),
        kv_heads=text.count("num_key_value_heads"),
        state_bytes_per_seq=_gdn_state_bytes(spec, text),
        max_model_len=_max_model_len(model, text),
        moe=_num_experts(text) > 0,
        divisible_heads=_divisible_heads(text),
        linear_head_dims=_linear_head_dims(text),
        from_config=True,
    )


def _max_model_len(model: ModelSpec, text: _Config) -> int | None:
    if not text.has("max_position_embeddings"):
        return model.max_model_len
    native = text.count("max_position_embeddings")
    if model.max_model_len is not None and model.max_model_len > native:
        # vLLM refuses to start with it: better said here than in a crash-looping replica.
        raise SpecError(
            f"model.maxModelLen {model.max_model_len} exceeds the model's"
            f" max_position_embeddings {native}"
        )
    return model.max_model_len or native


def _text_config(config: Mapping[str, Any]) -> _Config:
    # Multimodal Qwen3.5 checkpoints nest the language model's fields under text_config.
    if "text_config" not in config:
        text = _Config(config, "model.config")
    elif isinstance(config["text_config"], Mapping):
        text = _Config(config["text_config"], "model.config.text_config")
    else:
        raise SpecError("model.config.text_config must be an object")
    for name in ("hidden_size", "num_attention_heads", "vocab_size"):
        text.count(name)
    text.count("num_hidden_layers", maximum=MAX_LAYERS)
    return text


def _head_dim(text: _Config) -> int:
    if text.has("head_dim"):
        return text.count("head_dim")
    derived = text.count("hidden_size") // text.count("num_attention_heads")
    if derived < 1:
        raise SpecError(
            f"{text.where} has no head_dim and hidden_size / num_attention_heads is below 1"
        )
    return derived


def _layer_types(text: _Config) -> list[str]:
    layers = text.count("num_hidden_layers", maximum=MAX_LAYERS)
    types = text.fields.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or any(t not in LAYER_TYPES for t in types):
            raise SpecError(f"{text.where}.layer_types must list only {', '.join(LAYER_TYPES)}")
        if len(types) != layers:
            raise SpecError(
                f"{text.where}.layer_types has {len(types)} entries for {layers} layers"
            )
        return list(types)
    interval = text.count("full_attention_interval", 4)
    return [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)
    ]


def _num_experts(text: _Config) -> int:
    return text.count("num_experts", 0, minimum=0)


def _has_linear_layers(text: _Config) -> bool:
    return "linear_attention" in _layer_types(text)


def _linear_dims(text: _Config) -> tuple[int, int, int, int, int]:
    """(key heads, value heads, key dim, value dim, conv kernel) of the GDN layers."""
    return (
        text.count("linear_num_key_heads", 16),
        text.count("linear_num_value_heads", 32),
        text.count("linear_key_head_dim", 128),
        text.count("linear_value_head_dim", 128),
        text.count("linear_conv_kernel_dim", 4),
    )


def _linear_head_dims(text: _Config) -> tuple[int, int] | None:
    if not _has_linear_layers(text):
        return None
    _, _, kd, vd, _ = _linear_dims(text)
    return kd, vd


def _divisible_heads(text: _Config) -> dict[str, int]:
    heads = {"num_attention_heads": text.count("num_attention_heads")}
    if _has_linear_layers(text):
        kh, vh, _, _, _ = _linear_dims(text)
        heads.update(linear_num_key_heads=kh, linear_num_value_heads=vh)
    return heads


def _param_split(config: Mapping[str, Any], text: _Config) -> tuple[int, int]:
    """(embedding + LM head params, everything else), the split quantization cares about."""
    hidden, vocab = text.count("hidden_size"), text.count("vocab_size")
    top = _Config(config, "model.config")
    tied = top.flag("tie_word_embeddings", text.flag("tie_word_embeddings", False))
    embed = vocab * hidden * (1 if tied else 2)
    body = sum(_layer_params(text, kind) for kind in _layer_types(text))
    return embed, body + _vision_params(config.get("vision_config"))


def _layer_params(text: _Config, kind: str) -> int:
    mixer = _full_attention_params(text) if kind == "full_attention" else _gdn_params(text)
    return mixer + _mlp_params(text)


def _full_attention_params(text: _Config) -> int:
    hidden, heads, kv = (
        text.count("hidden_size"),
        text.count("num_attention_heads"),
        text.count("num_key_value_heads"),
    )
    head_dim = _head_dim(text)
    # Qwen3.5's gated attention doubles the query projection (query + output gate).
    q_factor = 2 if text.flag("attn_output_gate", True) else 1
    return hidden * head_dim * (heads * q_factor + 2 * kv) + heads * head_dim * hidden


def _gdn_params(text: _Config) -> int:
    hidden = text.count("hidden_size")
    kh, vh, kd, vd, conv = _linear_dims(text)
    qkv = 2 * kh * kd + vh * vd
    # in_proj_qkv, in_proj_z, in_proj_b/a, conv1d over qkv, out_proj
    return hidden * qkv + hidden * vh * vd + 2 * hidden * vh + qkv * conv + vh * vd * hidden


def _mlp_params(text: _Config) -> int:
    hidden, experts = text.count("hidden_size"), _num_experts(text)
    if experts == 0:
        return 3 * hidden * text.count("intermediate_size")
    routed = experts * 3 * hidden * text.count("moe_intermediate_size")
    shared = 3 * hidden * text.count("shared_expert_intermediate_size", 0, minimum=0)
    return routed + shared + hidden * experts  # + router


def _vision_params(vision: Any) -> int:
    # A ViT block: attention (4 h^2) and an MLP (2 h i); what vLLM loads with the LM.
    if vision is None:
        return 0
    if not isinstance(vision, Mapping):
        raise SpecError("model.config.vision_config must be an object")
    tower = _Config(vision, "model.config.vision_config")
    hidden = tower.count("hidden_size", 0, minimum=0)
    inter = tower.count("intermediate_size", 0, minimum=0)
    return tower.count("depth", 0, minimum=0) * (4 * hidden * hidden + 2 * hidden * inter)


def _gdn_state_bytes(spec: DeploymentSpec, text: _Config) -> int:
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
