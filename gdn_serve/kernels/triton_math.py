"""Triton device functions shared by our decode kernels (the math of one GDN decode step)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_qk(row_ptr, i_h, HK: tl.constexpr, K: tl.constexpr, L2NORM: tl.constexpr, scale):
    """q and k of key head i_h from a packed row [q(HK*K) | k(HK*K) | v]; L2-normalised like
    vLLM (x / sqrt(sum x^2 + 1e-6)), q scaled afterwards."""
    o_k = tl.arange(0, K)
    q = tl.load(row_ptr + i_h * K + o_k).to(tl.float32)
    k = tl.load(row_ptr + HK * K + i_h * K + o_k).to(tl.float32)
    return normalize_qk(q, k, L2NORM, scale)


@triton.jit
def normalize_qk(q, k, L2NORM: tl.constexpr, scale):
    if L2NORM:
        q = q / tl.sqrt(tl.sum(q * q) + 1e-6)
        k = k / tl.sqrt(tl.sum(k * k) + 1e-6)
    return q * scale, k


@triton.jit
def gate_params(a_ptr, b_ptr, A_log_ptr, dt_bias_ptr, i_hv):
    """decay = exp(-exp(A_log) * softplus(a + dt_bias)) (softplus linear above 20), beta =
    sigmoid(b), for one (sequence, value head); a_ptr/b_ptr point at the sequence's row."""
    x = tl.load(a_ptr + i_hv).to(tl.float32) + tl.load(dt_bias_ptr + i_hv).to(tl.float32)
    softplus = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)
    decay = tl.exp(-tl.exp(tl.load(A_log_ptr + i_hv).to(tl.float32)) * softplus)
    beta = tl.sigmoid(tl.load(b_ptr + i_hv).to(tl.float32))
    return decay, beta


@triton.jit
def delta_rule_step(h, q, k, v, decay, beta):
    """h [BV, K] (rows of S^T: state layout [V, K]) in fp32: decay, delta update, readout.
    Returns the new h and o = S^T q for these BV rows."""
    h = h * decay
    v_new = (v - tl.sum(h * k[None, :], 1)) * beta
    h = h + v_new[:, None] * k[None, :]
    return h, tl.sum(h * q[None, :], 1)
