"""The vLLM plugin: the one-token CPU prefill fix on vLLM's real C++ kernel, and the version
gate. (A one-token prompt through the whole stack is in tests/e2e.)"""

from __future__ import annotations

import logging

import pytest
import torch

from gdn_serve.plugin import cpu_fixes, entry

DIM, WIDTH = 256, 4


def _conv(x: torch.Tensor) -> torch.Tensor:
    import vllm._custom_ops as ops

    torch.manual_seed(0)
    return ops.causal_conv1d_fwd_cpu(
        x=x,
        weight=torch.randn(DIM, WIDTH, dtype=torch.bfloat16),
        bias=None,
        conv_states=torch.zeros(2, DIM, WIDTH - 1, dtype=torch.bfloat16),
        query_start_loc=torch.tensor([0, x.size(1)], dtype=torch.int32),
        cache_indices=torch.tensor([1], dtype=torch.int32),
        has_initial_state=torch.tensor([False]),
        silu_activation=True,
        is_weight_packed=False,
    )


def _one_token_as_vllm_slices_it() -> torch.Tensor:
    """A [dim, 1] view whose token stride is not dim, as vLLM's projection split yields."""
    buffer = torch.randn(4 * DIM, dtype=torch.bfloat16)
    return torch.as_strided(buffer, (DIM, 1), (1, 3 * DIM))


@pytest.mark.skipif(
    not cpu_fixes.uses_cpp_conv(),
    reason="this CPU has no bf16 dot products: vLLM's build for it has no C++ causal conv, the "
    "kernel the one-token fix is for (vLLM runs a torch conv here)",
)
def test_vllm_kernel_rejects_the_layout_and_the_fix_gives_the_same_result() -> None:
    x = _one_token_as_vllm_slices_it()
    with pytest.raises(RuntimeError, match="expect x to be transposed"):
        _conv(x)
    fixed = cpu_fixes.tokens_transposed(x)
    assert fixed.stride() == (1, DIM)
    # The same values laid out as [1, dim] row-major, built without the fix.
    reference = _conv(x.flatten().clone().view(1, DIM).transpose(0, 1))
    assert torch.equal(_conv(fixed), reference)


def test_a_well_laid_out_input_is_passed_through_without_a_copy() -> None:
    x = torch.randn(3, DIM, dtype=torch.bfloat16).transpose(0, 1)
    assert cpu_fixes.tokens_transposed(x) is x


def test_other_vllm_versions_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import vllm
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    before = gdn_attention._causal_conv1d_fwd_cpu
    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    monkeypatch.setattr(entry, "_applied", set())
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.gdn_serve"):
        entry.register()
    assert gdn_attention._causal_conv1d_fwd_cpu is before
    assert "found 0.33.0" in caplog.text


def test_the_plugin_is_registered_with_vllm() -> None:
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "gdn_serve"]
    assert plugin.load() is entry.register
