"""A measuring probe, not a serving kernel: the memory traffic of one decode step with almost
no arithmetic, to show where the floor of a step lies.

`state_roundtrip` does what our decode kernel does to memory (read the slot index, then the
sequence's state rows, write them back in place; null slots untouched) with one multiply in
between, on the same grid of programs. The benchmark times it over every launch shape the
tuner tries and reports the fastest: no decode kernel with this contract can beat the time it
takes to move its state bytes this way, whatever its math. With `out` it writes the rows to
another pool instead, which tells how much of a large-batch step's distance from the copy
bandwidth is the contract's in-place update rather than the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn_serve.kernels.launch import LaunchConfig


@triton.jit
def _state_roundtrip_kernel(
    state, out, indices, factor, stride_slot, HV: tl.constexpr, K: tl.constexpr,
    V: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    NV: tl.constexpr = V // BV
    i_nh = tl.program_id(0) // NV
    i_v = tl.program_id(0) % NV
    slot = tl.load(indices + i_nh // HV).to(tl.int64)
    if slot > 0:
        o_v = i_v * BV + tl.arange(0, BV)
        offset = slot * stride_slot + (i_nh % HV) * V * K + o_v[:, None] * K
        offset += tl.arange(0, K)[None, :]
        h = tl.load(state + offset).to(tl.float32) * factor
        tl.store(out + offset, h.to(out.dtype.element_ty))


def state_roundtrip(
    state: torch.Tensor,
    indices: torch.Tensor,
    factor: float,
    config: LaunchConfig,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[indices[i]] = state[indices[i]] * factor for every indices[i] > 0 (out = state: in
    place), through one program per (sequence, head, block of `config.block_v` rows). Returns
    `out`."""
    if state.ndim != 4 or not state[0].is_contiguous() or indices.ndim != 1:
        raise ValueError("state must be [slots, HV, V, K] with contiguous slots, indices [B]")
    out = state if out is None else out
    if out.shape != state.shape or out.stride() != state.stride() or out.dtype != state.dtype:
        raise ValueError("out must match state in shape, strides and dtype")
    if not indices.is_contiguous():
        raise ValueError("indices must be contiguous")
    hv, v, k = state.shape[1:]
    config.check(v)
    if config.per_key_head or config.prefetch:
        raise ValueError("the probe has only the decode kernel's grid (no fused-kernel modes)")
    programs = indices.shape[0] * hv * (v // config.block_v)
    if programs:
        _state_roundtrip_kernel[(programs,)](
            state, out, indices, factor, state.stride(0), HV=hv, K=k, V=v, BV=config.block_v,
            num_warps=config.num_warps,
        )  # fmt: skip
    return out
