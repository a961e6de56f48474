"""The planning step: (spec, GPU inventory) -> which archs serve the model, and how.

Pure. For every arch group the deployment may use, the planner picks the smallest tensor parallel
size (GPUs per replica) that divides the model's head counts, fits on one node, and leaves room for
the weights plus the KV cache of one full-length request and the GDN state; then replicas, expert
parallelism and the GDN decode backend (resolved by `gdn_serve.backends.rules`, the same rules the
serving runtime uses). An arch that cannot serve the model is left out with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gdn_operator.inventory import ArchGroup, Inventory
from gdn_operator.sizing import ModelNeeds, model_needs
from gdn_operator.spec import ArchOverride, DeploymentSpec
from gdn_serve.backends.rules import Resolution, resolve_backend

GIB = 1024**3
MIB = 1024**2
# vLLM's default share of GPU memory for weights + KV cache.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Inside that share, what is neither weights nor KV cache: CUDA context, the activation peak of a
# max-size batch and CUDA graphs. vLLM's memory profiler lands around 1-1.5 GiB on Qwen3.5 shapes.
RUNTIME_RESERVE_BYTES = int(1.5 * GIB)
# Without a config there is no KV size per token; keep this share of usable memory for KV cache.
KV_SHARE_WITHOUT_CONFIG = 0.10


@dataclass(frozen=True)
class ArchPlan:
    arch: str
    product: str
    nodes: int
    gpus_per_node: int
    gpu_memory_mib: int
    tensor_parallel_size: int
    expert_parallel: bool
    min_replicas: int
    max_replicas: int
    capacity: int  # replicas the arch's GPUs can hold at this TP
    backend: Resolution
    engine_args: Mapping[str, Any]  # this arch's engine arguments, on top of the spec's
    bytes_per_gpu: int  # what one GPU of a replica needs


@dataclass(frozen=True)
class ExcludedArch:
    arch: str
    product: str
    nodes: int
    gpus_per_node: int
    gpu_memory_mib: int
    reason: str


@dataclass(frozen=True)
class Plan:
    archs: tuple[ArchPlan, ...]
    excluded: tuple[ExcludedArch, ...]
    needs: ModelNeeds

    def problem(self) -> str | None:
        """Why nothing can be deployed, or None when at least one arch serves the model."""
        if self.archs:
            return None
        if not self.excluded:
            return (
                "no schedulable GPU nodes match this deployment (GPU Feature Discovery labels,"
                " nvidia.com/gpu allocatable, nodeSelector and tolerations)"
            )
        reasons = "; ".join(f"{e.arch}: {e.reason}" for e in self.excluded)
        return f"no GPU arch can serve the model: {reasons}"


class _Excluded(Exception):
    """Internal: this arch is left out, for the reason given."""


def plan_deployment(spec: DeploymentSpec, inventory: Inventory) -> Plan:
    needs = model_needs(spec)
    planned: list[ArchPlan] = []
    excluded: list[ExcludedArch] = []
    for arch, group in inventory.groups(spec.node_selector, spec.tolerations).items():
        try:
            planned.append(_plan_arch(spec, needs, group, spec.override(arch)))
        except _Excluded as why:
            excluded.append(
                ExcludedArch(
                    arch,
                    group.products,
                    len(group.nodes),
                    group.max_gpus_per_node,
                    group.memory_mib,
                    str(why),
                )
            )
    return Plan(tuple(planned), tuple(excluded), needs)


def _plan_arch(
    spec: DeploymentSpec, needs: ModelNeeds, group: ArchGroup, override: ArchOverride
) -> ArchPlan:
    if override.exclude:
        raise _Excluded(f"excluded by spec.archs[{group.arch}].exclude")
    usable = _usable_bytes_per_gpu(group, {**spec.engine_args, **override.engine_args})
    tp = _tensor_parallel_size(needs, group, usable, override.tensor_parallel_size)
    capacity = group.replica_capacity(tp)
    min_replicas = _first_set(override.min_replicas, spec.min_replicas)
    max_replicas = _first_set(override.max_replicas, spec.max_replicas, max(capacity, 1))
    if min_replicas > max_replicas:
        raise _Excluded(f"minReplicas {min_replicas} > maxReplicas {max_replicas}")
    expert_parallel = _expert_parallel(spec.model.expert_parallel, needs.moe, tp)
    engine_args = dict(override.engine_args)
    if expert_parallel:
        engine_args["enable_expert_parallel"] = True
    return ArchPlan(
        arch=group.arch,
        product=group.products,
        nodes=len(group.nodes),
        gpus_per_node=group.max_gpus_per_node,
        gpu_memory_mib=group.memory_mib,
        tensor_parallel_size=tp,
        expert_parallel=expert_parallel,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        capacity=capacity,
        backend=_backend(spec, needs, group.arch, override),
        engine_args=engine_args,
        bytes_per_gpu=_bytes_per_gpu(needs, tp, usable),
    )


def _first_set(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def _usable_bytes_per_gpu(group: ArchGroup, engine_args: Mapping[str, Any]) -> int:
    utilization = float(engine_args.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    return int(group.memory_mib * MIB * utilization) - RUNTIME_RESERVE_BYTES


def _tensor_parallel_size(
    needs: ModelNeeds, group: ArchGroup, usable: int, forced: int | None
) -> int:
    if forced is not None:
        problem = _tp_problem(needs, group, forced) or _fit_problem(needs, forced, usable)
        if problem:
            raise _Excluded(f"tensorParallelSize {forced} from spec.archs: {problem}")
        return forced
    valid = [t for t in range(1, group.max_gpus_per_node + 1) if not _tp_problem(needs, group, t)]
    for tp in valid:
        if not _fit_problem(needs, tp, usable):
            return tp
    # t=1 always divides, so `valid` is never empty; report the widest split that was allowed.
    raise _Excluded(
        f"does not fit at any tensor parallel size: {_fit_problem(needs, valid[-1], usable)}"
    )


def _tp_problem(needs: ModelNeeds, group: ArchGroup, tp: int) -> str | None:
    if tp > group.max_gpus_per_node:
        return (
            f"needs {tp} GPUs on one node, the largest {group.arch} node has"
            f" {group.max_gpus_per_node}"
        )
    for name, count in needs.divisible_heads.items():
        if count % tp:
            return f"does not divide {name}={count}"
    kv = needs.kv_heads
    if kv and tp % kv and kv % tp:
        return f"neither divides nor is a multiple of num_key_value_heads={kv}"
    return None


def _bytes_per_gpu(needs: ModelNeeds, tp: int, usable: int) -> int:
    weights = math.ceil(needs.weight_bytes / tp)
    return weights + _cache_bytes_per_gpu(needs, tp, usable)


def _cache_bytes_per_gpu(needs: ModelNeeds, tp: int, usable: int) -> int:
    """KV cache of one max-length request plus its GDN state, on one GPU of a TP group."""
    if needs.kv_bytes_per_token is None or needs.kv_heads is None or needs.max_model_len is None:
        return int(KV_SHARE_WITHOUT_CONFIG * usable)
    # KV heads split across the TP ranks; with more ranks than heads each rank keeps one head.
    heads_per_gpu = math.ceil(needs.kv_heads / tp)
    kv = needs.kv_bytes_per_token * needs.max_model_len * heads_per_gpu // needs.kv_heads
    return kv + math.ceil(needs.state_bytes_per_seq / tp)


def _fit_problem(needs: ModelNeeds, tp: int, usable: int) -> str | None:
    need = _bytes_per_gpu(needs, tp, usable)
    if need <= usable:
        return None
    weights = math.ceil(needs.weight_bytes / tp)
    return (
        f"at TP={tp} each GPU needs {_gib(need)} (weights {_gib(weights)} + KV cache/state"
        f" {_gib(need - weights)}) but has {_gib(usable)} usable"
    )


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _expert_parallel(setting: str, moe: bool, tp: int) -> bool:
    if setting == "Enabled":
        return moe
    return setting == "Auto" and moe and tp > 1


def _backend(
    spec: DeploymentSpec, needs: ModelNeeds, arch: str, override: ArchOverride
) -> Resolution:
    requested = override.gdn_backend or spec.gdn_backend
    try:
        return resolve_backend(
            arch, requested, state_dtype=spec.gdn_state_dtype, head_dims=needs.linear_head_dims
        )
    except ValueError as exc:
        raise _Excluded(str(exc)) from exc
