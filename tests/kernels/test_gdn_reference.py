"""The reference (the spec) against an independent naive loop, and its slot semantics."""

from __future__ import annotations

import pytest
import torch

from gdn_serve.kernels.reference import (
    gdn_decode_reference,
    gdn_fused_decode_reference,
)
from tests.kernels.cases import (
    BF16_ULP,
    DecodeCase,
    assert_within,
    make_decode_case,
    make_fused_case,
)
from tests.kernels.gdn_naive import naive_conv, naive_gated_rms_norm, naive_head_step


def _naive_decode(case: DecodeCase, l2norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop over sequences and heads with naive_head_step; float64 results (out, pool)."""
    d = case.dims
    pool = case.state.to(torch.float64).clone()
    out = torch.zeros(len(case.indices), d.hv, d.v, dtype=torch.float64)
    x = case.mixed_qkv.to(torch.float64)
    for n, slot in enumerate(case.indices.tolist()):
        if slot <= 0:
            continue
        for h in range(d.hv):
            kh = h // (d.hv // d.hk)
            q = x[n, kh * d.k : (kh + 1) * d.k].tolist()
            k = x[n, (d.hk + kh) * d.k : (d.hk + kh + 1) * d.k].tolist()
            v0 = 2 * d.hk * d.k + h * d.v
            v = x[n, v0 : v0 + d.v].tolist()
            new, o = naive_head_step(
                pool[slot, h].tolist(), q, k, v, float(case.a[n, h]), float(case.b[n, h]),
                float(case.A_log[h]), float(case.dt_bias[h]), case.scale, l2norm,
            )  # fmt: skip
            pool[slot, h] = torch.tensor(new, dtype=torch.float64)
            out[n, h] = torch.tensor(o, dtype=torch.float64)
    return out, pool


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("l2norm", [True, False])
def test_reference_float64_equals_naive_loop(group: int, l2norm: bool) -> None:
    case = make_decode_case([4, 0, 1, -1, 2], group=group, k=8, v=16).as_float64()
    out = case.new_out(torch.float64)
    state = case.state.clone()
    gdn_decode_reference(case.args(state, out, l2norm))
    want_out, want_state = _naive_decode(case, l2norm)
    torch.testing.assert_close(out[:, 0], want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, want_state, rtol=1e-12, atol=1e-12)


def test_float32_mode_is_within_rounding_of_float64() -> None:
    case = make_decode_case([3, 1], group=2, k=32, v=32)
    out32, state32 = case.new_out(torch.float32), case.state.clone()
    gdn_decode_reference(case.args(state32, out32, True))
    out64, state64 = case.ground_truth(True)
    assert_within(out32, out64, rel=1e-5, floor=1e-6)
    assert_within(state32, state64, rel=1e-5, floor=1e-6)


def test_bf16_state_is_rounded_on_write_only() -> None:
    case = make_decode_case([2, 5], state_dtype=torch.bfloat16)
    out, state = case.new_out(torch.float32), case.state.clone()
    gdn_decode_reference(case.args(state, out, True))
    out64, state64 = case.ground_truth(True)
    assert state.dtype == torch.bfloat16
    assert_within(state, state64, rel=BF16_ULP, floor=1e-6)
    # the output is read from the float32 state before it is rounded (as vLLM does)
    assert_within(out, out64, rel=1e-5, floor=1e-6)


def test_null_slots_write_zeros_and_touch_no_state() -> None:
    case = make_decode_case([0, 3, -1], slots=5)
    out, state = case.new_out(torch.float32), case.state.clone()
    gdn_decode_reference(case.args(state, out, True))
    assert torch.all(out[[0, 2]] == 0)
    assert torch.all(out[1] != 0)
    untouched = [0, 1, 2, 4]
    assert torch.equal(state[untouched], case.state[untouched])
    assert not torch.equal(state[3], case.state[3])


@pytest.mark.parametrize(
    ("indices", "message"), [([2, 2], "repeated slot"), ([1, 9], "outside a pool")]
)
def test_invalid_slot_indices_are_rejected(indices: list[int], message: str) -> None:
    case = make_decode_case(indices, slots=6)
    with pytest.raises(ValueError, match=message):
        gdn_decode_reference(case.args(case.state.clone(), case.new_out(torch.float32), True))


@pytest.mark.parametrize("sigmoid_gate", [False, True])
def test_fused_reference_float64_equals_naive_conv_decode_norm(sigmoid_gate: bool) -> None:
    case = make_fused_case(
        [3, 0, 1], gate_activation="sigmoid" if sigmoid_gate else "silu", k=8, v=8
    ).as_float64()
    core, p = case.core, case.params
    conv_state = case.conv_state.clone()
    ssm_state = core.state.clone()
    out = torch.empty_like(case.z)
    gdn_fused_decode_reference(case.args(conv_state, ssm_state, out))

    # naive: conv each channel, then the decode loop on the conv output, then the norm
    assert p.conv_bias is not None
    conv_out = torch.zeros_like(core.mixed_qkv)
    for n, slot in enumerate(core.indices.tolist()):
        if slot <= 0:
            continue
        for c in range(conv_out.shape[1]):
            window = [*case.conv_state[slot, c].tolist(), float(core.mixed_qkv[n, c])]
            conv_out[n, c] = naive_conv(
                window, p.conv_weight[c].tolist(), float(p.conv_bias[c]), silu=True
            )
    decoded = DecodeCase(**{**vars(core), "mixed_qkv": conv_out})
    want_core, want_state = _naive_decode(decoded, l2norm=True)
    for n, slot in enumerate(core.indices.tolist()):
        for h in range(core.dims.hv):
            want = [0.0] * core.dims.v
            if slot > 0:
                want = naive_gated_rms_norm(
                    want_core[n, h].tolist(), case.z[n, h].tolist(), p.norm_weight.tolist(),
                    p.norm_eps, sigmoid_gate,
                )  # fmt: skip
            torch.testing.assert_close(out[n, h], torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(ssm_state, want_state, rtol=1e-12, atol=1e-12)
    shifted = torch.cat([case.conv_state[3, :, 1:], core.mixed_qkv[0, :, None]], dim=-1)
    assert torch.equal(conv_state[3], shifted)
    assert torch.equal(conv_state[[0, 2, 4, 5]], case.conv_state[[0, 2, 4, 5]])
