"""The planning step: (spec, node inventory) -> which archs serve the model, and how.

Pure. For every arch group the deployment may use, the planner picks the smallest tensor parallel
size (GPUs per replica) that divides the model's head counts, fits on one node, and leaves room for
the weights plus the KV cache of one full-length request and the GDN state, and whose worker Pod
(CPU and memory per GPU times the GPUs) fits a node's allocatable; then replicas, expert
parallelism and the GDN decode backend (resolved by `gdn_serve.backends.rules`, the same rules the
serving runtime uses, including which kernel runs inside vLLM's layer). An arch that cannot serve
the model is left out with the reason; one that serves it with less than the spec asked (replica
bounds, capacity) says so in `ArchPlan.note`.

A spec that lists `cpu` in `archs` is planned on CPU nodes instead, as one `cpu` arch: one vLLM
CPU engine per worker Pod, whose memory must hold the weights, the KV cache the spec gives the
engine and the engine itself. Nothing else ever plans on CPU: a GPU model on a cluster without
GPUs stays unplanned, with a reason that says how to opt in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gdn_operator.api.crd import DEFAULT_CPU_KV_CACHE_BYTES
from gdn_operator.api.spec import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    ArchOverride,
    DeploymentSpec,
)
from gdn_operator.plan.inventory import ArchGroup, CpuNode, Inventory
from gdn_operator.plan.sizing import ModelNeeds, model_needs
from gdn_serve.backends.rules import CPU_ARCH, Resolution, layer_backend, resolve_backend

GIB = 1024**3
MIB = 1024**2
# Inside that share, what is neither weights nor KV cache: CUDA context, the activation peak of a
# max-size batch and CUDA graphs. vLLM's memory profiler lands around 1-1.5 GiB on Qwen3.5 shapes.
RUNTIME_RESERVE_BYTES = int(1.5 * GIB)
# Without a config there is no KV size per token; keep this share of usable memory for KV cache.
KV_SHARE_WITHOUT_CONFIG = 0.10
# What a CPU worker Pod holds besides weights and KV cache: the vLLM CPU engine (torch, its
# compiled kernels; ~3.3 GiB RSS with the 6 MB tiny model on the local stack), Ray's raylet and
# worker processes and the Serve replica (together ~6.5 GiB locally, with the head's share).
CPU_RUNTIME_RESERVE_BYTES = 4 * GIB
CPU_PRODUCT = "x86-64 CPU"
# vLLM's CPU GDN kernels refuse anything else (at the first request, not at start).
CPU_MODEL_DTYPE = "bfloat16"


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
    note: str = ""  # what the spec asked that the plan could not give, and what it gave instead


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
    on_cpu: bool = False  # planned on CPU nodes (the spec lists `cpu`)

    def problem(self) -> str | None:
        """Why nothing can be deployed, or None when at least one arch serves the model."""
        if self.archs:
            return None
        reasons = "; ".join(f"{e.arch}: {e.reason}" for e in self.excluded)
        if self.on_cpu:
            return f"CPU nodes cannot serve the model: {reasons}" if reasons else NO_CPU_NODES
        return f"no GPU arch can serve the model: {reasons}" if reasons else NO_GPU_NODES

    def notes(self) -> str:
        """What the plan could not give as asked, per arch ('' when everything is as asked)."""
        return "; ".join(f"{a.arch}: {a.note}" for a in self.archs if a.note)


NO_GPU_NODES = (
    "no schedulable GPU nodes match this deployment (GPU Feature Discovery labels,"
    " nvidia.com/gpu allocatable, nodeSelector and tolerations); to run on CPU nodes instead,"
    f" list arch {CPU_ARCH} in spec.archs (the CPU serving image; docs/operator.md)"
)
NO_CPU_NODES = (
    "no schedulable CPU nodes match this deployment (Ready x86-64 nodes without GPU Feature"
    " Discovery labels, nodeSelector and tolerations)"
)


class _Excluded(Exception):
    """Internal: this arch is left out, for the reason given."""


def plan_deployment(spec: DeploymentSpec, inventory: Inventory) -> Plan:
    needs = model_needs(spec)
    if spec.on_cpu:
        return _plan_on_cpu(spec, needs, inventory)
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
    tp = _tensor_parallel_size(spec, needs, group, usable, override.tensor_parallel_size)
    cpu, memory = _worker_pod(spec, tp)
    capacity = group.replica_capacity(tp, cpu, memory)
    min_replicas, max_replicas, note = _replicas(spec, override, group.arch, capacity, tp)
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
        note=note,
    )


def _plan_on_cpu(spec: DeploymentSpec, needs: ModelNeeds, inventory: Inventory) -> Plan:
    nodes = inventory.cpu_candidates(spec.node_selector, spec.tolerations)
    if not nodes:
        return Plan((), (), needs, on_cpu=True)
    try:
        return Plan((_plan_cpu_arch(spec, needs, nodes),), (), needs, on_cpu=True)
    except _Excluded as why:
        excluded = ExcludedArch(CPU_ARCH, CPU_PRODUCT, len(nodes), 0, 0, str(why))
        return Plan((), (excluded,), needs, on_cpu=True)


def _plan_cpu_arch(spec: DeploymentSpec, needs: ModelNeeds, nodes: tuple[CpuNode, ...]) -> ArchPlan:
    override = spec.override(CPU_ARCH)
    if spec.model.dtype != CPU_MODEL_DTYPE:
        raise _Excluded(
            f"vLLM's CPU GDN kernels need a {CPU_MODEL_DTYPE} model (model.dtype is"
            f" {spec.model.dtype})"
        )
    engine_args = {**spec.engine_args, **override.engine_args}
    kv_bytes = int(engine_args.get("kv_cache_memory_bytes", DEFAULT_CPU_KV_CACHE_BYTES))
    problem = _cpu_kv_problem(needs, kv_bytes) or _cpu_pod_problem(spec, needs, kv_bytes)
    if problem:
        raise _Excluded(problem)
    pod = spec.cpu_worker_resources
    capacity = sum(n.pods_that_fit(pod.cpu_cores, Decimal(pod.memory_bytes)) for n in nodes)
    if capacity == 0:
        raise _Excluded(_cpu_node_problem(spec, nodes))
    min_replicas, max_replicas, note = _replicas(spec, override, CPU_ARCH, capacity, 1)
    return ArchPlan(
        arch=CPU_ARCH,
        product=CPU_PRODUCT,
        nodes=len(nodes),
        gpus_per_node=0,
        gpu_memory_mib=0,
        tensor_parallel_size=1,
        expert_parallel=False,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        capacity=capacity,
        backend=_backend(spec, needs, CPU_ARCH, override),
        # Always explicit: without it vLLM's CPU worker sizes the cache from the node's free
        # memory, which is not the Pod's limit.
        engine_args={**override.engine_args, "kv_cache_memory_bytes": kv_bytes},
        bytes_per_gpu=needs.weight_bytes + kv_bytes,
        note=note,
    )


def _cpu_kv_problem(needs: ModelNeeds, kv_bytes: int) -> str | None:
    """vLLM refuses to start when its KV cache cannot hold one request of max_model_len."""
    if needs.kv_bytes_per_token is None or needs.max_model_len is None:
        return None
    one_request = needs.kv_bytes_per_token * needs.max_model_len + needs.state_bytes_per_seq
    if kv_bytes >= one_request:
        return None
    return (
        f"engineArgs.kv_cache_memory_bytes {kv_bytes} holds less than one request of"
        f" {needs.max_model_len} tokens ({one_request} bytes of KV cache and GDN state):"
        " raise it or lower model.maxModelLen"
    )


def _cpu_pod_problem(spec: DeploymentSpec, needs: ModelNeeds, kv_bytes: int) -> str | None:
    memory = spec.cpu_worker_resources.memory_bytes
    need = needs.weight_bytes + kv_bytes + CPU_RUNTIME_RESERVE_BYTES
    if need <= memory:
        return None
    return (
        f"a CPU worker needs {_gib(need)} (weights {_gib(needs.weight_bytes)} + KV cache"
        f" {_gib(kv_bytes)} + engine {_gib(CPU_RUNTIME_RESERVE_BYTES)}) but"
        f" spec.resources.cpuWorker.memory is {spec.cpu_worker_resources.memory}"
    )


def _cpu_node_problem(spec: DeploymentSpec, nodes: tuple[CpuNode, ...]) -> str:
    pod = spec.cpu_worker_resources
    cpu = max((n.cpu for n in nodes if n.cpu is not None), default=Decimal(0))
    memory = max((n.memory_bytes for n in nodes if n.memory_bytes is not None), default=0)
    return (
        f"a CPU worker asks {pod.cpu} CPU and {pod.memory} memory (spec.resources.cpuWorker);"
        f" no CPU node has that allocatable (the largest have {cpu:f} CPU,"
        f" {_gib(int(memory))} memory)"
    )


def _replicas(
    spec: DeploymentSpec, override: ArchOverride, arch: str, capacity: int, tp: int
) -> tuple[int, int, str]:
    """(min, max, note). The minimum the spec asks (the arch's own, else the one the scale
    subresource sets) never exceeds the maximum: the maximum wins, and the note says so, so that
    a scale request never drops an arch silently."""
    if override.min_replicas is not None:
        asked, asked_from = override.min_replicas, f"spec.archs[{arch}].minReplicas"
    else:
        asked, asked_from = spec.min_replicas, "spec.autoscaling.minReplicas"
    if override.max_replicas is not None:
        most, most_from = override.max_replicas, f"spec.archs[{arch}].maxReplicas"
    elif spec.max_replicas is not None:
        most, most_from = spec.max_replicas, "spec.autoscaling.maxReplicas"
    else:
        most, most_from = max(capacity, 1), "what its nodes hold"
    notes = []
    least = asked
    if asked > most:
        least = most
        notes.append(
            f"minReplicas {asked} ({asked_from}) is above maxReplicas {most} ({most_from}):"
            f" planned {most}"
        )
    if least > capacity:
        notes.append(
            f"{least} replicas at TP={tp} are more than its nodes hold now ({capacity}):"
            " the rest stay Pending until nodes are added"
        )
    return least, most, "; ".join(notes)


def _worker_pod(spec: DeploymentSpec, tp: int) -> tuple[Decimal, Decimal]:
    """(CPU cores, memory bytes) one worker Pod asks for at this tensor parallel size."""
    per_gpu = spec.worker_resources_per_gpu
    return per_gpu.cpu_cores * tp, Decimal(per_gpu.memory_bytes) * tp


def _usable_bytes_per_gpu(group: ArchGroup, engine_args: Mapping[str, Any]) -> int:
    utilization = float(engine_args.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    return int(group.memory_mib * MIB * utilization) - RUNTIME_RESERVE_BYTES


def _tensor_parallel_size(
    spec: DeploymentSpec, needs: ModelNeeds, group: ArchGroup, usable: int, forced: int | None
) -> int:
    if forced is not None:
        problem = (
            _tp_problem(needs, group, forced)
            or _fit_problem(needs, forced, usable)
            or _node_problem(spec, group, forced)
        )
        if problem:
            raise _Excluded(f"tensorParallelSize {forced} from spec.archs: {problem}")
        return forced
    valid = [t for t in range(1, group.max_gpus_per_node + 1) if not _tp_problem(needs, group, t)]
    pod_problem = None
    for tp in valid:
        if _fit_problem(needs, tp, usable):
            continue
        pod_problem = _node_problem(spec, group, tp)
        if pod_problem is None:
            return tp
    if pod_problem is not None:
        raise _Excluded(pod_problem)
    # t=1 always divides, so `valid` is never empty; report the widest split that was allowed.
    raise _Excluded(
        f"does not fit at any tensor parallel size: {_fit_problem(needs, valid[-1], usable)}"
    )


def _node_problem(spec: DeploymentSpec, group: ArchGroup, tp: int) -> str | None:
    """Why no node of the arch can hold one worker Pod at this TP (CPU, memory), or None."""
    cpu, memory = _worker_pod(spec, tp)
    if group.replica_capacity(tp, cpu, memory) > 0:
        return None
    short = []
    if group.max_cpu is not None and group.max_cpu < cpu:
        short.append(f"CPU (largest node has {group.max_cpu:f} allocatable)")
    if group.max_memory_bytes is not None and group.max_memory_bytes < memory:
        short.append(f"memory (largest node has {_gib(int(group.max_memory_bytes))})")
    lacks = " and ".join(short) or "CPU and memory on a node with the GPUs"
    return (
        f"a worker at TP={tp} asks {cpu:f} CPU and {_gib(int(memory))} memory"
        f" (spec.resources.workerPerGPU x {tp}); {group.arch} nodes lack {lacks}"
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
        chosen = resolve_backend(
            arch, requested, state_dtype=spec.gdn_state_dtype, head_dims=needs.linear_head_dims
        )
    except ValueError as exc:
        raise _Excluded(str(exc)) from exc
    # What the replicas run is what vLLM's layer can take: the same rule the plugin applies.
    runs, why = layer_backend(chosen.active, fusable=spec.model.dtype == "bfloat16")
    if why is None:
        return chosen
    return Resolution(requested, runs, f"{chosen.active} chosen ({chosen.reason}), but {why}")
