"""The executable spec of the GDN decode step, in plain PyTorch.

Two entry points, both with vLLM 0.32's contract and semantics:

* `gdn_decode_reference`: the recurrent core as `fused_recurrent_gated_delta_rule_packed_decode`
  takes it (packed conv output `mixed_qkv`, raw `a`/`b`, state pool `[slots, HV, V, K]` updated
  in place through per-sequence slot indices).
* `gdn_fused_decode_reference`: the whole decode core of a GDN layer, i.e. vLLM's sequence
  `causal_conv1d_update` -> packed decode -> `RMSNormGated(norm_before_gate=True)`.

Precision: with a float32 (or bf16) state the math runs in float32 and rounds where vLLM's
kernels round (inputs as given, conv output to the activation dtype, state to its dtype on
write). Hand in float64 tensors (state, out, activations) and nothing is rounded: that is the
ground truth the kernels are tested against.

Slot semantics (vLLM's): an index <= 0 is a null slot; its output row is zeros and no state is
touched. Valid indices must be distinct and inside the pool: two sequences updating one slot in
place have no defined result, so the reference rejects them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from gdn_serve.kernels.signature import DecodeArgs, FusedArgs

SOFTPLUS_THRESHOLD = 20.0  # vLLM's: softplus(x) = x above it
L2NORM_EPS = 1e-6  # vLLM's packed decode: x / sqrt(sum(x^2) + eps)


@dataclass(frozen=True)
class HeadDims:
    """Head geometry read off the packed input and the state pool."""

    hk: int  # key heads
    hv: int  # value heads (a multiple of hk: GQA grouping)
    k: int
    v: int

    @staticmethod
    def infer(qkv_dim: int, state: torch.Tensor) -> HeadDims:
        hv, v, k = state.shape[-3:]
        qk_dim = qkv_dim - hv * v
        if qk_dim <= 0 or qk_dim % (2 * k) != 0:
            raise ValueError(f"packed width {qkv_dim} does not fit HV={hv}, V={v}, K={k}")
        hk = qk_dim // (2 * k)
        if hv % hk != 0:
            raise ValueError(f"HV={hv} is not a multiple of HK={hk}")
        return HeadDims(hk=hk, hv=hv, k=k, v=v)


def bound_excess(actual: torch.Tensor, expected: torch.Tensor, rel: float, floor: float) -> float:
    """How far `actual` strays outside |actual - expected| <= rel*|expected| + floor*max|expected|
    at its worst element; <= 0 means within the bound (the check tests and GPU runs share)."""
    exp = expected.to(torch.float64)
    err = (actual.to(torch.float64) - exp).abs()
    return float((err - rel * exp.abs() - floor * exp.abs().max()).max())


def compute_dtype_for(state: torch.Tensor) -> torch.dtype:
    """float64 when handed a float64 state (ground truth), else float32 like vLLM's kernels."""
    return torch.float64 if state.dtype == torch.float64 else torch.float32


