"""The engine benchmark's pure parts: which kernels make up a GDN layer's decode step."""

from __future__ import annotations

from gdn_serve.bench.engine import layer_windows

STEP = [
    ("nvjet_sm90_tst_64x8_64x16_1x1_h_bz_TNT", 11.9),  # in_proj_qkvz
    ("void dot_kernel<float, 128, 0, cublasDotParams<cublasGemv...>>", 2.4),  # in_proj_ba
    ("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>", 0.7),
    ("_causal_conv1d_update_kernel", 2.4),
    ("fused_recurrent_gated_delta_rule_packed_decode_kernel", 4.1),
    ("triton_per_fused_mul_rsqrt_sigmoid_0", 1.5),  # the compiled gated norm
    ("sm90_xmma_gemm_bf16bf16_bf16f32", 6.0),  # out_proj
    ("triton_red_fused_add_rms_norm_1", 2.7),
    ("fused_moe_kernel", 5.5),
]


def test_a_window_runs_from_the_input_to_the_output_projection() -> None:
    windows = layer_windows(STEP + STEP)
    assert [[name for name, _ in w] for w in windows] == [[n for n, _ in STEP[2:6]]] * 2
    assert sum(us for _, us in windows[0]) == 0.7 + 2.4 + 4.1 + 1.5


def test_the_fused_kernel_is_its_own_window_and_prefill_kernels_are_none() -> None:
    fused = [STEP[0], STEP[1], ("FillFunctor", 0.5), ("_gdn_fused_kernel", 6.2), STEP[6]]
    prefill = [STEP[0], ("_causal_conv1d_fwd_kernel", 9.0), ("chunk_gated_delta_rule", 30.0)]
    windows = layer_windows(prefill + fused)
    assert [[n for n, _ in w] for w in windows] == [["FillFunctor", "_gdn_fused_kernel"]]
