"""Other people's GDN decode kernels as `signature.PackedDecode`s (vLLM's packed-decode
contract). Their packages are imported only when called."""

from __future__ import annotations

import torch

from gdn_serve.kernels.reference import HeadDims
from gdn_serve.kernels.signature import DecodeArgs


def _split_heads(
    mixed_qkv: torch.Tensor, dims: HeadDims
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views q, k [B, 1, HK, K] and v [B, 1, HV, V] of the packed row (no copy)."""
    q, k, v = torch.split(mixed_qkv, [dims.hk * dims.k, dims.hk * dims.k, dims.hv * dims.v], -1)
    batch = mixed_qkv.shape[0]
    return (
        q.view(batch, 1, dims.hk, dims.k),
        k.view(batch, 1, dims.hk, dims.k),
        v.view(batch, 1, dims.hv, dims.v),
    )


def vllm_decode(args: DecodeArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's own Triton kernel, which defines the contract (the arguments are its own)."""
    from vllm.third_party.flash_linear_attention.ops.fused_recurrent import (
        fused_recurrent_gated_delta_rule_packed_decode,
    )

    return fused_recurrent_gated_delta_rule_packed_decode(*args)


def flashinfer_decode(args: DecodeArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashInfer's `gated_delta_rule_decode_pretranspose` (SM90+, same [slots, HV, V, K] pool).

    FlashInfer marks padding with -1, not with vLLM's null slot 0, and its bf16-state path
    leaves padded outputs undefined: map the indices and zero those rows (two small extra
    launches that the contract costs). One difference remains: for a null row the bf16-state
    path reads and writes slot 0, vLLM's null block, which vLLM never reads as a sequence's
    state; the fp32 path leaves it untouched. Checked on an H100 against the float64
    reference (`gpu_checks.check_flashinfer_adapter`, run by every benchmark)."""
    from flashinfer.gdn_decode import gated_delta_rule_decode_pretranspose

    mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out, ssm_state_indices, l2norm = args
    dims = HeadDims.infer(mixed_qkv.shape[-1], initial_state)
    q, k, v = _split_heads(mixed_qkv, dims)
    null = ssm_state_indices <= 0
    indices = torch.where(null, -1, ssm_state_indices)
    gated_delta_rule_decode_pretranspose(
        q, k, v, None, A_log, a.unsqueeze(1), dt_bias, b.unsqueeze(1), scale=scale,
        output=out, use_qk_l2norm=l2norm, initial_state=initial_state,
        initial_state_indices=indices,
    )  # fmt: skip
    out.masked_fill_(null.view(-1, 1, 1, 1), 0)
    return out, initial_state


def vllm_cpu_decode(args: DecodeArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's C++ CPU op (`fused_sigmoid_gating_delta_rule_update_cpu`).

    Two things differ from the GPU contract, both kept as vLLM's CPU path has them so that the
    state stays compatible with vLLM's CPU prefill: the op reads each slot's [V, K] block as
    K-major ([K, V]; the two coincide in shape when K == V, which vLLM's CPU path assumes), and it
    has no null slots, so only rows with a real slot are handed to it. Its scale is fixed at
    K^-1/2 and it wants every input in one dtype."""
    import vllm._custom_ops as ops

    mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out, ssm_state_indices, l2norm = args
    dims = HeadDims.infer(mixed_qkv.shape[-1], initial_state)
    if scale != dims.k**-0.5:
        raise ValueError("vLLM's CPU op only supports scale = K**-0.5")
    out.zero_()
    rows = torch.nonzero(ssm_state_indices > 0).flatten()
    if rows.numel() == 0:
        return out, initial_state
    q, k, v = (t.transpose(0, 1) for t in _split_heads(mixed_qkv[rows], dims))
    dtype = mixed_qkv.dtype
    core = ops.fused_sigmoid_gating_delta_rule_update_cpu(
        A_log=A_log.to(dtype), dt_bias=dt_bias.to(dtype), q=q, k=k, v=v,
        a=a[rows].to(dtype), b=b[rows].to(dtype),
        initial_state_source=initial_state.view(initial_state.shape[0], dims.hv, dims.k, dims.v),
        initial_state_indices=ssm_state_indices[rows],
        cu_seqlens=torch.arange(rows.numel() + 1, dtype=torch.int32),
        use_qk_l2norm_in_kernel=l2norm,
    )  # fmt: skip
    out[rows] = core.reshape(rows.numel(), 1, dims.hv, dims.v).to(out.dtype)
    return out, initial_state
