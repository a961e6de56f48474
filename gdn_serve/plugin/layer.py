"""vLLM 0.32's Qwen Gated DeltaNet layer with its decode step routed to our backend registry.

Registered by the plugin (`entry`) through `QwenGatedDeltaNetAttention.register_oot`, so vLLM
builds this class wherever a Qwen3.5 / Qwen3-Next model asks for its GDN layer. Only plain decode
batches change (decodes only, no speculative tokens: the batches vLLM itself sends to its packed
decode kernel). Prefill, mixed and speculative batches stay on vLLM's path.

Two shapes of the decode step, by backend:
- unfused (`triton`, `vllm`, `flashinfer`, ...): vLLM's forward is unchanged; in the core op the
  layer runs vLLM's conv update, then the chosen kernel on vLLM's pool, indices and output
  buffer, under vLLM's packed-decode contract (`gdn_serve.kernels.signature.DecodeArgs`);
- fused (`triton-fused`): the layer takes vLLM's own "norm inside the core op" path (the
  `qwen_gdn_attention_core_fused_norm_packed` op vLLM uses for speculative decoding), so that for
  a plain decode batch up to `envs.FUSED_MAX_BATCH` (8) one launch does conv update + gating +
  delta rule + gated RMSNorm, and the output projection reads its result; a larger plain decode
  batch runs vLLM's conv update, the unfused `triton` kernel and vLLM's norm (the fused kernel
  is slower there); other batches run vLLM's core and vLLM's norm in that op.

Before vLLM captures CUDA graphs (its profile run calls `_warmup_prefill_kernels` first), the
layer launches every config its kernel can pick on dummy inputs with null slots, so that no
kernel is compiled or loaded inside a capture.

Imports vLLM: only the plugin imports this module.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as vllm_gdn

from gdn_serve.kernels.reference import FusedLayerParams
from gdn_serve.kernels.signature import DecodeArgs, FusedArgs
from gdn_serve.plugin.cpu_fixes import uses_cpp_conv
from gdn_serve.plugin.entry import logger
from gdn_serve.plugin.route import DecodeRoute, LayerFacts, build_route

# The key under which the layer's choice of forward enters vLLM's config hash.
FORWARD_KEY = "gdn_serve_gdn_forward"


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


def _max_batch(vllm_config: Any) -> int:
    """The largest decode batch vLLM can hand a layer: its request limit, or a larger CUDA graph
    capture size (a captured graph's batch is padded up to its size)."""
    capture = vllm_config.compilation_config.max_cudagraph_capture_size or 0
    return max(int(vllm_config.scheduler_config.max_num_seqs), int(capture))


class RoutedGatedDeltaNet(vllm_gdn.QwenGatedDeltaNetAttention):
    """`QwenGatedDeltaNetAttention` whose decode step runs `self.gdn_route`."""

    gdn_route: DecodeRoute | None

    def __init__(self, config: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, vllm_config, *args, **kwargs)
        self.gdn_route = build_route(
            LayerFacts(
                state_dtype=str(self.get_state_dtype()[1]).removeprefix("torch."),
                head_dims=(self.head_k_dim, self.head_v_dim),
                model=_served_name(vllm_config),
                fusable=self._fusable(vllm_config),
                max_batch=_max_batch(vllm_config),
            )
        )
        self._gdn_params: FusedLayerParams | None = None
        self._gdn_mismatch_warned = False
        self._gdn_partner_batch = False  # set while the norm-in-op path hands a batch down
        fused = self.gdn_route is not None and self.gdn_route.fused
        if fused:
            # vLLM's name says speculative decoding; what the flag selects is the forward that
            # runs the gated norm inside the core op, the seam the fused kernel needs.
            self.enable_fused_gdn_spec_decode = True
        if isinstance(vllm_config.additional_config, dict):
            # vLLM's torch.compile cache key hashes the config, not this flag: without this, a
            # graph compiled for the other forward is reused from the cache (seen on an H200:
            # the fused backend then never ran, vLLM's kernels did).
            vllm_config.additional_config[FORWARD_KEY] = "norm-in-core-op" if fused else "vllm"

    def _fusable(self, vllm_config: Any) -> bool:
        """Whether vLLM's norm-inside-the-op forward applies (its own conditions for it)."""
        return (
            not self.gqa_interleaved_layout
            and vllm_config.model_config.dtype == torch.bfloat16
            and self.norm.activation in ("silu", "sigmoid")
        )

    # -- warm-up, before any CUDA graph capture -------------------------------------------

    def _warmup_prefill_kernels(self, qkv_or_qkvz: torch.Tensor, v_dim: int) -> None:
        super()._warmup_prefill_kernels(qkv_or_qkvz, v_dim)
        route = self.gdn_route
        if route is None or qkv_or_qkvz.device.type != "cuda":
            return
        device, dtype = qkv_or_qkvz.device, qkv_or_qkvz.dtype
        with torch.no_grad():
            partner = self._dummy_step(device, dtype, False) if route.partner else None
            route.warm(self._dummy_step(device, dtype, route.fused), partner)

    def _dummy_step(self, device: torch.device, dtype: torch.dtype, fused: bool) -> Any:
        """One token laid out as vLLM lays out a decode step (the same views and strides, so
        that the warm-up compiles the specialisations the real calls use), with one null slot."""
        hv, v = self.num_v_heads // self.tp_size, self.head_v_dim
        qkv_size, z_size = self.conv_dim // self.tp_size, self.value_dim // self.tp_size
        qkvz = torch.zeros(1, qkv_size + z_size, device=device, dtype=dtype)
        mixed_qkv, z = qkvz.split([qkv_size, z_size], dim=-1)
        b, a = self.split_ba(torch.zeros(1, 2 * hv, device=device, dtype=dtype))
        conv_dtype, ssm_dtype = self.get_state_dtype()
        width = self.conv_kernel_size
        conv_state = torch.zeros(1, width - 1, qkv_size, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(1, hv, v, self.head_k_dim, device=device, dtype=ssm_dtype)
        indices = torch.zeros(1, device=device, dtype=torch.int32)
        out = torch.zeros(1, hv, v, device=device, dtype=dtype)
        conv_state_view = conv_state.transpose(-1, -2)
        if fused:
            return FusedArgs(
                mixed_qkv, a, b, z.reshape(1, hv, v), conv_state_view, ssm_state, indices, out,
                self._fused_params(),
            )  # fmt: skip
        x = self._conv_update(mixed_qkv, conv_state_view, indices)
        return self._decode_args(x, b.contiguous(), a.contiguous(), ssm_state, out, indices)

    # -- GPU: unfused backends, in vLLM's core op ----------------------------------------

    def _forward_core(
        self,
        mixed_qkv: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        core_attn_out: torch.Tensor,
    ) -> None:
        metadata = self._metadata()
        if self.gdn_route is not None and metadata is not None:
            if is_plain_decode(metadata):
                # routed whatever VLLM_ENABLE_FLA_PACKED_RECURRENT_DECODE says
                return self._forward_core_decode_non_spec(mixed_qkv, b, a, core_attn_out, metadata)
            # an eager batch of vLLM's own: where samples from CUDA graph replays are read
            self.gdn_route.poll()
            self.gdn_route.count_other(mixed_qkv.device)
        return super()._forward_core(mixed_qkv, b, a, core_attn_out)

    def _forward_core_decode_non_spec(
        self,
        mixed_qkv: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        core_attn_out: torch.Tensor,
        attn_metadata: Any,
    ) -> None:
        route = self.gdn_route
        # A fused route gets here only from its norm-in-op path, for the batches its partner
        # takes (`_forward_core_fused_norm`); from vLLM's standard op it is a stale graph.
        stale = route is not None and route.fused and not self._gdn_partner_batch
        if stale and not self._gdn_mismatch_warned:
            self._gdn_mismatch_warned = True
            logger.warning(
                "gdn_serve: %s reached vLLM's standard GDN op with the fused backend: the "
                "compiled graph is not this layer's (a torch.compile cache from before?); this "
                "decode runs vLLM's kernels",
                self.prefix,
            )
        if route is None or stale:
            return super()._forward_core_decode_non_spec(
                mixed_qkv, b, a, core_attn_out, attn_metadata
            )
        n = attn_metadata.num_actual_tokens
        indices = attn_metadata.non_spec_state_indices_tensor[:n]
        x = self._conv_update(mixed_qkv[:n], self._conv_state(), indices)
        route.decode(
            self._decode_args(x, b[:n], a[:n], self.kv_cache[1], core_attn_out[:n], indices)
        )
        return None

    def _conv_update(
        self, mixed_qkv: torch.Tensor, conv_state: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """vLLM's conv update, as its packed decode path calls it."""
        return cast(
            torch.Tensor,
            vllm_gdn.causal_conv1d_update(
                mixed_qkv, conv_state, self._conv_weight_2d(), self.conv1d.bias, self.activation,
                conv_state_indices=indices, validate_data=False,
            ),
        )  # fmt: skip

    def _decode_args(
        self,
        x: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        pool: torch.Tensor,
        out: torch.Tensor,
        indices: torch.Tensor,
    ) -> DecodeArgs:
        scale = self.head_k_dim**-0.5
        return DecodeArgs(
            x, a, b, self.A_log, self.dt_bias, scale, pool, out.unsqueeze(1), indices, True
        )

    # -- GPU: the fused backend, in vLLM's norm-inside-the-op path -----------------------

    def _forward_core_fused_norm(
        self,
        mixed_qkv: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        output_gate: torch.Tensor,
        core_attn_out: torch.Tensor,
    ) -> None:
        metadata = self._metadata()
        route = self.gdn_route
        plain = metadata is not None and is_plain_decode(metadata)
        n = metadata.num_actual_tokens if plain else 0
        if route is None or not route.fused or not plain or not route.fuses(n):
            # vLLM's core, then vLLM's gated norm: our `_forward_core` counts a batch of
            # vLLM's, or runs the partner on a plain decode batch too large for the fused kernel
            self._gdn_partner_batch = plain
            try:
                return super()._forward_core_fused_norm(mixed_qkv, b, a, output_gate, core_attn_out)
            finally:
                self._gdn_partner_batch = False
        route.decode_fused(
            FusedArgs(
                mixed_qkv[:n], a[:n], b[:n], output_gate[:n], self._conv_state(),
                self.kv_cache[1], metadata.non_spec_state_indices_tensor[:n], core_attn_out[:n],
                self._fused_params(),
            )
        )  # fmt: skip
        return None

    def _fused_params(self) -> FusedLayerParams:
        """The layer's weights as the fused kernel takes them, built once (after loading)."""
        if self._gdn_params is None:
            self._gdn_params = FusedLayerParams(
                conv_weight=self._conv_weight_2d(),
                conv_bias=cast(torch.Tensor | None, self.conv1d.bias),
                A_log=self.A_log,
                dt_bias=self.dt_bias,
                norm_weight=cast(torch.Tensor, self.norm.weight),
                scale=self.head_k_dim**-0.5,
                norm_eps=float(self.norm.eps),
                conv_activation=self.activation,
                gate_activation=str(self.norm.activation),
                use_qk_l2norm=True,
            )
        return self._gdn_params

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
        if self.gdn_route is None or not is_plain_decode(attn_metadata):
            return False
        n = attn_metadata.num_decode_tokens
        indices = attn_metadata.non_spec_state_indices_tensor[: attn_metadata.num_decodes]
        x = self._conv_update_on_cpu(mixed_qkv[:n].contiguous(), indices)
        self.gdn_route.decode(
            self._decode_args(
                x, b[:n].contiguous(), a[:n].contiguous(), self.kv_cache[1], core_attn_out[:n],
                indices,
            )
        )  # fmt: skip
        return True

    def _conv_update_on_cpu(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """vLLM's CPU conv update, the one vLLM itself picks for this CPU."""
        from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention as cpu_gdn

        conv_state = self.kv_cache[0]
        dim_first = vllm_gdn.is_conv_state_dim_first()
        if uses_cpp_conv():  # on the weights vLLM packed for it at load time
            return cast(
                torch.Tensor,
                cpu_gdn._causal_conv1d_update_cpu(
                    x=x, conv_states=conv_state if dim_first else conv_state.transpose(1, 2),
                    weight=self._conv_weight(), bias=self.conv1d.bias,
                    silu_activation=self.activation == "silu", conv_state_indices=indices,
                    is_weight_packed=True,
                ),
            )  # fmt: skip
        return cast(
            torch.Tensor,
            cpu_gdn.causal_conv1d_update_cpu(
                x=x, conv_state=conv_state if dim_first else conv_state.transpose(-1, -2),
                weight=self._conv_weight_2d(), bias=self.conv1d.bias, activation=self.activation,
                conv_state_indices=indices,
            ),
        )  # fmt: skip

    # -- shared ---------------------------------------------------------------------------

    def _metadata(self) -> Any:
        """This layer's GDN attention metadata, or None (profile and warm-up runs), as vLLM's
        core op reads it."""
        raw = get_forward_context().attn_metadata
        return raw.get(self.prefix) if isinstance(raw, dict) else None

    def _conv_state(self) -> torch.Tensor:
        """vLLM's conv state as [slots, dim, W-1] (its default layout stores [slots, W-1, dim])."""
        state = self.kv_cache[0]
        return state if vllm_gdn.is_conv_state_dim_first() else state.transpose(-1, -2)

    def _conv_weight(self) -> torch.Tensor:
        # [dim, 1, width]: vLLM adds the middle axis at init (nn.Module attributes type as
        # Tensor | Module, hence the cast).
        return cast(torch.Tensor, self.conv1d.weight)

    def _conv_weight_2d(self) -> torch.Tensor:
        weight = self._conv_weight()
        return weight.view(weight.size(0), weight.size(2))
