"""The two decode contracts, each written once as a typed argument bundle and a kernel type.

- `DecodeArgs` / `PackedDecode`: vLLM 0.32's packed decode, the arguments of
  `fused_recurrent_gated_delta_rule_packed_decode`. Every decode backend (reference, ours, the
  adapters to vLLM's, FlashInfer's and the CPU op) is a `PackedDecode`; the registry loads one,
  the plugin's route calls it, the benchmark times it.
- `FusedArgs` / `FusedDecode`: the whole decode step of a GDN layer (conv update, gating, delta
  rule, gated RMSNorm), which our fused kernel runs in one launch
  (`reference.gdn_fused_decode_reference` is its spec).

Semantics (`reference.gdn_decode_reference` is the executable spec): one decode token per
sequence; `initial_state` [slots, HV, V, K] is updated in place through `ssm_state_indices`
(an index <= 0 is a null slot: zeros out, state untouched); `out` [B, 1, HV, V] is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from gdn_serve.kernels.reference import FusedLayerParams


class DecodeArgs(NamedTuple):
    """In vLLM's positional order, so `vllm_kernel(*args)` is vLLM's own call."""

    mixed_qkv: torch.Tensor  # [B, 2*HK*K + HV*V]: the conv output, q | k | v
    a: torch.Tensor  # [B, HV] raw, before softplus
    b: torch.Tensor  # [B, HV] raw, before sigmoid
    A_log: torch.Tensor  # [HV]
    dt_bias: torch.Tensor  # [HV]
    scale: float  # applied to q (K**-0.5 in every Qwen3.5 layer)
    initial_state: torch.Tensor  # [slots, HV, V, K], fp32 or bf16, updated in place
    out: torch.Tensor  # [B, 1, HV, V]
    ssm_state_indices: torch.Tensor  # [B] slot per sequence, <= 0: null slot
    use_qk_l2norm_in_kernel: bool = False


PackedDecode = Callable[[DecodeArgs], object]


class FusedArgs(NamedTuple):
    """One GDN layer's decode step; both state pools are updated in place."""

    mixed_qkv: torch.Tensor  # [B, conv_dim]: the projection before the conv, q | k | v
    a: torch.Tensor  # [B, HV]
    b: torch.Tensor  # [B, HV]
    z: torch.Tensor  # [B, HV, V]: the output gate
    conv_state: torch.Tensor  # [slots, conv_dim, W-1] (any strides)
    ssm_state: torch.Tensor  # [slots, HV, V, K]
    indices: torch.Tensor  # [B] slot per sequence, <= 0: null slot
    out: torch.Tensor  # [B, HV, V]: normalised, gated output (zeros for null slots)
    params: FusedLayerParams  # the layer's weights and options


FusedDecode = Callable[[FusedArgs], object]
