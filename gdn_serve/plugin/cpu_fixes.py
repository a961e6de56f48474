"""vLLM 0.32's CPU Gated DeltaNet path: the seam that hands plain decode batches to our layer,
and the fix for one-token prompts. Applied by `entry.register` on CPU platforms only."""

from __future__ import annotations

import functools
from typing import Any

from gdn_serve.plugin.entry import SUPPORTED_VLLM, logger


def route_decode() -> None:
    """Wrap the module function vLLM's CPU GDN op calls, so that the layer's `decode_on_cpu`
    takes plain decode batches (it returns False for the rest, which go to vLLM's own)."""
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    original = gdn_attention._cpu_gdn_attention_nonspec

    def cpu_gdn_attention_nonspec(
        layer: Any, attn_metadata_i: Any, mixed_qkv: Any, b: Any, a: Any, core_attn_out: Any
    ) -> None:
        route = getattr(layer, "decode_on_cpu", None)
        if route is None or not route(attn_metadata_i, mixed_qkv, b, a, core_attn_out):
            original(layer, attn_metadata_i, mixed_qkv, b, a, core_attn_out)

    gdn_attention._cpu_gdn_attention_nonspec = cpu_gdn_attention_nonspec


@functools.cache
def uses_cpp_conv() -> bool:
    """vLLM's own test for its C++ causal conv (CPUs with bf16 dot products: AVX-512 BF16 or
    Arm bf16); it packs the conv weights for it at load time. Elsewhere it runs a torch conv
    on the unpacked weights, and its build has no C++ conv op at all (AVX2 x86)."""
    import torch
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    return bool(torch.cpu._is_avx512_bf16_supported() or gdn_attention.is_arm_bf16())


def tokens_transposed(x: Any) -> Any:
    """`x` as a [dim, tokens] view of a row-major [tokens, dim] buffer, copying only if needed.

    vLLM's C++ `causal_conv1d_fwd_cpu` requires exactly that layout (stride (1, dim)). vLLM
    passes a transposed slice of the projection output; with one token that slice's row stride
    can be anything (a size-1 dimension has no meaningful stride, so `.contiguous()` keeps it),
    the check fails, and the engine dies: any one-token prompt took the server down.
    """
    import torch

    if x.stride(0) == 1 and x.stride(1) == x.size(0):
        return x
    rows = torch.empty((x.size(1), x.size(0)), dtype=x.dtype, device=x.device)
    rows.copy_(x.transpose(0, 1))
    return rows.transpose(0, 1)


def fix_single_token_prefill() -> None:
    """Hand vLLM's CPU conv its input in the layout it checks for (see `tokens_transposed`)."""
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    original = gdn_attention._causal_conv1d_fwd_cpu

    def causal_conv1d_fwd_cpu(*, x: Any, **kwargs: Any) -> Any:
        return original(x=tokens_transposed(x), **kwargs)

    gdn_attention._causal_conv1d_fwd_cpu = causal_conv1d_fwd_cpu
    logger.info("gdn_serve: fixed vLLM %s CPU GDN prefill of one-token prompts", SUPPORTED_VLLM)
