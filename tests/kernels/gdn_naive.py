"""An independent, deliberately naive GDN decode step: Python floats and explicit loops, written
from the math (docs/kernels.md), sharing no code with gdn_serve.kernels.reference. Small shapes
only."""

from __future__ import annotations

import math

Matrix = list[list[float]]


def _l2(x: list[float]) -> list[float]:
    norm = math.sqrt(sum(t * t for t in x) + 1e-6)
    return [t / norm for t in x]


def _softplus(x: float) -> float:
    return x if x > 20.0 else math.log(1.0 + math.exp(x))


def naive_head_step(
    state: Matrix,  # [V][K]
    q: list[float],
    k: list[float],
    v: list[float],
    a: float,
    b: float,
    a_log: float,
    dt_bias: float,
    scale: float,
    l2norm: bool,
) -> tuple[Matrix, list[float]]:
    """One (sequence, value head): returns the new state [V][K] and the output [V]."""
    if l2norm:
        q, k = _l2(q), _l2(k)
    q = [t * scale for t in q]
    decay = math.exp(-math.exp(a_log) * _softplus(a + dt_bias))
    beta = 1.0 / (1.0 + math.exp(-b))
    new_state, out = [], []
    for row, v_i in zip(state, v, strict=True):
        row = [decay * s for s in row]
        predicted = sum(s * kk for s, kk in zip(row, k, strict=True))
        delta = beta * (v_i - predicted)
        row = [s + delta * kk for s, kk in zip(row, k, strict=True)]
        new_state.append(row)
        out.append(sum(s * qq for s, qq in zip(row, q, strict=True)))
    return new_state, out


def naive_conv(window: list[float], weights: list[float], bias: float, silu: bool) -> float:
    """One channel of a causal depthwise conv over [state..., x]."""
    acc = bias + sum(w * x for w, x in zip(weights, window, strict=True))
    return acc / (1.0 + math.exp(-acc)) if silu else acc


def naive_gated_rms_norm(
    x: list[float], z: list[float], weight: list[float], eps: float, sigmoid_gate: bool
) -> list[float]:
    rms = math.sqrt(sum(t * t for t in x) / len(x) + eps)
    out = []
    for xi, zi, wi in zip(x, z, weight, strict=True):
        gate = 1.0 / (1.0 + math.exp(-zi))
        out.append(xi / rms * wi * (gate if sigmoid_gate else zi * gate))
    return out
