"""The GDN decode core of one layer in one launch: conv1d state update, gating, delta rule and
the gated RMSNorm of the output (`reference.gdn_fused_decode_reference` is the spec).

vLLM runs this as `causal_conv1d_update`, the packed decode kernel and `RMSNormGated` (plus a
zero-fill of the output buffer and two copies making `a`/`b` contiguous): each launch costs a few
microseconds of latency at small batch and round-trips the activations through memory.

One program owns (sequence, value head, block of V rows), as in the plain decode kernel. What
crosses programs is settled once per program, at its end, with the "last to arrive" pattern: an
atomic counter per (sequence, key head); the program that brings it to G x NV (G = HV/HK value
heads per key head, NV blocks per head) finishes the group's work and resets the counter to zero
for the next launch, so it stays valid across CUDA-graph replays. That work is:

* the conv state of the key head's q/k channels, which every program of the group convolved
  from the old window: only the last one shifts it, so no reader sees a half-updated window;
* when V is split (NV > 1), the RMSNorm of the G heads: each program leaves its unnormalised
  rows in a float32 scratch row, the last one normalises whole heads.

The v channels' conv state belongs to exactly one program and is updated there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gdn_serve.kernels.launch import LaunchConfig, configs_for, device_arch, lookup
from gdn_serve.kernels.reference import HeadDims, active_rows
from gdn_serve.kernels.signature import FusedArgs, FusedDecode
from gdn_serve.kernels.triton_math import delta_rule_step, gate_params


@triton.jit
def _conv_inputs(x_row, w, bias, ch, stride_w_dim, W: tl.constexpr, WP: tl.constexpr,
                 HAS_BIAS: tl.constexpr):  # fmt: skip
    """What the conv of channels `ch` needs besides the state: x, the [taps, ch] weights and
    the bias. Independent of the slot, so it can be in flight while the slot index loads."""
    taps = tl.arange(0, WP)[:, None]
    x = tl.load(x_row + ch)
    wt = tl.load(w + ch[None, :] * stride_w_dim + taps, mask=taps < W, other=0.0)
    acc0 = tl.zeros(ch.shape, dtype=tl.float32)
    if HAS_BIAS:
        acc0 += tl.load(bias + ch).to(tl.float32)
    return x, wt.to(tl.float32), acc0


@triton.jit
def _conv_window(cs_slot, ch, stride_cs_dim, stride_cs_tok, W: tl.constexpr, WP: tl.constexpr):
    """The old window of channels `ch` as a [taps, ch] tile (channels fastest, as vLLM's
    default conv state layout (state_len, dim) stores them), its taps shifted by one, and where
    the window lives."""
    taps = tl.arange(0, WP)[:, None]
    p = cs_slot + ch[None, :] * stride_cs_dim + taps * stride_cs_tok
    old = tl.load(p, mask=taps < W - 1, other=0.0)
    nxt = tl.load(p + stride_cs_tok, mask=taps < W - 2, other=0.0)
    return p, old, nxt


@triton.jit
def _conv_step(x, wt, acc0, old, nxt, W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr):
    """conv1d output (float32) over [old window, x], and the new window (old shifted, x
    appended). vLLM rounds the output to the activation dtype (it goes through memory); here it
    stays in registers in float32, closer to the float64 reference."""
    taps = tl.arange(0, WP)[:, None]
    xs = x.to(old.dtype)[None, :]  # vLLM casts x to the conv state dtype first
    window = tl.where(taps == W - 1, xs, old).to(tl.float32)
    acc = acc0 + tl.sum(window * wt, 0)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    return acc, tl.where(taps == W - 2, xs, nxt)


@triton.jit
def _store_window(p, window, W: tl.constexpr, WP: tl.constexpr):
    tl.store(p, window, mask=tl.arange(0, WP)[:, None] < W - 1)


@triton.jit
def _arrive(counter, target):
    """Count this program in; True for the last of `target` arrivals (which resets the count).

    The barrier makes every thread's earlier loads and stores precede the counting atomic, whose
    acq_rel order publishes them to the last arrival."""
    tl.debug_barrier()
    last = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == target - 1
    if last:
        tl.store(counter, 0)
    return last


@triton.jit
def _gated_norm(o, z, w, eps, V: tl.constexpr, GATE_SIGMOID: tl.constexpr):
    """rms_norm(o) * w * act(z) along the last axis (V values of a head), in float32."""
    rstd = tl.rsqrt(tl.sum(o * o, axis=-1, keep_dims=True) / V + eps)
    z = z.to(tl.float32)
    gate = tl.sigmoid(z) if GATE_SIGMOID else z * tl.sigmoid(z)
    return o * rstd * w.to(tl.float32) * gate


@triton.jit
def _head_inputs(x_row, conv_w, conv_b, a_row, b_row, A_log, dt_bias, z_row, norm_w, i_hv, o_v,
                 stride_w_dim, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 W: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """Everything of one head's block that does not depend on the slot."""
    ch_v = 2 * HK * K + i_hv * V + o_v
    xv, wv, bv = _conv_inputs(x_row, conv_w, conv_b, ch_v, stride_w_dim, W, WP, HAS_BIAS)
    decay, beta = gate_params(a_row, b_row, A_log, dt_bias, i_hv)
    zv = tl.load(z_row + o_v)
    nw = tl.load(norm_w + o_v)
    return ch_v, xv, wv, bv, decay, beta, zv, nw


