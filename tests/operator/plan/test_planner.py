"""The planner, table-driven: which archs serve the model, at what tensor parallel size, and why
an arch is left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from gdn_operator.api.spec import parse_spec
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.planner import Plan, plan_deployment
from gdn_serve.tiny_model import SHAPES
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import (
    H100,
    L40S,
    QWEN35_35B_A3B,
    RTX4090,
    TINY,
    cpu_node,
    gpu_node,
    model,
)

MOE_BF16 = {"model": model(QWEN35_35B_A3B, maxModelLen=32768)}
NOTHING_FITS = "no GPU arch can serve the model"
MOE_AWQ = {"model": model(QWEN35_35B_A3B, maxModelLen=32768, quantization="awq")}
TINY_GPU: dict[str, Any] = {
    "model": model(TINY, source="/opt/models/tiny-qwen35", maxModelLen=2048)
}
TINY_CPU: dict[str, Any] = {
    **TINY_GPU,
    "archs": [{"arch": "cpu"}],
    "resources": {"cpuWorker": {"cpu": "4", "memory": "8Gi"}},
}


def cpu_nodes(n: int, cpu: str = "8", memory: str = "32Gi") -> list[dict[str, Any]]:
    return [cpu_node(f"cpu-{i}", cpu=cpu, memory=memory) for i in range(n)]


@dataclass
class Case:
    nodes: list[dict[str, Any]]
    spec: dict[str, Any]
    tp: dict[str, int]  # planned arch -> tensor parallel size
    excluded: dict[str, str] = field(default_factory=dict)  # arch -> part of the reason
    problem: str | None = None  # part of Plan.problem()
    replicas: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # min, max, capacity
    notes: dict[str, str] = field(default_factory=dict)  # planned arch -> part of its note


def four090s(n: int, gpus: int = 1) -> list[dict[str, Any]]:
    return [gpu_node(f"rtx-{i}", RTX4090, gpus=gpus) for i in range(n)]


CASES = {
    "4090-only: AWQ fits one 24 GB card": Case(
        four090s(3), MOE_AWQ, tp={"sm89": 1}, replicas={"sm89": (1, 3, 3)}
    ),
    "H100-only: bf16 on one GPU per replica": Case(
        [gpu_node("h-0", H100, gpus=8), gpu_node("h-1", H100, gpus=8)],
        MOE_BF16,
        tp={"sm90": 1},
        replicas={"sm90": (1, 16, 16)},
    ),
    "mixed: bf16 runs on H100, 4090 left out": Case(
        [*four090s(2), gpu_node("h-0", H100, gpus=8)],
        MOE_BF16,
        tp={"sm90": 1},
        excluded={"sm89": "does not fit at any tensor parallel size"},
    ),
    "mixed: AWQ runs on both": Case(
        [*four090s(2), gpu_node("h-0", H100, gpus=8)], MOE_AWQ, tp={"sm89": 1, "sm90": 1}
    ),
    "no GPU nodes": Case(
        [cpu_node("cpu-0"), cpu_node("cpu-1")], MOE_BF16, tp={}, problem="no schedulable GPU nodes"
    ),
    "too big for 24 GB cards at any TP the nodes allow": Case(
        four090s(4, gpus=2),
        MOE_BF16,
        tp={},
        excluded={"sm89": "at TP=2 each GPU needs"},
        problem=NOTHING_FITS,
    ),
    "an 8x4090 box holds bf16 at TP=4 (TP=3 does not divide the heads)": Case(
        four090s(1, gpus=8), MOE_BF16, tp={"sm89": 4}, replicas={"sm89": (1, 2, 2)}
    ),
    "overrides: TP and replicas per arch": Case(
        [gpu_node("h-0", H100, gpus=8)],
        {
            **MOE_BF16,
            "archs": [
                {"arch": "sm90", "tensorParallelSize": 2, "minReplicas": 2, "maxReplicas": 3}
            ],
        },
        tp={"sm90": 2},
        replicas={"sm90": (2, 3, 4)},
    ),
    "override: TP that does not divide the attention heads": Case(
        [gpu_node("h-0", H100, gpus=8)],
        {**MOE_BF16, "archs": [{"arch": "sm90", "tensorParallelSize": 3}]},
        tp={},
        excluded={
            "sm90": "tensorParallelSize 3 from spec.archs: does not divide num_attention_heads=16"
        },
        problem=NOTHING_FITS,
    ),
    "override: TP larger than any node": Case(
        [gpu_node("h-0", H100, gpus=8)],
        {**MOE_BF16, "archs": [{"arch": "sm90", "tensorParallelSize": 16}]},
        tp={},
        excluded={"sm90": "needs 16 GPUs on one node, the largest sm90 node has 8"},
        problem=NOTHING_FITS,
    ),
    "override: minReplicas above the global maximum: the maximum wins, said in the note": Case(
        four090s(2),
        {
            **MOE_AWQ,
            "autoscaling": {"maxReplicas": 2},
            "archs": [{"arch": "sm89", "minReplicas": 5}],
        },
        tp={"sm89": 1},
        replicas={"sm89": (2, 2, 2)},
        notes={
            "sm89": "minReplicas 5 (spec.archs[sm89].minReplicas) is above maxReplicas 2"
            " (spec.autoscaling.maxReplicas): planned 2"
        },
    ),
    "kubectl scale above an arch's own maximum: the arch stays, capped, and says so": Case(
        [*four090s(4), gpu_node("h-0", H100, gpus=8)],
        {
            **MOE_AWQ,
            "autoscaling": {"minReplicas": 3},
            "archs": [{"arch": "sm89", "maxReplicas": 2}],
        },
        tp={"sm89": 1, "sm90": 1},
        replicas={"sm89": (2, 2, 4), "sm90": (3, 8, 8)},
        notes={
            "sm89": "minReplicas 3 (spec.autoscaling.minReplicas) is above maxReplicas 2"
            " (spec.archs[sm89].maxReplicas): planned 2"
        },
    ),
    "more replicas asked than the nodes hold: planned, and the note says they wait": Case(
        four090s(2),
        {**MOE_AWQ, "autoscaling": {"minReplicas": 3, "maxReplicas": 4}},
        tp={"sm89": 1},
        replicas={"sm89": (3, 4, 2)},
        notes={"sm89": "3 replicas at TP=1 are more than its nodes hold now (2)"},
    ),
    "a worker Pod needs more memory than a small node has: which arch lacks what": Case(
        [gpu_node("rtx-0", RTX4090, memory="24Gi"), gpu_node("h-0", H100, gpus=8)],
        MOE_AWQ,
        tp={"sm90": 1},
        excluded={
            "sm89": "a worker at TP=1 asks 4 CPU and 32.0 GiB memory"
            " (spec.resources.workerPerGPU x 1); sm89 nodes lack memory (largest node has"
            " 24.0 GiB)"
        },
    ),
    "a worker Pod needs more CPU than a small node has": Case(
        [gpu_node("rtx-0", RTX4090, cpu="2")],
        MOE_AWQ,
        tp={},
        excluded={"sm89": "sm89 nodes lack CPU (largest node has 2 allocatable)"},
        problem=NOTHING_FITS,
    ),
    "CPU and memory per GPU bound the replicas a node holds": Case(
        [gpu_node("rtx-0", RTX4090, gpus=4, cpu="8", memory="256Gi")],
        {**MOE_AWQ, "resources": {"workerPerGPU": {"cpu": "4", "memory": "16Gi"}}},
        tp={"sm89": 1},
        replicas={"sm89": (1, 2, 2)},  # 4 GPUs, but 8 CPU hold two 4-CPU workers
    ),
    "smaller worker Pods fit the small node": Case(
        [gpu_node("rtx-0", RTX4090, cpu="2", memory="24Gi")],
        {**MOE_AWQ, "resources": {"workerPerGPU": {"cpu": "1500m", "memory": "20Gi"}}},
        tp={"sm89": 1},
        replicas={"sm89": (1, 1, 1)},
    ),
    "excluded arch": Case(
        [*four090s(2), gpu_node("h-0", H100, gpus=8)],
        {**MOE_AWQ, "archs": [{"arch": "sm89", "exclude": True}]},
        tp={"sm90": 1},
        excluded={"sm89": "excluded by spec.archs[sm89].exclude"},
    ),
    "cordoned and NotReady nodes do not count": Case(
        [
            gpu_node("h-0", H100, gpus=8, unschedulable=True),
            gpu_node("rtx-0", RTX4090),
            gpu_node("rtx-1", RTX4090, ready=False),
        ],
        MOE_AWQ,
        tp={"sm89": 1},
        replicas={"sm89": (1, 1, 1)},
    ),
    "only cordoned nodes": Case(
        [gpu_node("h-0", H100, gpus=8, unschedulable=True)],
        MOE_AWQ,
        tp={},
        problem="no schedulable GPU nodes",
    ),
    "nodeSelector picks the pool": Case(
        [
            gpu_node("h-0", H100, gpus=8, labels={"pool": "serving"}),
            gpu_node("h-1", H100, gpus=8, labels={"pool": "batch"}),
        ],
        {**MOE_BF16, "nodeSelector": {"pool": "serving"}},
        tp={"sm90": 1},
        replicas={"sm90": (1, 8, 8)},
    ),
    "a taint keeps nodes out unless tolerated": Case(
        [
            gpu_node(
                "h-0",
                H100,
                gpus=8,
                taints=[{"key": "dedicated", "value": "train", "effect": "NoSchedule"}],
            )
        ],
        MOE_BF16,
        tp={},
        problem="no schedulable GPU nodes",
    ),
    "the GPU taint is always tolerated": Case(
        [
            gpu_node(
                "h-0",
                H100,
                gpus=8,
                taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            )
        ],
        MOE_BF16,
        tp={"sm90": 1},
    ),
    "sizing from the spec (no config)": Case(
        four090s(1), {"model": model(totalParams=9_000_000_000)}, tp={"sm89": 1}
    ),
    "real checkpoint bytes override the computed size": Case(
        four090s(1),
        {"model": model(QWEN35_35B_A3B, maxModelLen=32768, weightBytes="17Gi")},
        tp={"sm89": 1},
    ),
    "a forced backend the arch cannot run leaves it out": Case(
        four090s(1),
        {**MOE_AWQ, "gdnBackend": "flashinfer"},
        tp={},
        excluded={"sm89": "'flashinfer' was forced but cannot run on sm89"},
        problem=NOTHING_FITS,
    ),
    "one arch, two products: sized by the smaller memory": Case(
        [gpu_node("rtx-0", RTX4090), gpu_node("l40s-0", L40S)],
        MOE_AWQ,
        tp={"sm89": 1},
        replicas={"sm89": (1, 2, 2)},
    ),
    # -- CPU: only for a spec that lists arch cpu -------------------------------------------
    "a GPU model on a cluster without GPUs is never planned on CPU, and says how to opt in": Case(
        cpu_nodes(2), TINY_GPU, tp={}, problem="to run on CPU nodes instead, list arch cpu"
    ),
    "cpu listed: one engine per CPU worker Pod, replicas by what the nodes hold": Case(
        cpu_nodes(2), TINY_CPU, tp={"cpu": 1}, replicas={"cpu": (1, 4, 4)}
    ),
    "cpu listed on a mixed cluster: the GPU nodes are not candidates": Case(
        [*cpu_nodes(1), *four090s(2), gpu_node("h-0", H100, gpus=8)],
        TINY_CPU,
        tp={"cpu": 1},
        replicas={"cpu": (1, 2, 2)},
    ),
    "cpu listed on a cluster of GPU nodes only": Case(
        four090s(2), TINY_CPU, tp={}, problem="no schedulable CPU nodes match this deployment"
    ),
    "cpu: a float16 model (vLLM's CPU GDN kernels take bf16 only)": Case(
        cpu_nodes(1),
        {**TINY_CPU, "model": {**TINY_CPU["model"], "dtype": "float16"}},
        tp={},
        excluded={"cpu": "need a bfloat16 model (model.dtype is float16)"},
        problem="CPU nodes cannot serve the model",
    ),
    "cpu: the worker Pod's memory does not hold the weights": Case(
        cpu_nodes(1, memory="512Gi"),
        {**MOE_BF16, "archs": [{"arch": "cpu"}]},
        tp={},
        excluded={"cpu": "spec.resources.cpuWorker.memory is 16Gi"},
        problem="CPU nodes cannot serve the model",
    ),
    "cpu: a KV cache smaller than one request of maxModelLen": Case(
        cpu_nodes(1),
        {**TINY_CPU, "archs": [{"arch": "cpu", "engineArgs": {"kv_cache_memory_bytes": 4096}}]},
        tp={},
        excluded={"cpu": "kv_cache_memory_bytes 4096 holds less than one request of 2048 tokens"},
        problem="CPU nodes cannot serve the model",
    ),
    "cpu: no node holds the worker Pod": Case(
        cpu_nodes(2, cpu="2"),
        TINY_CPU,
        tp={},
        excluded={"cpu": "a CPU worker asks 4 CPU and 8Gi memory"},
        problem="CPU nodes cannot serve the model",
    ),
    "cpu: replica bounds from archs[cpu], capped by what the nodes hold": Case(
        cpu_nodes(1),
        {**TINY_CPU, "archs": [{"arch": "cpu", "minReplicas": 3}]},
        tp={"cpu": 1},
        replicas={"cpu": (2, 2, 2)},
        notes={
            "cpu": "minReplicas 3 (spec.archs[cpu].minReplicas) is above maxReplicas 2"
            " (what its nodes hold): planned 2"
        },
    ),
}


def _plan(case: Case) -> Plan:
    return plan_deployment(parse_spec(case.spec), build_inventory(case.nodes))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    plan = _plan(case)
    assert {a.arch: a.tensor_parallel_size for a in plan.archs} == case.tp
    reasons = {e.arch: e.reason for e in plan.excluded}
    assert reasons.keys() == case.excluded.keys()
    for arch, part in case.excluded.items():
        assert part in reasons[arch]
    if case.problem is None:
        assert plan.problem() is None
    else:
        assert case.problem in (plan.problem() or "")
    for arch, (lo, hi, capacity) in case.replicas.items():
        planned = next(a for a in plan.archs if a.arch == arch)
        assert (planned.min_replicas, planned.max_replicas, planned.capacity) == (lo, hi, capacity)
    notes = {a.arch: a.note for a in plan.archs if a.note}
    assert notes.keys() == case.notes.keys()
    for arch, part in case.notes.items():
        assert part in notes[arch]
        assert f"{arch}: " in plan.notes()


def test_moe_with_tensor_parallelism_enables_expert_parallelism() -> None:
    plan = _plan(CASES["an 8x4090 box holds bf16 at TP=4 (TP=3 does not divide the heads)"])
    (arch,) = plan.archs
    assert arch.expert_parallel and arch.engine_args["enable_expert_parallel"] is True


@pytest.mark.parametrize(
    ("setting", "tp", "expected"),
    [("Auto", 1, False), ("Disabled", 4, False), ("Enabled", 1, True)],
)
def test_expert_parallel_setting(setting: str, tp: int, expected: bool) -> None:
    spec = {
        "model": model(QWEN35_35B_A3B, maxModelLen=32768, expertParallel=setting),
        "archs": [{"arch": "sm90", "tensorParallelSize": tp}],
    }
    (arch,) = plan_deployment(
        parse_spec(spec), build_inventory([gpu_node("h", H100, gpus=8)])
    ).archs
    assert arch.expert_parallel is expected


def test_dense_model_never_gets_expert_parallelism() -> None:
    spec = {"model": model(totalParams=9_000_000_000, expertParallel="Enabled")}
    (arch,) = plan_deployment(parse_spec(spec), build_inventory([gpu_node("r", RTX4090)])).archs
    assert not arch.expert_parallel


def test_planned_memory_fits_the_gpu() -> None:
    plan = _plan(CASES["mixed: AWQ runs on both"])
    for arch in plan.archs:
        assert arch.bytes_per_gpu <= arch.gpu_memory_mib * 2**20 * 0.9


def test_long_context_needs_more_memory_than_short() -> None:
    nodes = [gpu_node("h", H100, gpus=8)]
    short = plan_deployment(parse_spec(MOE_BF16), build_inventory(nodes)).archs[0]
    full = plan_deployment(parse_spec({"model": model(QWEN35_35B_A3B)}), build_inventory(nodes))
    assert full.archs[0].bytes_per_gpu > short.bytes_per_gpu  # 262144 tokens of KV vs 32768


def test_gpu_memory_utilization_from_engine_args_changes_the_fit() -> None:
    # AWQ 35B-A3B fits a 4090 at vLLM's default 0.9 but not when only half the card is given.
    spec = {**MOE_AWQ, "engineArgs": {"gpu_memory_utilization": 0.5}}
    plan = plan_deployment(parse_spec(spec), build_inventory(four090s(1)))
    assert not plan.archs and "does not fit" in plan.excluded[0].reason


SAMPLE_CLUSTERS = {
    "rtx4090-only": ([gpu_node(f"rtx-{i}", RTX4090) for i in range(4)], {"sm89": 1}),
    "tiny-cpu": (cpu_nodes(2), {"cpu": 1}),
    "h100-only": ([gpu_node("h-0", H100, gpus=8)], {"sm90": 1}),
    "mixed": ([gpu_node("rtx-0", RTX4090), gpu_node("h-0", H100, gpus=8)], {"sm89": 1, "sm90": 1}),
}


@pytest.mark.parametrize("name", SAMPLE_CLUSTERS)
def test_chart_samples_plan_on_the_clusters_they_are_for(name: str) -> None:
    sample = yaml.safe_load((ROOT / f"charts/qwen35-stack/examples/{name}.yaml").read_text())
    nodes, expected = SAMPLE_CLUSTERS[name]
    plan = plan_deployment(parse_spec(sample["spec"]), build_inventory(nodes))
    assert {a.arch: a.tensor_parallel_size for a in plan.archs} == expected


def test_the_rtx4090_sample_never_lands_on_other_gpus_of_a_mixed_cluster() -> None:
    sample = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/rtx4090-only.yaml").read_text())
    nodes = [
        gpu_node("rtx-0", RTX4090, cpu="16", memory="64Gi"),
        gpu_node("l40s-0", L40S),
        gpu_node("h-0", H100, gpus=8),
    ]
    plan = plan_deployment(parse_spec(sample["spec"]), build_inventory(nodes))
    assert [(a.arch, a.product, a.nodes) for a in plan.archs] == [("sm89", RTX4090["product"], 1)]
    assert not plan.excluded  # the other nodes are not candidates at all
    # Negative control: without the selector the same spec plans the H100s too.
    unpinned = {**sample["spec"], "nodeSelector": {}}
    assert "sm90" in {
        a.arch for a in plan_deployment(parse_spec(unpinned), build_inventory(nodes)).archs
    }


def test_a_cpu_plan_gives_the_engine_its_kv_cache_and_the_cpu_backend() -> None:
    (arch,) = plan_deployment(parse_spec(TINY_CPU), build_inventory(cpu_nodes(2))).archs
    assert arch.engine_args["kv_cache_memory_bytes"] == 2**30  # explicit, the default
    assert arch.backend.active == "cpu" and "vLLM's C++ op" in arch.backend.reason
    assert (arch.gpus_per_node, arch.expert_parallel) == (0, False)
    own = {**TINY_CPU, "archs": [{"arch": "cpu", "engineArgs": {"kv_cache_memory_bytes": 2**31}}]}
    (bigger,) = plan_deployment(parse_spec(own), build_inventory(cpu_nodes(1))).archs
    assert bigger.engine_args["kv_cache_memory_bytes"] == 2**31


def test_the_cpu_sample_serves_the_tiny_model_the_cpu_image_carries() -> None:
    """The sample names the path the CPU image writes the tiny model to, and its config is the
    tiny model's (so the planner sizes what the Pods really load)."""
    sample = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/tiny-cpu.yaml").read_text())
    dockerfile = (ROOT / "images/serve-cpu/Dockerfile").read_text()
    source = sample["spec"]["model"]["source"]
    assert f"gdn-serve tiny-model --out {source}" in dockerfile
    assert f"COPY --from=venv {source.rsplit('/', 1)[0]} " in dockerfile
    config = sample["spec"]["model"]["config"]
    assert set(TINY) <= set(config)
    assert config == {k: getattr(SHAPES["tiny"], k) for k in config}
