"""Our GDN decode kernel: vLLM's packed-decode contract, launch shape tuned per arch and batch.

Contract (identical to vLLM 0.32's `fused_recurrent_gated_delta_rule_packed_decode`, see
`reference.gdn_decode_reference`): packed conv output `mixed_qkv [B, 2*HK*K + HV*V]`, raw
`a`, `b [B, HV]`, `A_log`, `dt_bias [HV]`, state pool `[slots, HV, V, K]` updated in place
through `ssm_state_indices [B]`, index <= 0 = null slot (zeros out, state untouched).

Why it is faster than vLLM's at small batch: vLLM launches V/32 programs of one warp per
(sequence, head), so at B = 1 about a hundred single-warp programs each wait out two dependent
DRAM round trips (slot index, then state) with little in flight. Here the V rows of each head
are split over V/block_v programs, block_v chosen per arch and batch bucket from
`launch_table.py`: 2-4 rows at B = 1 (32-64 programs per head), 8-32 at large batch, where the
kernel is bandwidth-bound and on par with vLLM's. The state tile is loaded once, updated in
registers and streamed back; V blocks of a head sit on adjacent program ids.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from gdn_serve.kernels.launch import LaunchConfig, configs_for, device_arch, lookup
from gdn_serve.kernels.reference import HeadDims, active_rows
from gdn_serve.kernels.signature import DecodeArgs, PackedDecode
from gdn_serve.kernels.triton_math import delta_rule_step, gate_params, load_qk


@triton.jit
def _gdn_decode_kernel(
    mixed_qkv,
    a,
    b,
    A_log,
    dt_bias,
    out,
    state,
    indices,
    scale,
    stride_x,
    stride_a,
    stride_b,
    stride_slot,
    stride_idx,
    HK: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    L2NORM: tl.constexpr,
):
    # One axis (no 65535 limit, any batch fits), V blocks of a head adjacent: neighbouring
    # programs stream neighbouring state, which the DRAM pages reward.
    NV: tl.constexpr = V // BV
    i_nh = tl.program_id(0) // NV
    i_v = tl.program_id(0) % NV
    i_n = i_nh // HV
    i_hv = i_nh % HV
    o_v = i_v * BV + tl.arange(0, BV)
    p_out = out + i_nh * V + o_v

    slot = tl.load(indices + i_n * stride_idx).to(tl.int64)
    if slot <= 0:
        tl.store(p_out, tl.zeros([BV], dtype=tl.float32).to(p_out.dtype.element_ty))
        return

    o_k = tl.arange(0, K)
    p_h = state + slot * stride_slot + i_hv * V * K + o_v[:, None] * K + o_k[None, :]
    h = tl.load(p_h).to(tl.float32)

    row = mixed_qkv + i_n * stride_x
    q, k = load_qk(row, i_hv // (HV // HK), HK, K)
    v = tl.load(row + 2 * HK * K + i_hv * V + o_v).to(tl.float32)
    decay, beta = gate_params(a + i_n * stride_a, b + i_n * stride_b, A_log, dt_bias, i_hv)

    h, o = delta_rule_step(h, q, k, v, decay, beta, L2NORM, scale)
    tl.store(p_out, o.to(p_out.dtype.element_ty))
    tl.store(p_h, h.to(p_h.dtype.element_ty))


def check_decode_args(args: DecodeArgs) -> HeadDims:
    """The shape and layout checks vLLM's wrapper makes, so misuse fails loudly, not silently."""
    mixed_qkv, a, b, _, _, _, initial_state, out, indices, _ = args
    dims = HeadDims.infer(mixed_qkv.shape[-1], initial_state)
    batch = mixed_qkv.shape[0]
    if mixed_qkv.ndim != 2 or mixed_qkv.stride(-1) != 1:
        raise ValueError("mixed_qkv must be [B, dim] and contiguous in the last dim")
    if a.shape != (batch, dims.hv) or b.shape != (batch, dims.hv):
        raise ValueError(f"a and b must be [B, HV] = [{batch}, {dims.hv}]")
    if a.stride(-1) != 1 or b.stride(-1) != 1:
        raise ValueError("a and b must be contiguous in the last dim")
    if initial_state.ndim != 4 or not initial_state[0].is_contiguous():
        raise ValueError("the state pool must be [slots, HV, V, K] with contiguous slots")
    if out.shape != (batch, 1, dims.hv, dims.v) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous [B, 1, HV, V], got {tuple(out.shape)}")
    if indices.shape != (batch,):
        raise ValueError(f"ssm_state_indices must be [B] = [{batch}]")
    for d in (dims.k, dims.v):
        if d & (d - 1):
            raise ValueError(f"head dims must be powers of two, got K={dims.k}, V={dims.v}")
    return dims


def gdn_decode(
    args: DecodeArgs,
    *,
    config: LaunchConfig | None = None,
    validate: bool = False,
    dims: HeadDims | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for vLLM's packed decode. `validate=True` also rejects repeated or out-of-pool
    slot indices; it syncs with the device, so the serving path leaves it off (vLLM never
    hands out one slot twice). `dims` from an earlier `check_decode_args` of the same layout
    skips the checks (the serving path checks once per batch size)."""
    mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out, ssm_state_indices, l2norm = args
    dims = dims or check_decode_args(args)
    if validate:
        active_rows(ssm_state_indices, initial_state.shape[0])
    batch = mixed_qkv.shape[0]
    cfg = config or lookup(
        "decode", device_arch(mixed_qkv.device), initial_state.dtype, dims.hv, batch, dims.v
    )
    cfg.check(dims.v)
    if cfg.per_key_head or cfg.prefetch:
        raise ValueError("per-key-head and prefetch are the fused kernel's modes, not decode's")
    if batch == 0:
        return out, initial_state
    _gdn_decode_kernel[(batch * dims.hv * (dims.v // cfg.block_v),)](
        mixed_qkv, a, b, A_log, dt_bias, out, initial_state, ssm_state_indices, scale,
        mixed_qkv.stride(0), a.stride(0), b.stride(0), initial_state.stride(0),
        ssm_state_indices.stride(0), HK=dims.hk, HV=dims.hv, K=dims.k, V=dims.v,
        BV=cfg.block_v, L2NORM=l2norm, num_warps=cfg.num_warps,
    )  # fmt: skip
    return out, initial_state


def prepare_decode(args: DecodeArgs) -> PackedDecode:
    """`gdn_decode` for this call's layout and batch size, checked and configured once: vLLM
    hands every decode step of one batch size the same buffers, so nothing is re-decided."""
    dims = check_decode_args(args)
    state = args.initial_state
    config = lookup(
        "decode", device_arch(state.device), state.dtype, dims.hv, len(args.out), dims.v
    )
    return functools.partial(gdn_decode, config=config, dims=dims)


def warm_decode(args: DecodeArgs) -> None:
    """Launch every config the launch table can pick for this shape once, on null slots (zeros
    out, no state read or written), so that none is compiled and loaded for the first time
    inside a CUDA graph capture, where loading a module invalidates the capture."""
    dims = check_decode_args(args)
    state = args.initial_state
    null = args._replace(ssm_state_indices=torch.zeros_like(args.ssm_state_indices))
    for config in configs_for("decode", device_arch(state.device), state.dtype, dims.hv, dims.v):
        gdn_decode(null, config=config, dims=dims)