@triton.jit
def _load_head(h_base, i_hv, o_v, K: tl.constexpr, V: tl.constexpr):
    """Issue the load of one value head's block of state rows; returns (where, value)."""
    p_h = h_base + i_hv * V * K + o_v[:, None] * K + tl.arange(0, K)[None, :]
    return p_h, tl.load(p_h).to(tl.float32)


@triton.jit
def _head_step(
    p_h, h, cs_slot, ch_v, xv, wv, bv, decay, beta, zv, nw, q, k, p_out, p_part, o_v,
    eps, scale, stride_cs_dim, stride_cs_tok, V: tl.constexpr, NV: tl.constexpr,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, GATE_SIGMOID: tl.constexpr,
    L2NORM: tl.constexpr,
):  # fmt: skip
    """One value head's block of V rows (its state `h` loaded or loading): v conv (and its
    window shift), delta rule, state write-back, then the gated norm (whole head here) or the
    unnormalised rows (split head)."""
    p_win, old, nxt = _conv_window(cs_slot, ch_v, stride_cs_dim, stride_cs_tok, W, WP)
    v, win = _conv_step(xv, wv, bv, old, nxt, W, WP, SILU)
    tl.debug_barrier()  # every thread has read the old window before it is overwritten
    _store_window(p_win, win, W, WP)
    h, o = delta_rule_step(h, q, k, v, decay, beta, L2NORM, scale)
    tl.store(p_h, h.to(p_h.dtype.element_ty))
    if NV == 1:
        tl.store(p_out + o_v, _gated_norm(o, zv, nw, eps, V, GATE_SIGMOID).to(
            p_out.dtype.element_ty))  # fmt: skip
    else:
        tl.store(p_part + o_v, o)


