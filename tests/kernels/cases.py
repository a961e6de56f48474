"""Random GDN decode inputs at small shapes, and the tolerance checks the kernel tests share."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from gdn_serve.kernels.reference import (
    FusedLayerParams,
    HeadDims,
    bound_excess,
    gdn_decode_reference,
)
from gdn_serve.kernels.signature import DecodeArgs, FusedArgs

# One bf16 step, relative to the value (7 stored mantissa bits). The bound for "within bf16
# rounding" is a full step, not half: Triton's interpreter truncates fp32 -> bf16 where the GPU
# rounds to nearest.
BF16_ULP = 2.0**-7


@dataclass(frozen=True)
class DecodeCase:
    dims: HeadDims
    mixed_qkv: torch.Tensor  # [B, 2*HK*K + HV*V]
    a: torch.Tensor
    b: torch.Tensor
    A_log: torch.Tensor
    dt_bias: torch.Tensor
    state: torch.Tensor  # [slots, HV, V, K]
    indices: torch.Tensor
    scale: float

    def as_float64(self) -> DecodeCase:
        def f64(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float64)

        return replace(
            self,
            mixed_qkv=f64(self.mixed_qkv),
            a=f64(self.a),
            b=f64(self.b),
            A_log=f64(self.A_log),
            dt_bias=f64(self.dt_bias),
            state=f64(self.state),
        )

    def args(self, state: torch.Tensor, out: torch.Tensor, l2norm: bool) -> DecodeArgs:
        """The decode contract's arguments for this case, into `state` and `out`."""
        return DecodeArgs(
            self.mixed_qkv,
            self.a,
            self.b,
            self.A_log,
            self.dt_bias,
            self.scale,
            state,
            out,
            self.indices,
            l2norm,
        )

    def new_out(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((self.a.shape[0], 1, self.dims.hv, self.dims.v), 7.0, dtype=dtype)

    def ground_truth(self, l2norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, updated state) of the reference in float64 on this case's inputs."""
        c64 = self.as_float64()
        out, state = c64.new_out(torch.float64), c64.state.clone()
        gdn_decode_reference(c64.args(state, out, l2norm))
        return out, state


def make_decode_case(
    indices: list[int],
    *,
    hk: int = 2,
    group: int = 2,
    k: int = 16,
    v: int = 16,
    slots: int = 6,
    state_dtype: torch.dtype = torch.float32,
    act_dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> DecodeCase:
    gen = torch.Generator().manual_seed(seed)
    dims = HeadDims(hk=hk, hv=hk * group, k=k, v=v)
    batch = len(indices)

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    return DecodeCase(
        dims=dims,
        mixed_qkv=randn(batch, 2 * hk * k + dims.hv * v).to(act_dtype),
        a=randn(batch, dims.hv).to(act_dtype),
        b=randn(batch, dims.hv).to(act_dtype),
        A_log=randn(dims.hv, std=0.5),
        dt_bias=randn(dims.hv, std=0.5),
        state=randn(slots, dims.hv, v, k, std=0.3).to(state_dtype),
        indices=torch.tensor(indices, dtype=torch.int32),
        scale=k**-0.5,
    )


@dataclass(frozen=True)
class FusedCase:
    core: DecodeCase  # mixed_qkv here is the pre-conv projection
    z: torch.Tensor  # [B, HV, V]
    conv_state: torch.Tensor  # [slots, dim, W-1], possibly a transposed view
    params: FusedLayerParams

    def args(
        self, conv_state: torch.Tensor, ssm_state: torch.Tensor, out: torch.Tensor
    ) -> FusedArgs:
        """The fused contract's arguments for this case, into the given states and output."""
        c = self.core
        return FusedArgs(
            c.mixed_qkv, c.a, c.b, self.z, conv_state, ssm_state, c.indices, out, self.params
        )

    def as_float64(self) -> FusedCase:
        return FusedCase(
            core=self.core.as_float64(),
            z=self.z.to(torch.float64),
            conv_state=self.conv_state.to(torch.float64),
            params=self.params.to(torch.float64),
        )


def make_fused_case(
    indices: list[int],
    *,
    width: int = 4,
    dim_first: bool = False,
    bias: bool = True,
    gate_activation: str = "silu",
    conv_activation: str | None = "silu",
    **decode_kwargs: object,
) -> FusedCase:
    """vLLM's default conv state layout is (state_len, dim) per slot, seen through a transposed
    view as [slots, dim, W-1]; `dim_first` gives the other (DS) layout."""
    core = make_decode_case(indices, **decode_kwargs)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(1)
    act = core.mixed_qkv.dtype
    slots, dim = core.state.shape[0], core.mixed_qkv.shape[1]
    stored = torch.randn(slots, width - 1, dim, generator=gen).to(act)
    conv_state = stored.transpose(1, 2).contiguous() if dim_first else stored.transpose(1, 2)
    params = FusedLayerParams(
        conv_weight=(torch.randn(dim, width, generator=gen) * 0.5).to(act),
        conv_bias=(torch.randn(dim, generator=gen) * 0.1).to(act) if bias else None,
        A_log=core.A_log,
        dt_bias=core.dt_bias,
        norm_weight=1.0 + 0.1 * torch.randn(core.dims.v, generator=gen),
        scale=core.scale,
        gate_activation=gate_activation,
        conv_activation=conv_activation,
    )
    z = torch.randn(len(indices), core.dims.hv, core.dims.v, generator=gen).to(act)
    return FusedCase(core=core, z=z, conv_state=conv_state, params=params)


def assert_within(actual: torch.Tensor, expected: torch.Tensor, rel: float, floor: float) -> None:
    """Elementwise |actual - expected| <= rel * |expected| + floor * max|expected|."""
    excess = bound_excess(actual, expected, rel, floor)
    worst = float((actual.double() - expected.double()).abs().max())
    assert excess <= 0, f"max error {worst:.3g} exceeds the bound by {excess:.3g}"
