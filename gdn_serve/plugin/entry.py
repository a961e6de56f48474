"""Our vLLM plugin's entry point (`vllm.general_plugins`), called once in every vLLM process
(API server, engine core, each worker). It changes vLLM only on the one version it was written
and tested against; on any other it leaves vLLM alone and says so loudly.

What it applies, once per process:
- `layer.RoutedGatedDeltaNet` in place of vLLM's Qwen GDN layer, so its decode step runs the
  backend `gdn_serve.backends` picks for this machine, timed into `gdn_serve.metrics`;
- on CPU, the two fixes in `cpu_fixes` (vLLM's CPU GDN op calls a module function, not a layer
  method, so plain decode batches reach the layer through a wrapper; and one-token prompts no
  longer crash vLLM 0.32's CPU prefill).
Everything vLLM-specific is imported inside the functions: vLLM imports this module by name
before it has set itself up.
"""

from __future__ import annotations

import logging

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
        from gdn_serve.plugin import cpu_fixes

        fixes["cpu-prefill-strides"] = cpu_fixes.fix_single_token_prefill
        fixes["cpu-decode-seam"] = cpu_fixes.route_decode
    for name, apply in fixes.items():
        if name not in _applied:
            apply()
            _applied.add(name)


def _register_layer() -> None:
    from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import (
        QwenGatedDeltaNetAttention,
    )

    from gdn_serve.plugin.layer import RoutedGatedDeltaNet

    # Registered under vLLM's class name (vLLM asserts on a second registration: `_applied`
    # guards it within a process).
    QwenGatedDeltaNetAttention.register_oot(RoutedGatedDeltaNet)
    logger.info("gdn_serve: GDN decode routed through gdn_serve.backends")
