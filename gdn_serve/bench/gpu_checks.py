"""Correctness on the GPU, before any timing: our kernels against the float64 reference (the
bar: output within bf16 rounding, fp32 state within 1e-5 relative) and against vLLM's kernels
on the same inputs (reported, for the record)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from gdn_serve.bench.problem import Problem
from gdn_serve.kernels.adapters import flashinfer_decode
from gdn_serve.kernels.launch import LaunchConfig
from gdn_serve.kernels.reference import (
    bound_excess,
    gdn_decode_reference,
    gdn_fused_decode_reference,
)
from gdn_serve.kernels.signature import DecodeArgs, FusedArgs, PackedDecode
from gdn_serve.kernels.triton_decode import gdn_decode
from gdn_serve.kernels.triton_fused import gdn_fused_decode

HALF_BF16_STEP = 2.0**-8  # the GPU rounds fp32 -> bf16 to nearest


def _state_rel(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else HALF_BF16_STEP


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: how far apart two kernels' results are."""
    b64 = b.double()
    return float((a.double() - b64).abs().max() / b64.abs().max().clamp_min(1e-30))


def _decode_with_null_slots(p: Problem, kernel: PackedDecode) -> tuple[DecodeArgs, DecodeArgs]:
    """Run a kernel of the decode contract and the float64 reference on the same inputs, with
    rows 1 and 3 as null slots (0 and -1). Returns (the kernel's args, the reference's): their
    `initial_state` and `out` hold the results."""
    idx = p.indices[0].clone()
    idx[1], idx[3] = 0, -1
    args = p.decode_args(0, pool=p.pool.clone(), out=torch.empty_like(p.out), indices=idx)
    kernel(args)
    q = p.params
    ref = DecodeArgs(
        p.mixed_qkv.double(), p.a_c.double(), p.b_c.double(), q.A_log.double(),
        q.dt_bias.double(), q.scale, p.pool.double(), p.out.double(), idx, True,
    )  # fmt: skip
    gdn_decode_reference(ref)
    return args, ref


def check_decode(p: Problem, vllm: SimpleNamespace | None, config: LaunchConfig) -> dict:
    """Null rows: zeros out, state untouched."""
    ours, ref = _decode_with_null_slots(
        p, functools.partial(gdn_decode, validate=True, config=config)
    )
    ours_pool, ours_out = ours.initial_state, ours.out
    ref_pool, ref_out = ref.initial_state, ref.out
    result = {
        "check": "decode",
        "config": list(vars(config).values()),
        "dtype": str(p.shape.state_dtype),
        "out_excess": bound_excess(ours_out, ref_out, HALF_BF16_STEP, 1e-5),
        "state_excess": bound_excess(ours_pool, ref_pool, _state_rel(p.shape.state_dtype), 1e-6),
        "null_rows_zero": bool(torch.all(ours_out[[1, 3]] == 0)),
        "untouched_equal": bool(torch.equal(ours_pool[0], p.pool[0])),
    }
    if vllm is not None:
        v_pool, v_out = p.pool.clone(), torch.empty_like(p.out)
        vllm.packed_decode(*ours._replace(initial_state=v_pool, out=v_out))
        result |= {"vs_vllm_out": _rel_diff(ours_out, v_out), "vs_vllm_state": _rel_diff(
            ours_pool, v_pool)}  # fmt: skip
    return result


def check_flashinfer_adapter(p: Problem) -> dict:
    """The `flashinfer` backend (our adapter around FlashInfer's kernel) on the decode contract,
    null slots included. FlashInfer's bf16 path reads and writes slot 0 for a null row (vLLM's
    null block, scratch to vLLM), so 'slot0_untouched' is reported, not required."""
    args, ref = _decode_with_null_slots(p, flashinfer_decode)
    idx, pool, out, ref_pool, ref_out = (
        args.ssm_state_indices,
        args.initial_state,
        args.out,
        ref.initial_state,
        ref.out,
    )
    return {
        "check": "flashinfer-adapter",
        "dtype": str(p.shape.state_dtype),
        "out_excess": bound_excess(out, ref_out, HALF_BF16_STEP, 1e-5),
        "state_excess": bound_excess(pool[1:], ref_pool[1:], _state_rel(p.shape.state_dtype), 1e-6),
        "null_rows_zero": bool(torch.all(out[idx <= 0] == 0)),
        "slot0_untouched": int(torch.equal(pool[0], p.pool[0])),  # int: reported, not required
    }


def check_fused(p: Problem, vllm: SimpleNamespace | None, config: LaunchConfig) -> dict:
    """Row 1 is a null slot (vLLM's conv kernel knows only 0 as null)."""
    idx = p.indices[0].clone()
    idx[1] = 0
    conv, pool, out = p.conv_state.clone(), p.pool.clone(), torch.empty_like(p.out_norm)
    gdn_fused_decode(
        p.fused_args(0, conv_state=conv, pool=pool, out=out, indices=idx),
        validate=True, config=config,
    )  # fmt: skip
    ref_conv, ref_pool, ref_out = p.conv_state.double(), p.pool.double(), p.out_norm.double()
    x64, a64, b64, z64 = (t.double() for t in (p.mixed_qkv, p.a, p.b, p.z))
    ref_params = p.params.to(torch.float64)
    gdn_fused_decode_reference(
        FusedArgs(x64, a64, b64, z64, ref_conv, ref_pool, idx, ref_out, ref_params)
    )
    result = {
        "check": "fused",
        "config": list(vars(config).values()),
        "dtype": str(p.shape.state_dtype),
        "out_excess": bound_excess(out, ref_out, HALF_BF16_STEP, 1e-5),
        "state_excess": bound_excess(pool, ref_pool, _state_rel(p.shape.state_dtype), 1e-6),
        "conv_state_equal": bool(torch.equal(conv.double(), ref_conv)),
        "null_rows_zero": bool(torch.all(out[1] == 0)),
    }
    if vllm is not None:
        v_conv, v_pool, v_core = p.conv_state.clone(), p.pool.clone(), torch.zeros_like(out)
        x = vllm.conv_update(
            p.mixed_qkv.clone(), v_conv, p.params.conv_weight, None, "silu",
            conv_state_indices=idx, validate_data=False,
        )  # fmt: skip
        q = p.params
        vllm.packed_decode(
            *p.decode_args(0, pool=v_pool, out=v_core.unsqueeze(1), indices=idx)._replace(
                mixed_qkv=x
            )
        )
        v_out = vllm.rmsnorm_fn(
            v_core, q.norm_weight, None, z=p.z, eps=q.norm_eps, group_size=None,
            norm_before_gate=True, activation="silu",
        )  # fmt: skip
        result |= {"vs_vllm_out": _rel_diff(out, v_out), "vs_vllm_state": _rel_diff(pool, v_pool)}
    return result


def passed(result: dict) -> bool:
    return (
        result["out_excess"] <= 0
        and result["state_excess"] <= 0
        and all(v for k, v in result.items() if isinstance(v, bool))
    )
