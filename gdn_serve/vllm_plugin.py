"""Our vLLM plugin: the `vllm.general_plugins` entry point, called once in every vLLM process
(API server, engine core, each worker). It changes vLLM only on the one version it was written
and tested against; on any other it leaves vLLM alone and says so loudly.

What it does:
- registers `vllm_layer.RoutedGatedDeltaNet` in place of vLLM's Qwen GDN layer, so its decode
  step runs the backend `gdn_serve.backends` picks for this machine, timed into
  `gdn_serve.metrics`. On a GPU the layer's own decode method is the seam; on CPU vLLM's GDN
  custom op calls a module function, which gets a thin wrapper that hands plain decode batches
  to the layer;
- fixes a crash of vLLM 0.32's CPU Gated DeltaNet prefill on one-token prompts (below).
"""

from __future__ import annotations

import logging
from typing import Any

SUPPORTED_VLLM = "0.32.0"
# Under "vllm." so that the lines show up in vLLM's own log output.
logger = logging.getLogger("vllm.plugins.gdn_serve")
_applied: set[str] = set()


def register() -> None:
    """Entry point: apply each fix once per process, on the supported vLLM only."""
    import vllm

    from gdn_serve import metrics

    if metrics.in_ray():
        # Before vLLM spawns its engine: on CPU its processes are not Ray processes and
        # report through this relay (see gdn_serve.metrics).
        metrics.start_relay()
    supported = vllm.__version__ == SUPPORTED_VLLM
    metrics.record(
        metrics.PLUGIN_INFO, int(supported), vllm_version=vllm.__version__,
        supported=str(supported).lower(),
    )  # fmt: skip
    if not supported:
        logger.warning(
            "gdn_serve vLLM plugin supports vLLM %s only; found %s: leaving vLLM unchanged",
            SUPPORTED_VLLM,
            vllm.__version__,
        )
        return
    from vllm.platforms import current_platform

    fixes = {"gdn-layer": _register_layer}
    if current_platform.is_cpu():
        fixes["cpu-prefill-strides"] = _fix_cpu_single_token_prefill
        fixes["cpu-decode-seam"] = _route_cpu_decode
    for name, apply in fixes.items():
        if name not in _applied:
            apply()
            _applied.add(name)


def _register_layer() -> None:
    from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import (
        QwenGatedDeltaNetAttention,
    )

    from gdn_serve.vllm_layer import RoutedGatedDeltaNet

    # Registered under vLLM's class name (vLLM asserts on a second registration: `_applied`
    # guards it within a process).
    QwenGatedDeltaNetAttention.register_oot(RoutedGatedDeltaNet)
    logger.info("gdn_serve: GDN decode routed through gdn_serve.backends")


def _route_cpu_decode() -> None:
    import torch
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    if not (torch.cpu._is_avx512_bf16_supported() or gdn_attention.is_arm_bf16()):
        # vLLM then runs its torch conv on unpacked weights; our layer routes only next to
        # vLLM's C++ conv, so decode stays entirely on vLLM's path here.
        logger.warning("gdn_serve: this CPU lacks bf16 dot products: GDN decode stays on vLLM")
        return
    original = gdn_attention._cpu_gdn_attention_nonspec

    def cpu_gdn_attention_nonspec(
        layer: Any, attn_metadata_i: Any, mixed_qkv: Any, b: Any, a: Any, core_attn_out: Any
    ) -> None:
        route = getattr(layer, "decode_on_cpu", None)
        if route is None or not route(attn_metadata_i, mixed_qkv, b, a, core_attn_out):
            original(layer, attn_metadata_i, mixed_qkv, b, a, core_attn_out)

    gdn_attention._cpu_gdn_attention_nonspec = cpu_gdn_attention_nonspec


def tokens_transposed(x: Any) -> Any:
    """`x` as a [dim, tokens] view of a row-major [tokens, dim] buffer, copying only if needed.

    vLLM's C++ `causal_conv1d_fwd_cpu` requires exactly that layout (stride (1, dim)). vLLM
    passes a transposed slice of the projection output; with one token that slice's row stride
    can be anything (a size-1 dimension has no meaningful stride, so `.contiguous()` keeps it),
    the check fails, and the engine dies: any one-token prompt took the server down.
    """
    import torch

    if x.stride(0) == 1 and x.stride(1) == x.size(0):
        return x
    rows = torch.empty((x.size(1), x.size(0)), dtype=x.dtype, device=x.device)
    rows.copy_(x.transpose(0, 1))
    return rows.transpose(0, 1)


def _fix_cpu_single_token_prefill() -> None:
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    original = gdn_attention._causal_conv1d_fwd_cpu

    def causal_conv1d_fwd_cpu(*, x: Any, **kwargs: Any) -> Any:
        return original(x=tokens_transposed(x), **kwargs)

    gdn_attention._causal_conv1d_fwd_cpu = causal_conv1d_fwd_cpu
    logger.info("gdn_serve: fixed vLLM %s CPU GDN prefill of one-token prompts", SUPPORTED_VLLM)
