"""Triton device functions shared by our decode kernels (the math of one GDN decode step)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_qk(row_ptr, i_h, HK: tl.constexpr, K: tl.constexpr):
    """Raw q and k of key head i_h from a packed row [q(HK*K) | k(HK*K) | v], in float32."""
    o_k = tl.arange(0, K)
    q = tl.load(row_ptr + i_h * K + o_k).to(tl.float32)
    k = tl.load(row_ptr + HK * K + i_h * K + o_k).to(tl.float32)
    return q, k


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
def delta_rule_step(h, q, k, v, decay, beta, L2NORM: tl.constexpr, scale):
    """One decode step on h [BV, K] (rows of S^T: state layout [V, K]) in float32, from raw q, k
    (L2-normalised here like vLLM, x / sqrt(sum x^2 + 1e-6), q then scaled).

    Returns the new h and o = S_new^T q for these BV rows. Written so that every reduction
    reads only the inputs and the old h: with k^ = k/|k|, q^ = scale*q/|q|,
        v_new = beta * (v - decay * (h.k^)),  o = decay * (h.q^) + v_new * (k^.q^),
    the five sums (h.k, h.q, k.q, |k|^2, |q|^2) are independent and overlap, where the
    textbook order (normalise, then h.k, update, then h_new.q) chains three rounds of warp
    reductions; at small batch that chain is a visible part of the step."""
    hk = tl.sum(h * k[None, :], 1)
    hq = tl.sum(h * q[None, :], 1)
    kq = tl.sum(k * q)
    if L2NORM:
        rk = 1.0 / tl.sqrt(tl.sum(k * k) + 1e-6)
        rq = scale / tl.sqrt(tl.sum(q * q) + 1e-6)
    else:
        rk = 1.0
        rq = scale
    v_new = (v - decay * rk * hk) * beta
    o = decay * rq * hq + v_new * (kq * rk * rq)
    h = h * decay + v_new[:, None] * (k * rk)[None, :]
    return h, o