@triton.jit
def _gdn_fused_kernel(
    x, a, b, z, conv_state, conv_w, conv_b, A_log, dt_bias, norm_w, state, indices, out,
    counters, partial, scale, eps,
    stride_x, stride_a, stride_b, stride_z_tok, stride_z_head,
    stride_cs_slot, stride_cs_dim, stride_cs_tok, stride_w_dim, stride_slot, stride_idx,
    HK: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    PER_KEY_HEAD: tl.constexpr, PREFETCH: tl.constexpr, W: tl.constexpr, WP: tl.constexpr,
    HAS_BIAS: tl.constexpr, CONV_SILU: tl.constexpr, GATE_SIGMOID: tl.constexpr,
    L2NORM: tl.constexpr,
):  # fmt: skip
    NV: tl.constexpr = V // BV
    G: tl.constexpr = HV // HK
    # Heads per program: the whole key head's G value heads (large batch: no arrivals at
    # all), or one, with V blocks of a head on adjacent program ids (small batch: parallelism).
    HP: tl.constexpr = G if PER_KEY_HEAD else 1
    ARRIVALS: tl.constexpr = (G // HP) * NV
    if PER_KEY_HEAD:
        i_n = tl.program_id(0) // HK
        i_h = tl.program_id(0) % HK
        i_hv0 = i_h * G
        i_v = 0
    else:
        i_nh = tl.program_id(0) // NV
        i_v = tl.program_id(0) % NV
        i_n = i_nh // HV
        i_hv0 = i_nh % HV
        i_h = i_hv0 // G
    o_v = i_v * BV + tl.arange(0, BV)
    o_k = tl.arange(0, K)
    x_row = x + i_n * stride_x
    a_row = a + i_n * stride_a
    b_row = b + i_n * stride_b
    z_tok = z + i_n * stride_z_tok

    slot = tl.load(indices + i_n * stride_idx).to(tl.int64)
    # Issued before the slot is known, so that their latency hides behind the index load's.
    ch_q = i_h * K + o_k
    ch_k = HK * K + i_h * K + o_k
    xq, wq, bq = _conv_inputs(x_row, conv_w, conv_b, ch_q, stride_w_dim, W, WP, HAS_BIAS)
    xk, wk, bk = _conv_inputs(x_row, conv_w, conv_b, ch_k, stride_w_dim, W, WP, HAS_BIAS)
    if HP == 1:
        ch_v, xv, wv, bv, decay, beta, zv, nw = _head_inputs(
            x_row, conv_w, conv_b, a_row, b_row, A_log, dt_bias, z_tok + i_hv0 * stride_z_head,
            norm_w, i_hv0, o_v, stride_w_dim, HK, K, V, W, WP, HAS_BIAS,
        )  # fmt: skip
    if slot <= 0:
        for j in tl.static_range(HP):
            p_out = out + (i_n * HV + i_hv0 + j) * V + o_v
            tl.store(p_out, tl.zeros([BV], dtype=tl.float32).to(p_out.dtype.element_ty))
        return

    h_base = state + slot * stride_slot
    if PREFETCH:  # the state, the long pole, goes out before the q/k conv waits on its windows
        p_h, h = _load_head(h_base, i_hv0, o_v, K, V)
    cs_slot = conv_state + slot * stride_cs_slot
    p_wq, old_q, nxt_q = _conv_window(cs_slot, ch_q, stride_cs_dim, stride_cs_tok, W, WP)
    p_wk, old_k, nxt_k = _conv_window(cs_slot, ch_k, stride_cs_dim, stride_cs_tok, W, WP)
    q, win_q = _conv_step(xq, wq, bq, old_q, nxt_q, W, WP, CONV_SILU)
    k, win_k = _conv_step(xk, wk, bk, old_k, nxt_k, W, WP, CONV_SILU)
    for j in tl.static_range(HP):
        i_hv = i_hv0 + j
        if HP > 1:
            ch_v, xv, wv, bv, decay, beta, zv, nw = _head_inputs(
                x_row, conv_w, conv_b, a_row, b_row, A_log, dt_bias, z_tok + i_hv * stride_z_head,
                norm_w, i_hv, o_v, stride_w_dim, HK, K, V, W, WP, HAS_BIAS,
            )  # fmt: skip
        if not PREFETCH:
            p_h, h = _load_head(h_base, i_hv, o_v, K, V)
        elif j + 1 < HP:  # the next head's state loads while this one computes
            p_h_next, h_next = _load_head(h_base, i_hv + 1, o_v, K, V)
        _head_step(
            p_h, h, cs_slot, ch_v, xv, wv, bv, decay, beta, zv, nw, q, k,
            out + (i_n * HV + i_hv) * V, partial + (i_n * HV + i_hv) * V, o_v, eps, scale,
            stride_cs_dim, stride_cs_tok, V, NV, W, WP, CONV_SILU, GATE_SIGMOID, L2NORM,
        )  # fmt: skip
        if PREFETCH and j + 1 < HP:
            p_h, h = p_h_next, h_next

    if NV > 1:  # the last arrival normalises the key head's G heads: fetch their z now
        o_g = tl.arange(0, G)[:, None]
        o_all = tl.arange(0, V)[None, :]
        z_heads = tl.load(z_tok + (i_h * G + o_g) * stride_z_head + o_all)
        w_all = tl.load(norm_w + o_all)
    if ARRIVALS == 1:
        tl.debug_barrier()  # every thread has read the old q/k windows
        last = True
    else:
        last = _arrive(counters + i_n * HK + i_h, ARRIVALS)
    if last:
        # every program of the key head has read the old q/k windows and left its rows
        _store_window(p_wq, win_q, W, WP)
        _store_window(p_wk, win_k, W, WP)
        if NV > 1:
            rows = (i_n * HV + i_h * G + o_g) * V + o_all
            # written by other SMs: read from L2, past this SM's L1
            o_heads = tl.load(partial + rows, cache_modifier=".cg")
            normed = _gated_norm(o_heads, z_heads, w_all, eps, V, GATE_SIGMOID)
            tl.store(out + rows, normed.to(out.dtype.element_ty))


@dataclass(frozen=True)
class FusedWorkspace:
    """Scratch the fused kernel keeps between launches: an arrival counter per (sequence, key
    head), zero between launches (the kernel resets it), and one float32 row per (sequence,
    head) for the norm."""

    counters: torch.Tensor  # int32 [max_batch, HK]
    partial: torch.Tensor  # float32 [max_batch, HV, V]

    @staticmethod
    def allocate(max_batch: int, dims: HeadDims, device: torch.device) -> FusedWorkspace:
        return FusedWorkspace(
            counters=torch.zeros(max_batch, dims.hk, dtype=torch.int32, device=device),
            partial=torch.empty(max_batch, dims.hv, dims.v, dtype=torch.float32, device=device),
        )

    def fits(self, batch: int, dims: HeadDims) -> bool:
        return (
            self.counters.shape[0] >= batch
            and self.counters.shape[1] == dims.hk
            and self.partial.shape[1:] == (dims.hv, dims.v)
        )


def check_fused_args(args: FusedArgs) -> HeadDims:
    """The shape and layout checks, so misuse fails loudly; returns the head geometry."""
    mixed_qkv, a, b, z, conv_state, ssm_state, _, out, params = args
    dims = HeadDims.infer(mixed_qkv.shape[-1], ssm_state)
    batch, conv_dim = mixed_qkv.shape
    width = params.conv_weight.shape[-1]
    if conv_state.shape[1:] != (conv_dim, width - 1) or params.conv_weight.stride(-1) != 1:
        raise ValueError("conv_state must be [slots, dim, W-1] and conv_weight [dim, W]")
    if a.shape != (batch, dims.hv) or b.shape != (batch, dims.hv):
        raise ValueError(f"a and b must be [B, HV] = [{batch}, {dims.hv}]")
    if z.shape != (batch, dims.hv, dims.v) or z.stride(-1) != 1 or mixed_qkv.stride(-1) != 1:
        raise ValueError("z must be [B, HV, V]; z and mixed_qkv contiguous in the last dim")
    if out.shape != (batch, dims.hv, dims.v) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous [B, HV, V], got {tuple(out.shape)}")
    if not ssm_state[0].is_contiguous() or dims.k & (dims.k - 1) or dims.v & (dims.v - 1):
        raise ValueError("the state pool must have contiguous slots and power-of-two K, V")
    group = dims.hv // dims.hk
    if group & (group - 1):
        raise ValueError(f"HV/HK = {group} must be a power of two")
    if params.conv_activation not in (None, "silu", "swish"):
        raise ValueError(f"unsupported conv activation {params.conv_activation!r}")
    if params.gate_activation not in ("silu", "swish", "sigmoid"):
        raise ValueError(f"unsupported gate activation {params.gate_activation!r}")
    return dims


def gdn_fused_decode(
    args: FusedArgs,
    *,
    workspace: FusedWorkspace | None = None,
    config: LaunchConfig | None = None,
    validate: bool = False,
    dims: HeadDims | None = None,
) -> torch.Tensor:
    """Same contract as `reference.gdn_fused_decode_reference`, in one launch.

    Pass a persistent `workspace` (FusedWorkspace.allocate) on the serving path: without one a
    zeroed workspace is allocated per call, which costs an extra fill launch. `dims` from an
    earlier `check_fused_args` of the same layout skips the checks (the serving path checks once
    per batch size: vLLM's buffers keep their layout)."""
    mixed_qkv, a, b, z, conv_state, ssm_state, indices, out, params = args
    dims = dims or check_fused_args(args)
    batch = mixed_qkv.shape[0]
    if validate:
        active_rows(indices, ssm_state.shape[0])
    if workspace is None:
        workspace = FusedWorkspace.allocate(batch, dims, mixed_qkv.device)
    if not workspace.fits(batch, dims):
        raise ValueError(f"workspace too small or shaped for other heads (batch {batch})")
    cfg = config or lookup(
        "fused", device_arch(mixed_qkv.device), ssm_state.dtype, dims.hv, batch, dims.v
    )
    cfg.check(dims.v)
    if batch == 0:
        return out
    width = params.conv_weight.shape[-1]
    bias = params.conv_bias if params.conv_bias is not None else params.conv_weight
    programs = batch * (dims.hk if cfg.per_key_head else dims.hv * (dims.v // cfg.block_v))
    _gdn_fused_kernel[(programs,)](
        mixed_qkv, a, b, z, conv_state, params.conv_weight, bias, params.A_log, params.dt_bias,
        params.norm_weight, ssm_state, indices, out, workspace.counters, workspace.partial,
        params.scale, params.norm_eps,
        mixed_qkv.stride(0), a.stride(0), b.stride(0), z.stride(0), z.stride(1),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        params.conv_weight.stride(0), ssm_state.stride(0), indices.stride(0),
        HK=dims.hk, HV=dims.hv, K=dims.k, V=dims.v, BV=cfg.block_v,
        PER_KEY_HEAD=cfg.per_key_head, PREFETCH=cfg.prefetch, W=width,
        WP=triton.next_power_of_2(width),
        HAS_BIAS=params.conv_bias is not None, CONV_SILU=params.conv_activation is not None,
        GATE_SIGMOID=params.gate_activation == "sigmoid", L2NORM=params.use_qk_l2norm,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return out


def prepare_fused(args: FusedArgs, workspace: FusedWorkspace) -> FusedDecode:
    """`gdn_fused_decode` for this call's layout and batch size on `workspace`, checked and
    configured once (vLLM hands every decode step of one batch size the same buffers)."""
    dims = check_fused_args(args)
    if not workspace.fits(len(args.out), dims):
        raise ValueError(f"workspace too small or shaped for other heads (batch {len(args.out)})")
    state = args.ssm_state
    config = lookup("fused", device_arch(state.device), state.dtype, dims.hv, len(args.out), dims.v)
    return functools.partial(gdn_fused_decode, workspace=workspace, config=config, dims=dims)


def warm_fused(args: FusedArgs, workspace: FusedWorkspace) -> None:
    """Launch every config the launch table can pick for this shape once, on null slots (zeros
    out, neither state touched, no arrival counted), so that none is compiled and loaded for the
    first time inside a CUDA graph capture."""
    dims = check_fused_args(args)
    state = args.ssm_state
    null = args._replace(indices=torch.zeros_like(args.indices))
    for config in configs_for("fused", device_arch(state.device), state.dtype, dims.hv, dims.v):
        gdn_fused_decode(null, workspace=workspace, config=config, dims=dims)
