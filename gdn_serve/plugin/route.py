"""How one vLLM Gated DeltaNet layer runs its decode step: through the backend the registry
picked for this machine, prepared once per batch size, warmed before CUDA graphs are captured,
timed (`timing`), and counted on the device when diagnostics ask for it.

vLLM-free on purpose: the layer class in `layer` holds a `DecodeRoute`, and everything
deciding here is tested without an engine.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gdn_serve import envs, metrics
from gdn_serve.backends import registry, rules
from gdn_serve.kernels.signature import DecodeArgs, FusedArgs
from gdn_serve.plugin.timing import DecodeTimer, GraphTimings, batch_bucket, capturing

logger = logging.getLogger("vllm.plugins.gdn_serve")


@dataclass(frozen=True)
class LayerFacts:
    """What the layer tells the route about itself, read once at construction."""

    state_dtype: str
    head_dims: tuple[int, int]  # K, V
    model: str
    fusable: bool  # vLLM's norm-inside-the-core-op path exists for this layer (Qwen3.5, bf16)
    max_batch: int  # the largest decode batch vLLM can hand the layer (workspace size)


def transposes_pool(arch: str, backend: str) -> bool:
    """Whether the backend needs vLLM's state pool seen transposed.

    On CPU vLLM stores each slot's state K-major ([K, V]; its CPU path assumes K == V, so the
    pool's shape still reads [slots, HV, V, K]). The `cpu` backend is vLLM's CPU op and reads
    that layout; every other backend follows the GPU contract ([V, K] per slot).
    """
    return arch == "cpu" and backend != "cpu"


@dataclass
class DecodeCounter:
    """Decode calls counted on the device (diagnostics, `envs.COUNT_DECODES`): an add captured
    into each CUDA graph counts every replay too, where no Python of ours runs."""

    routed: torch.Tensor  # plain decode batches this route ran
    other: torch.Tensor  # prefill, mixed and speculative batches left to vLLM

    @staticmethod
    def on(device: torch.device) -> DecodeCounter:
        return DecodeCounter(*(torch.zeros((), dtype=torch.int64, device=device) for _ in "ro"))

    def read(self) -> tuple[int, int]:
        return int(self.routed), int(self.other)


@dataclass
class DecodeRoute:
    backend: str
    loaded: registry.Loaded
    transpose_pool: bool
    timer: DecodeTimer
    max_batch: int
    counting: bool = False
    counter: DecodeCounter | None = None
    workspace: Any = None  # the fused kernel's, allocated with the warm-up (outside capture)
    # A fused route's unfused partner: it takes the decode batches above `fused_max_batch`
    # (where the fused kernel is slower, docs/benchmarks.md), with vLLM's gated norm after it.
    partner: registry.Loaded | None = None
    fused_max_batch: int = 0
    _prepared: dict[tuple[bool, int], Callable[[Any], object]] = field(default_factory=dict)
    _warmed: bool = False

    @property
    def fused(self) -> bool:
        return self.loaded.fused

    def fuses(self, batch: int) -> bool:
        """Whether a plain decode batch of this size runs the fused kernel (the whole step)."""
        return self.fused and fused_takes(batch, self.partner is not None, self.fused_max_batch)

    def decode(self, args: DecodeArgs) -> None:
        """One decode token per sequence into `args.out`; `args.initial_state` is vLLM's pool.
        A fused route runs its partner here (the batches `fuses` leaves to it)."""
        if self.transpose_pool:
            args = args._replace(initial_state=args.initial_state.transpose(-1, -2))
        kernel = self.partner if self.fused else self.loaded
        if kernel is None:
            raise RuntimeError(f"{self.backend} runs the whole layer step: use decode_fused")
        self._run(args, len(args.out), kernel)

    def decode_fused(self, args: FusedArgs) -> None:
        """The whole layer step (conv, delta rule, gated norm) into `args.out`."""
        self._run(args, len(args.out), self.loaded)

    def warm(self, args: DecodeArgs | FusedArgs, partner_args: DecodeArgs | None = None) -> None:
        """Compile and load every launch config of the kernel (and the partner's, on
        `partner_args`) on these (dummy) inputs, with null slots only; must run outside a
        capture (vLLM's profile run calls it)."""
        if self._warmed or capturing():
            return
        self._warmed = True
        if self.fused:
            self._ensure_workspace(args)
        if self.loaded.warm is not None:
            self.loaded.warm(*self._with_workspace(args, self.loaded))
        if self.partner is not None and self.partner.warm is not None and partner_args:
            self.partner.warm(partner_args)
        if self.timer.graphs is not None and self.timer.every:
            self.timer.graphs.prepare()
        self._device_counter(args)

    def count_other(self, device: torch.device) -> None:
        """A batch vLLM's own path runs (diagnostics only)."""
        counter = self._device_counter_on(device)
        if counter is not None:
            counter.other.add_(1)

    def poll(self) -> None:
        """Read finished latency samples (called from eager calls of the layer)."""
        self.timer.poll()

    def counts(self) -> tuple[int, int] | None:
        """(routed, other) decode calls counted on the device, or None when not counting."""
        return None if self.counter is None else self.counter.read()

    def _run(self, args: Any, batch: int, loaded: registry.Loaded) -> None:
        kernel = self._prepared.get((loaded.fused, batch))
        if kernel is None:
            if loaded.fused:
                self._ensure_workspace(args)
            kernel = loaded.prepare(*self._with_workspace(args, loaded))
            self._prepared[loaded.fused, batch] = kernel
        self.timer.run(lambda: kernel(args), batch)
        counter = self._device_counter(args)
        if counter is not None:
            counter.routed.add_(1)

    def _with_workspace(self, args: Any, loaded: registry.Loaded) -> tuple[Any, ...]:
        return (args, self.workspace) if loaded.fused else (args,)

    def _ensure_workspace(self, args: Any) -> None:
        if not self.fused or self.workspace is not None:
            return
        if capturing():
            raise RuntimeError("the fused kernel's workspace must be allocated before capture")
        from gdn_serve.kernels.reference import HeadDims

        dims = HeadDims.infer(args.mixed_qkv.shape[-1], args.ssm_state)
        largest = self.max_batch  # the largest batch the fused kernel can get
        if self.partner is not None:
            largest = max(min(largest, self.fused_max_batch), 1)
        self.workspace = shared_workspace(largest, dims, args.out.device)

    def _device_counter(self, args: Any) -> DecodeCounter | None:
        return self._device_counter_on(args.out.device)

    def _device_counter_on(self, device: torch.device) -> DecodeCounter | None:
        if self.counting and self.counter is None and not capturing():
            self.counter = DecodeCounter.on(device)
        return self.counter


@functools.cache
def shared_workspace(max_batch: int, dims: Any, device: torch.device) -> Any:
    """One fused-kernel workspace per shape and device: every layer's launch runs on one stream
    after the previous one, and the kernel leaves the arrival counters at zero, so layers can
    share it (instead of ~8 MB per layer at max batch 512)."""
    from gdn_serve.kernels.triton_fused import FusedWorkspace

    return FusedWorkspace.allocate(max_batch, dims, device)


@functools.cache
def _choose(
    arch: str, state_dtype: str, head_dims: tuple[int, int], model: str, fusable: bool
) -> str | None:
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
    backend, substituted = rules.layer_backend(resolution.active, fusable)
    if substituted:
        logger.warning(
            "GDN decode backend %s cannot run inside this layer (%s): running %s",
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


# A fused backend's unfused partner for large batches: the same Triton decode kernel family
# (same requirements), and the plain kernel is faster than the fused one from B = 32 on.
FUSED_PARTNER = "triton"


def fused_takes(batch: int, has_partner: bool, fused_max_batch: int) -> bool:
    """Whether a fused backend runs its own kernel on a plain decode batch of this size (the
    one rule: the route's choice and the latency label both follow it)."""
    return not has_partner or batch <= fused_max_batch


def kernel_that_runs(backend: str, partner: str | None, fused_max_batch: int, batch: int) -> str:
    """The backend whose kernel a plain decode batch of this size runs (the latency label)."""
    if partner is None or fused_takes(batch, True, fused_max_batch):
        return backend
    return partner


# The first route built in a process is the one timed inside CUDA graphs: one layer's kernel is
# a sample of all (they run the same kernel on the same shapes), at two event nodes per replay.
_graph_timed: list[str] = []


def build_route(facts: LayerFacts, arch: str | None = None) -> DecodeRoute | None:
    """Resolve the backend for this machine (`envs.BACKEND` may force one: a forced backend
    that cannot run here raises ValueError saying why), load it, and publish the choice.
    None: no backend of ours takes this state dtype, the layer keeps vLLM's path."""
    where = arch or registry.local_arch()
    backend = _choose(where, facts.state_dtype, facts.head_dims, facts.model, facts.fusable)
    if backend is None:
        return None

    partner = FUSED_PARTNER if registry.BACKENDS[backend].fused else None
    fused_max_batch = envs.nonnegative_int(envs.FUSED_MAX_BATCH)

    def on_seconds(seconds: float, batch: int) -> None:
        ran = kernel_that_runs(backend, partner, fused_max_batch, batch)
        metrics.record(
            metrics.DECODE_SECONDS, seconds, backend=ran, arch=where, model=facts.model,
            batch=batch_bucket(batch),
        )  # fmt: skip

    cuda = where != "cpu"
    graphs = GraphTimings(on_seconds) if cuda and not _graph_timed else None
    if graphs is not None:
        _graph_timed.append(facts.model)
    every = envs.nonnegative_int(envs.DECODE_SAMPLE_EVERY)
    return DecodeRoute(
        backend=backend,
        loaded=registry.BACKENDS[backend].load(),
        transpose_pool=transposes_pool(where, backend),
        timer=DecodeTimer(every, on_seconds, cuda=cuda, graphs=graphs),
        max_batch=facts.max_batch,
        counting=envs.COUNT_DECODES.get() == "1",
        partner=None if partner is None else registry.BACKENDS[partner].load(),
        fused_max_batch=fused_max_batch,
    )
