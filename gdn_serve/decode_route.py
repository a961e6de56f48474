"""How one vLLM Gated DeltaNet layer runs its decode step: through the backend the registry
picked for this machine, with a sampled latency measurement per call.

vLLM-free on purpose: the layer class in `vllm_layer` holds a `DecodeRoute`, and everything
deciding here is tested without an engine.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gdn_serve import metrics
from gdn_serve.backends import registry, rules

ENV_SAMPLE_EVERY = "GDN_SERVE_DECODE_SAMPLE_EVERY"
# One call in 64 per layer: a timed call adds two CUDA event records (host clock reads on CPU)
# and one histogram update; at this rate that cost is spread over 64 calls. Not yet measured
# inside a GPU engine.
DEFAULT_SAMPLE_EVERY = 64

# The fused kernel replaces conv + core + gated RMSNorm. vLLM's layer applies its norm inside
# the compiled graph after the (opaque) core op, so no seam exists for the norm; its unfused
# sibling runs instead, and the substitution is logged and counted.
LAYER_SUBSTITUTES: dict[str, tuple[str, str]] = {
    "triton-fused": ("triton", "fused-norm-has-no-seam-in-vllm-layer"),
}

logger = logging.getLogger("vllm.plugins.gdn_serve")


def layer_backend(chosen: str) -> tuple[str, str | None]:
    """(the backend that runs inside vLLM's layer, why it is not `chosen` or None)."""
    if chosen in LAYER_SUBSTITUTES:
        return LAYER_SUBSTITUTES[chosen]
    return chosen, None


def sample_every(env: Mapping[str, str]) -> int:
    """GDN_SERVE_DECODE_SAMPLE_EVERY as a positive int (default 64; 1 times every call)."""
    raw = env.get(ENV_SAMPLE_EVERY, "").strip()
    if not raw:
        return DEFAULT_SAMPLE_EVERY
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_SAMPLE_EVERY} must be a positive integer, got {raw!r}")
    return int(raw)


def transposes_pool(arch: str, backend: str) -> bool:
    """Whether the backend needs vLLM's state pool seen transposed.

    On CPU vLLM stores each slot's state K-major ([K, V]; its CPU path assumes K == V, so the
    pool's shape still reads [slots, HV, V, K]). The `cpu` backend is vLLM's CPU op and reads
    that layout; every other backend follows the GPU contract ([V, K] per slot).
    """
    return arch == "cpu" and backend != "cpu"


@dataclass
class DecodeTimer:
    """Times one call in `every`, on the host clock (CPU) or with CUDA events, read back later
    without waiting for the GPU."""

    every: int
    on_seconds: Callable[[float], None]
    cuda: bool
    calls: int = 0
    _pending: deque[tuple[Any, Any]] = field(default_factory=deque)

    def run(self, call: Callable[[], object]) -> None:
        self.calls += 1
        if self._pending:
            self._collect()
        if self.calls % self.every:
            call()
        elif not self.cuda:
            start = time.perf_counter()
            call()
            self.on_seconds(time.perf_counter() - start)
        elif torch.cuda.is_current_stream_capturing():
            call()  # an event recorded into a CUDA graph would be replayed, not read
        else:
            began, ended = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            began.record()
            call()
            ended.record()
            self._pending.append((began, ended))

    def _collect(self) -> None:
        while self._pending and self._pending[0][1].query():
            start, end = self._pending.popleft()
            self.on_seconds(start.elapsed_time(end) / 1e3)


@dataclass
class DecodeRoute:
    backend: str
    kernel: Callable[..., Any]  # vLLM's packed-decode contract
    transpose_pool: bool
    timer: DecodeTimer

    def decode(
        self,
        mixed_qkv: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        A_log: torch.Tensor,
        dt_bias: torch.Tensor,
        scale: float,
        pool: torch.Tensor,
        out: torch.Tensor,
        indices: torch.Tensor,
        use_qk_l2norm: bool,
    ) -> None:
        """One decode token per sequence into `out` [B, 1, HV, V]; `pool` is vLLM's state."""
        state = pool.transpose(-1, -2) if self.transpose_pool else pool
        self.timer.run(
            lambda: self.kernel(
                mixed_qkv, a, b, A_log, dt_bias, scale, state, out, indices, use_qk_l2norm
            )
        )


@functools.cache
def _choose(arch: str, state_dtype: str, head_dims: tuple[int, int], model: str) -> str | None:
    """The backend for every layer of this shape in this process (None: vLLM's own path);
    published once."""
    if state_dtype not in rules.STATE_DTYPES and registry.requested_backend() == rules.AUTO:
        # vLLM also offers a float16 state; none of our kernels is built for it. A forced
        # backend gets the verifier's error from select_backend instead.
        logger.warning("GDN decode stays on vLLM's path: state dtype %s", state_dtype)
        metrics.record(
            metrics.FALLBACKS, 1, chosen=rules.AUTO, backend="vllm-path", arch=arch, model=model,
            reason=f"state dtype {state_dtype}",
        )  # fmt: skip
        return None
    resolution = registry.select_backend(state_dtype=state_dtype, head_dims=head_dims, arch=arch)
    backend, substituted = layer_backend(resolution.active)
    if substituted:
        logger.warning(
            "GDN decode backend %s cannot run inside vLLM's layer (%s): running %s",
            resolution.active,
            substituted,
            backend,
        )
        metrics.record(
            metrics.FALLBACKS, 1, chosen=resolution.active, backend=backend, arch=arch,
            model=model, reason=substituted,
        )  # fmt: skip
    metrics.record(
        metrics.BACKEND_INFO, 1, backend=backend, requested=resolution.requested, arch=arch,
        model=model, state_dtype=state_dtype,
    )  # fmt: skip
    return backend


def build_route(
    *,
    state_dtype: str,
    head_dims: tuple[int, int],
    model: str,
    arch: str | None = None,
) -> DecodeRoute | None:
    """Resolve the backend for this machine (GDN_SERVE_BACKEND may force one: a forced backend
    that cannot run here raises ValueError saying why), load it, and publish the choice.
    None: no backend of ours takes this state dtype, the layer keeps vLLM's path."""
    where = arch or registry.local_arch()
    backend = _choose(where, state_dtype, head_dims, model)
    if backend is None:
        return None

    def on_seconds(seconds: float) -> None:
        metrics.record(metrics.DECODE_SECONDS, seconds, backend=backend, arch=where, model=model)

    return DecodeRoute(
        backend=backend,
        kernel=registry.BACKENDS[backend].load(),
        transpose_pool=transposes_pool(where, backend),
        timer=DecodeTimer(sample_every(os.environ), on_seconds, cuda=where != "cpu"),
    )
