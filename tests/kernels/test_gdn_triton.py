"""Our Triton kernels against the float64 reference. On this CPU-only machine they run in
Triton's interpreter, which the suite's root conftest switches on before anything imports
Triton."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from gdn_serve.kernels import triton_decode, triton_fused
from gdn_serve.kernels.launch import LaunchConfig, configs_for
from gdn_serve.kernels.reference import (
    HeadDims,
    gdn_fused_decode_reference,
)
from tests.kernels.cases import (
    BF16_ULP,
    FusedCase,
    assert_within,
    make_decode_case,
    make_fused_case,
)

# Null slots (0 and negative) mixed with real ones; slot 0 is vLLM's null block.
INDICES = [5, 0, 2, -1]
STATE_DTYPES = [torch.float32, torch.bfloat16]


DECODE_MODES = {
    "split-v": lambda dim: LaunchConfig(16, 4),
    "whole-v": lambda dim: LaunchConfig(dim, 4),
}


def _state_bound(dtype: torch.dtype) -> float:
    """fp32 state: 1e-5 relative to float64; bf16 state: one rounding on write."""
    return 1e-5 if dtype == torch.float32 else BF16_ULP


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("mode", list(DECODE_MODES))
def test_decode_matches_float64_reference(
    state_dtype: torch.dtype, group: int, dim: int, mode: str
) -> None:
    case = make_decode_case(INDICES, hk=1, group=group, k=dim, v=dim, state_dtype=state_dtype)
    out, state = case.new_out(torch.bfloat16), case.state.clone()
    config = DECODE_MODES[mode](dim)
    triton_decode.gdn_decode(case.args(state, out, True), config=config)

    out64, state64 = case.ground_truth(True)
    assert_within(out, out64, rel=BF16_ULP, floor=1e-5)
    assert_within(state, state64, rel=_state_bound(state_dtype), floor=1e-6)
    assert torch.equal(state[[0, 1, 3, 4]], case.state[[0, 1, 3, 4]])  # untouched slots
    assert torch.all(out[[1, 3]] == 0)


def test_decode_without_l2norm_and_with_fp32_output() -> None:
    case = make_decode_case([1, 3], hk=2, group=2, k=32, v=32)
    out, state = case.new_out(torch.float32), case.state.clone()
    triton_decode.gdn_decode(case.args(state, out, False), config=LaunchConfig(8, 2))
    out64, state64 = case.ground_truth(False)
    assert_within(out, out64, rel=1e-5, floor=1e-6)
    assert_within(state, state64, rel=1e-5, floor=1e-6)


def test_decode_rejects_repeated_slots_when_validating() -> None:
    case = make_decode_case([2, 2], k=16, v=16)
    with pytest.raises(ValueError, match="repeated slot"):
        triton_decode.gdn_decode(
            case.args(case.state.clone(), case.new_out(torch.bfloat16), True), validate=True
        )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LaunchConfig(12, 1), "block_v"),
        (LaunchConfig(16, 1, per_key_head=True), "fused kernel's modes"),
        (LaunchConfig(16, 1, prefetch=True), "fused kernel's modes"),
    ],
)
def test_decode_rejects_configs_it_cannot_run(config: LaunchConfig, message: str) -> None:
    case = make_decode_case([1], k=16, v=16)
    with pytest.raises(ValueError, match=message):
        triton_decode.gdn_decode(
            case.args(case.state.clone(), case.new_out(torch.bfloat16), True), config=config
        )


def _run_fused(case: FusedCase, config: LaunchConfig, steps: int = 1) -> tuple[torch.Tensor, ...]:
    """`steps` launches of the fused kernel (one workspace) and of the float64 reference.
    Returns kernel out, ssm state, conv state, then the reference's three."""
    core = case.core
    out = torch.empty_like(case.z)
    ssm, conv = core.state.clone(), case.conv_state.clone()
    workspace = triton_fused.FusedWorkspace.allocate(len(core.indices), core.dims, out.device)
    ref = case.as_float64()
    out64, ssm64, conv64 = torch.empty_like(ref.z), ref.core.state.clone(), ref.conv_state.clone()
    for _ in range(steps):
        triton_fused.gdn_fused_decode(case.args(conv, ssm, out), workspace=workspace, config=config)
        gdn_fused_decode_reference(ref.args(conv64, ssm64, out64))
    assert torch.all(workspace.counters == 0)  # reset for the next launch / graph replay
    return out, ssm, conv, out64, ssm64, conv64


def _assert_fused_close(case: FusedCase, result: tuple[torch.Tensor, ...]) -> None:
    out, ssm, conv, out64, ssm64, conv64 = result
    assert_within(out, out64, rel=BF16_ULP, floor=1e-5)
    assert_within(ssm, ssm64, rel=_state_bound(case.core.state.dtype), floor=1e-6)
    torch.testing.assert_close(conv.to(torch.float64), conv64, rtol=0, atol=0)
    null_rows = (case.core.indices <= 0).nonzero().flatten()
    assert torch.all(out[null_rows] == 0)


