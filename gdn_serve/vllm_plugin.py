"""Our vLLM plugin: the `vllm.general_plugins` entry point, called once in every vLLM process
(API server, engine core, each worker). It changes vLLM only on the one version it was written
and tested against; on any other it leaves vLLM alone and says so loudly.

What it does today: fixes a crash of vLLM 0.32's CPU Gated DeltaNet prefill on one-token
prompts (below). Routing vLLM's GDN decode to `gdn_serve.backends` hooks in here next.
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

    if vllm.__version__ != SUPPORTED_VLLM:
        logger.warning(
            "gdn_serve vLLM plugin supports vLLM %s only; found %s: leaving vLLM unchanged",
            SUPPORTED_VLLM,
            vllm.__version__,
        )
        return
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and "cpu-prefill-strides" not in _applied:
        _fix_cpu_single_token_prefill()
        _applied.add("cpu-prefill-strides")


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