def active_rows(indices: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Batch rows with a real slot; rejects repeated or out-of-pool slots (undefined in place)."""
    if indices.ndim != 1:
        raise ValueError(f"slot indices must be 1-D, got shape {tuple(indices.shape)}")
    rows = torch.nonzero(indices > 0).flatten()
    slots = indices[rows]
    if slots.numel() and int(slots.max()) >= num_slots:
        raise ValueError(f"slot index {int(slots.max())} outside a pool of {num_slots} slots")
    if torch.unique(slots).numel() != slots.numel():
        raise ValueError("repeated slot index: two sequences cannot update one state in place")
    return rows


def split_packed(mixed_qkv: torch.Tensor, dims: HeadDims) -> tuple[torch.Tensor, ...]:
    """[B, 2*HK*K + HV*V] -> q, k as [B, HV, K] (key heads repeated per group), v as [B, HV, V]."""
    q, k, v = torch.split(mixed_qkv, [dims.hk * dims.k, dims.hk * dims.k, dims.hv * dims.v], -1)
    group = dims.hv // dims.hk
    q = q.unflatten(-1, (dims.hk, dims.k)).repeat_interleave(group, dim=-2)
    k = k.unflatten(-1, (dims.hk, dims.k)).repeat_interleave(group, dim=-2)
    return q, k, v.unflatten(-1, (dims.hv, dims.v))


def gating(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sequence, value head): decay exp(g) with g = -exp(A_log) * softplus(a + dt_bias),
    and beta = sigmoid(b). Inputs already in the compute dtype."""
    x = a + dt_bias
    softplus = torch.where(x <= SOFTPLUS_THRESHOLD, torch.log1p(torch.exp(x)), x)
    g = -torch.exp(A_log) * softplus
    return torch.exp(g), torch.sigmoid(b)


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def gdn_decode_reference(args: DecodeArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token per sequence; same arguments and return as vLLM's packed decode.

    `initial_state` [slots, HV, V, K] is updated in place; `out` [B, 1, HV, V] is written.
    """
    mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out, ssm_state_indices, l2norm = args
    dims = HeadDims.infer(mixed_qkv.shape[-1], initial_state)
    if out.shape != (mixed_qkv.shape[0], 1, dims.hv, dims.v):
        raise ValueError(f"out must be [B, 1, HV, V], got {tuple(out.shape)}")
    cdt = compute_dtype_for(initial_state)
    rows = active_rows(ssm_state_indices, initial_state.shape[0])
    out.zero_()
    if rows.numel() == 0:
        return out, initial_state
    slots = ssm_state_indices[rows].long()
    q, k, v = (t.to(cdt) for t in split_packed(mixed_qkv[rows], dims))
    if l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = q * scale
    decay, beta = gating(a[rows].to(cdt), b[rows].to(cdt), A_log.to(cdt), dt_bias.to(cdt))
    h = initial_state[slots].to(cdt) * decay[..., None, None]  # [n, HV, V, K]
    delta = beta[..., None] * (v - torch.einsum("nhvk,nhk->nhv", h, k))
    h = h + delta[..., :, None] * k[..., None, :]
    out[rows, 0] = torch.einsum("nhvk,nhk->nhv", h, q).to(out.dtype)
    initial_state[slots] = h.to(initial_state.dtype)
    return out, initial_state


def conv_update_reference(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    indices: torch.Tensor,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """`causal_conv1d_update` for one token per sequence.

    x [B, dim]; conv_state [slots, dim, W-1] (any strides: vLLM's default layout is a transposed
    view); weight [dim, W]. The window is the state's W-1 columns followed by x; the state is
    shifted left by one with x appended. Rows with a null slot are returned as zeros (their
    output is discarded downstream). Float32 compute rounds the output to the state dtype, as
    vLLM's kernel stores it there.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"conv activation must be None, 'silu' or 'swish', got {activation!r}")
    rows = active_rows(indices, conv_state.shape[0])
    y = torch.zeros(x.shape, dtype=compute_dtype, device=x.device)
    if rows.numel() == 0:
        return y
    slots = indices[rows].long()
    old = conv_state[slots]  # [n, dim, W-1]
    xs = x[rows].to(conv_state.dtype if compute_dtype != torch.float64 else torch.float64)
    window = torch.cat([old.to(compute_dtype), xs.to(compute_dtype)[..., None]], dim=-1)
    acc = (window * weight.to(compute_dtype)).sum(-1)
    if bias is not None:
        acc = acc + bias.to(compute_dtype)
    if activation is not None:
        acc = F.silu(acc)
    if compute_dtype != torch.float64:
        acc = acc.to(conv_state.dtype).to(x.dtype).to(compute_dtype)
    y[rows] = acc
    conv_state[slots] = torch.cat([old[..., 1:], xs.to(conv_state.dtype)[..., None]], dim=-1)
    return y


def rms_norm_gated_reference(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, activation: str
) -> torch.Tensor:
    """`RMSNormGated(group_size=None, norm_before_gate=True)`: rms_norm(x) * weight * act(z),
    over the last dim, in the dtype of x (float32 math for lower precisions)."""
    if activation not in ("silu", "swish", "sigmoid"):
        raise ValueError(f"gate activation must be 'silu' or 'sigmoid', got {activation!r}")
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, zf = x.to(cdt), z.to(cdt)
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cdt)
    gate = torch.sigmoid(zf) if activation == "sigmoid" else F.silu(zf)
    return normed * gate


@dataclass(frozen=True)
class FusedLayerParams:
    """The per-layer constants of a GDN decode step (weights and options)."""

    conv_weight: torch.Tensor  # [conv_dim, W]
    conv_bias: torch.Tensor | None  # [conv_dim]
    A_log: torch.Tensor  # [HV]
    dt_bias: torch.Tensor  # [HV]
    norm_weight: torch.Tensor  # [V]
    scale: float
    norm_eps: float = 1e-6
    conv_activation: str | None = "silu"
    gate_activation: str = "silu"
    use_qk_l2norm: bool = True

    def to(self, dtype: torch.dtype) -> FusedLayerParams:
        """The same layer with its tensors in `dtype` (float64: the ground truth's inputs)."""
        bias = None if self.conv_bias is None else self.conv_bias.to(dtype)
        return replace(
            self,
            conv_weight=self.conv_weight.to(dtype),
            conv_bias=bias,
            A_log=self.A_log.to(dtype),
            dt_bias=self.dt_bias.to(dtype),
            norm_weight=self.norm_weight.to(dtype),
        )


def gdn_fused_decode_reference(args: FusedArgs) -> torch.Tensor:
    """The GDN decode core of one layer: conv update, gating, delta rule, gated RMSNorm.

    mixed_qkv [B, conv_dim] is the pre-conv projection; z [B, HV, V] the output gate; out
    [B, HV, V] receives the normalised, gated output (zeros for null slots). Both state pools are
    updated in place.
    """
    mixed_qkv, a, b, z, conv_state, ssm_state, indices, out, params = args
    cdt = compute_dtype_for(ssm_state)
    conv_out = conv_update_reference(
        mixed_qkv,
        conv_state,
        params.conv_weight,
        params.conv_bias,
        params.conv_activation,
        indices,
        cdt,
    )
    core = torch.empty(out.shape[0], 1, *out.shape[1:], dtype=cdt, device=out.device)
    gdn_decode_reference(
        DecodeArgs(
            conv_out, a, b, params.A_log, params.dt_bias, params.scale, ssm_state, core, indices,
            params.use_qk_l2norm,
        )
    )  # fmt: skip
    if cdt != torch.float64:
        core = core.to(out.dtype)  # vLLM hands the core output to the norm in the model dtype
    normed = rms_norm_gated_reference(
        core[:, 0], z, params.norm_weight, params.norm_eps, params.gate_activation
    )
    out.copy_(normed.to(out.dtype))
    return out