FUSED_MODES = {
    "split-v": lambda dim: LaunchConfig(16, 4),
    "whole-v": lambda dim: LaunchConfig(dim, 4),
    "per-key-head": lambda dim: LaunchConfig(dim, 4, per_key_head=True),
    "split-v-prefetch": lambda dim: LaunchConfig(16, 4, prefetch=True),
    "per-key-head-prefetch": lambda dim: LaunchConfig(dim, 4, per_key_head=True, prefetch=True),
}


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("mode", list(FUSED_MODES))
def test_fused_matches_float64_reference(
    state_dtype: torch.dtype, group: int, dim: int, mode: str
) -> None:
    case = make_fused_case(INDICES, hk=1, group=group, k=dim, v=dim, state_dtype=state_dtype)
    _assert_fused_close(case, _run_fused(case, FUSED_MODES[mode](dim)))


@pytest.mark.parametrize(
    "options",
    [
        {"dim_first": True},
        {"bias": False, "conv_activation": None},
        {"gate_activation": "sigmoid", "width": 3},
    ],
    ids=["conv-state-dim-first", "no-bias-no-activation", "sigmoid-gate-width-3"],
)
def test_fused_layer_options(options: dict) -> None:
    case = make_fused_case([2, 0, 4], hk=2, group=2, k=32, v=32, **options)
    _assert_fused_close(case, _run_fused(case, LaunchConfig(8, 2)))


def test_fused_two_steps_carry_both_states() -> None:
    case = make_fused_case([3, 1], hk=2, group=2, k=32, v=32)
    _assert_fused_close(case, _run_fused(case, LaunchConfig(16, 4), steps=2))
    _assert_fused_close(case, _run_fused(case, LaunchConfig(32, 2, per_key_head=True), steps=2))


def test_fused_rejects_a_workspace_for_other_heads() -> None:
    case = make_fused_case([1], hk=1, group=2, k=16, v=16)
    core = case.core
    other_heads = HeadDims(hk=1, hv=1, k=16, v=16)
    small = triton_fused.FusedWorkspace.allocate(1, other_heads, torch.device("cpu"))
    with pytest.raises(ValueError, match="workspace"):
        triton_fused.gdn_fused_decode(
            case.args(case.conv_state.clone(), core.state.clone(), torch.empty_like(case.z)),
            workspace=small,
        )


def test_warm_up_launches_every_table_config_on_null_slots_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm-up before CUDA graph capture: each config the launch table can pick for this
    shape runs once; null slots mean zeros out and no state read or written."""
    launched: list[LaunchConfig] = []
    real_decode, real_fused = triton_decode.gdn_decode, triton_fused.gdn_fused_decode

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def run(args: Any, **kw: Any) -> Any:
            launched.append(kw["config"])
            return real(args, **kw)

        return run

    monkeypatch.setattr(triton_decode, "gdn_decode", spy(real_decode))
    monkeypatch.setattr(triton_fused, "gdn_fused_decode", spy(real_fused))
    case = make_decode_case([3, 1], hk=2, group=2, k=16, v=16)
    state, out = case.state.clone(), case.new_out(torch.bfloat16)
    triton_decode.warm_decode(case.args(state, out, True))
    expected = configs_for("decode", "cpu", state.dtype, case.dims.hv, case.dims.v)
    assert launched == list(expected) and len(expected) > 1
    assert torch.equal(state, case.state) and torch.all(out == 0)

    launched.clear()
    fused = make_fused_case([3, 1], hk=2, group=2, k=16, v=16)
    conv, ssm, out = fused.conv_state.clone(), fused.core.state.clone(), torch.ones_like(fused.z)
    workspace = triton_fused.FusedWorkspace.allocate(2, fused.core.dims, out.device)
    triton_fused.warm_fused(fused.args(conv, ssm, out), workspace)
    dims = fused.core.dims
    assert launched == list(configs_for("fused", "cpu", ssm.dtype, dims.hv, dims.v))
    assert torch.equal(conv, fused.conv_state) and torch.equal(ssm, fused.core.state)
    assert torch.all(out == 0) and torch.all(workspace.counters == 0)


def test_a_prepared_kernel_matches_the_checked_call() -> None:
    """What the serving path calls per batch size: checks and config resolved once, same
    result as the fully checked call."""
    case = make_decode_case(INDICES, hk=1, group=2, k=32, v=32)
    prepared = triton_decode.prepare_decode(
        case.args(case.state.clone(), case.new_out(torch.bfloat16), True)
    )
    outs = []
    for kernel in (prepared, triton_decode.gdn_decode):
        state, out = case.state.clone(), case.new_out(torch.bfloat16)
        kernel(case.args(state, out, True))
        outs.append((state, out))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    fused = make_fused_case([2, 0], hk=1, group=2, k=16, v=16)
    workspace = triton_fused.FusedWorkspace.allocate(1, fused.core.dims, torch.device("cpu"))
    with pytest.raises(ValueError, match="workspace too small"):
        triton_fused.prepare_fused(
            fused.args(fused.conv_state, fused.core.state, torch.empty_like(fused.z)), workspace
        )
