"""vLLM 0.32's Qwen Gated DeltaNet layer with its decode step routed to our backend registry.

Registered by the plugin (`vllm_plugin`) through `QwenGatedDeltaNetAttention.register_oot`, so
vLLM builds this class wherever a Qwen3.5 / Qwen3-Next model asks for its GDN layer. Only the
decode step changes, and only where vLLM itself runs its packed single-token decode: the batch
holds decodes only, no speculative tokens. Prefill, mixed and speculative batches stay on vLLM's
path. The state pool, slot indices and output buffer are vLLM's own; every backend writes them
under vLLM's packed-decode contract (`gdn_serve.kernels.reference`).

Imports vLLM: only the plugin imports this module.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as vllm_gdn

from gdn_serve.decode_route import DecodeRoute, build_route


def is_plain_decode(attn_metadata: Any) -> bool:
    """The batches vLLM runs through its packed decode kernel (same test as vLLM's)."""
    return (
        attn_metadata.spec_sequence_masks is None
        and attn_metadata.num_prefills == 0
        and attn_metadata.num_decodes > 0
    )


def _served_name(vllm_config: Any) -> str:
    name = vllm_config.model_config.served_model_name
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class RoutedGatedDeltaNet(vllm_gdn.QwenGatedDeltaNetAttention):
    """`QwenGatedDeltaNetAttention` whose decode step runs `self.gdn_route`."""

    gdn_route: DecodeRoute | None

    def __init__(self, config: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, vllm_config, *args, **kwargs)
        self.gdn_route = build_route(
            state_dtype=str(self.get_state_dtype()[1]).removeprefix("torch."),
            head_dims=(self.head_k_dim, self.head_v_dim),
            model=_served_name(vllm_config),
        )

    # -- GPU: vLLM's packed decode, with our kernel in place of vLLM's --------------------

    def _forward_core_decode_non_spec(
        self,
        mixed_qkv: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        core_attn_out: torch.Tensor,
        attn_metadata: Any,
    ) -> None:
        if self.gdn_route is None:
            return super()._forward_core_decode_non_spec(
                mixed_qkv, b, a, core_attn_out, attn_metadata
            )
        n = attn_metadata.num_actual_tokens
        indices = attn_metadata.non_spec_state_indices_tensor[:n]
        conv_state = self.kv_cache[0]
        if not vllm_gdn.is_conv_state_dim_first():
            conv_state = conv_state.transpose(-1, -2)
        packed = self._conv_weight()
        weight = packed.view(packed.size(0), packed.size(2))
        x = vllm_gdn.causal_conv1d_update(
            mixed_qkv[:n], conv_state, weight, self.conv1d.bias, self.activation,
            conv_state_indices=indices, validate_data=False,
        )  # fmt: skip
        self._decode(x, b[:n], a[:n], core_attn_out[:n].unsqueeze(1), indices)
        return None

    # -- CPU: called by the plugin's seam in vLLM's CPU GDN op ----------------------------

    def decode_on_cpu(
        self,
        attn_metadata: Any,
        mixed_qkv: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        core_attn_out: torch.Tensor,
    ) -> bool:
        """Run a plain decode batch through the route; False leaves the batch to vLLM."""
        from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention as cpu_gdn

        if self.gdn_route is None or not is_plain_decode(attn_metadata):
            return False
        n = attn_metadata.num_decode_tokens
        indices = attn_metadata.non_spec_state_indices_tensor[: attn_metadata.num_decodes]
        conv_state = self.kv_cache[0]
        if not vllm_gdn.is_conv_state_dim_first():
            conv_state = conv_state.transpose(1, 2)
        # vLLM packed the conv weights for its C++ conv at load time: the plugin installs its
        # seam only where vLLM uses that conv (CPUs with bf16 dot products).
        x = cpu_gdn._causal_conv1d_update_cpu(
            x=mixed_qkv[:n].contiguous(), conv_states=conv_state, weight=self._conv_weight(),
            bias=self.conv1d.bias, silu_activation=self.activation == "silu",
            conv_state_indices=indices, is_weight_packed=True,
        )  # fmt: skip
        out = core_attn_out[:n].unsqueeze(1)
        self._decode(x, b[:n].contiguous(), a[:n].contiguous(), out, indices)
        return True

    def _conv_weight(self) -> torch.Tensor:
        # [dim, 1, width]: vLLM adds the middle axis at init (nn.Module attributes type as
        # Tensor | Module, hence the cast).
        return cast(torch.Tensor, self.conv1d.weight)

    def _decode(
        self,
        x: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        out: torch.Tensor,
        indices: torch.Tensor,
    ) -> None:
        assert self.gdn_route is not None
        self.gdn_route.decode(
            x, a, b, self.A_log, self.dt_bias, self.head_k_dim**-0.5, self.kv_cache[1], out,
            indices, True,
        )  # fmt: skip
