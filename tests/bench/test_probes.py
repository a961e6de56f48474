"""The benchmark's state round-trip probe (the floor our decode kernel is held to), through
Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from gdn_serve.bench import probes
from gdn_serve.kernels.launch import LaunchConfig
from tests.kernels.cases import make_decode_case
from tests.kernels.test_gdn_triton import INDICES, STATE_DTYPES


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=["fp32", "bf16"])
def test_state_roundtrip_probe_scales_live_slots_only(state_dtype: torch.dtype) -> None:
    case = make_decode_case(INDICES, hk=1, group=2, k=32, v=32, state_dtype=state_dtype)
    state = case.state.clone()
    probes.state_roundtrip(state, case.indices, 0.5, LaunchConfig(8, 1))
    expected = case.state.clone()
    live = case.indices[case.indices > 0].long()
    expected[live] = (expected[live].float() * 0.5).to(state_dtype)
    assert torch.equal(state, expected)


def test_state_roundtrip_probe_writes_another_pool_when_asked() -> None:
    case = make_decode_case(INDICES, hk=1, group=2, k=32, v=32)
    out = torch.full_like(case.state, 7.0)
    probes.state_roundtrip(case.state, case.indices, 2.0, LaunchConfig(16, 2), out)
    live = case.indices[case.indices > 0].long()
    expected = torch.full_like(case.state, 7.0)
    expected[live] = case.state[live] * 2.0
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="match state"):
        probes.state_roundtrip(case.state, case.indices, 1.0, LaunchConfig(8, 1), out[1:])


def test_state_roundtrip_probe_rejects_fused_kernel_modes() -> None:
    case = make_decode_case([1], k=16, v=16)
    with pytest.raises(ValueError, match="no fused-kernel modes"):
        probes.state_roundtrip(case.state, case.indices, 1.0, LaunchConfig(8, 1, prefetch=True))
