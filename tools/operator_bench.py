"""Benchmark (not a test): planning + RayService building for many deployments over a big cluster.

    python tools/operator_bench.py [--crs 1000] [--nodes 5000]

Builds a synthetic cluster (RTX 4090, L40S, A100, H100 nodes with GPU Feature Discovery labels,
some cordoned or NotReady), then for every deployment runs what one reconcile computes in pure
code: parse + default the spec, plan per arch, build the RayService (serveConfigV2 included) and
compute the status. Reports time per deployment and memory. Two selector mixes: deployments that
share node pools (the inventory's grouping is reused), and every deployment with its own
selector (grouped from scratch each time, the worst case).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The model configs and GPU shapes are the test suite's, so bench and tests describe one cluster.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests/operator"))
from operator_testlib import H100, L40S, QWEN35_27B, QWEN35_35B_A3B, RTX4090, TINY

from gdn_operator.api.spec import parse_spec
from gdn_operator.plan.inventory import Inventory, build_inventory
from gdn_operator.plan.manifest import ManifestOptions, build_rayservice
from gdn_operator.plan.planner import plan_deployment
from gdn_operator.plan.status import Observed, compute_status

A100 = {"arch": "sm80", "product": "NVIDIA-A100-SXM4-80GB", "memory_mib": 81920}
GPUS = [(RTX4090, 1), (RTX4090, 2), (RTX4090, 8), (L40S, 4), (A100, 8), (H100, 8)]
POOLS = [f"pool-{i}" for i in range(8)]
OPTIONS = ManifestOptions(default_image="gdn-serve:bench")


def make_node(i: int, rng: random.Random) -> dict[str, Any]:
    gpu, count = GPUS[i % len(GPUS)]
    digits = gpu["arch"].removeprefix("sm")
    labels = {
        "nvidia.com/gpu.compute.major": digits[:-1],
        "nvidia.com/gpu.compute.minor": digits[-1],
        "nvidia.com/gpu.product": gpu["product"],
        "nvidia.com/gpu.memory": str(gpu["memory_mib"]),
        "pool": POOLS[i % len(POOLS)],
        "kubernetes.io/hostname": f"node-{i}",
    }
    return {
        "metadata": {"name": f"node-{i}", "labels": labels},
        "spec": {"unschedulable": rng.random() < 0.02},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(count)},
            "conditions": [{"type": "Ready", "status": "False" if rng.random() < 0.02 else "True"}],
        },
    }


def make_cr(i: int, own_selector: bool) -> dict[str, Any]:
    config, quant = [
        (QWEN35_35B_A3B, "awq"),
        (QWEN35_35B_A3B, "none"),
        (QWEN35_27B, "fp8"),
        (TINY, "none"),
    ][i % 4]
    spec: dict[str, Any] = {
        "model": {
            "source": f"org/model-{i}",
            "config": config,
            "quantization": quant,
            # Never beyond the model's own context: the planner refuses that (vLLM would).
            "maxModelLen": min(32768, config.get("max_position_embeddings", 32768)),
        },
        "nodeSelector": {"pool": POOLS[i % len(POOLS)]},
    }
    if own_selector:
        spec["nodeSelector"]["kubernetes.io/hostname"] = f"node-{(i * 7) % 5000}"
        del spec["nodeSelector"]["pool"]
    if i % 5 == 0:
        spec["archs"] = [{"arch": "sm80", "exclude": True}, {"arch": "sm90", "minReplicas": 2}]
    return {
        "apiVersion": "gdnserve.io/v1alpha1",
        "kind": "Qwen35Deployment",
        "metadata": {"name": f"cr-{i}", "namespace": "bench", "uid": f"uid-{i}", "generation": 1},
        "spec": spec,
    }


def reconcile_pure(cr: dict[str, Any], inventory: Inventory) -> None:
    spec = parse_spec(cr["spec"])
    plan = plan_deployment(spec, inventory)
    if plan.archs:
        build_rayservice(cr, spec, plan, OPTIONS)
    compute_status(cr, plan, None, Observed(None, {}), "2026-01-01T00:00:00Z")


def timed(crs: list[dict[str, Any]], inventory_for: Callable[[], Inventory]) -> list[float]:
    times = []
    for cr in crs:
        inventory = inventory_for()
        started = time.perf_counter()
        reconcile_pure(cr, inventory)
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "total_s": round(sum(times), 3),
        "mean_ms": round(1000 * statistics.mean(times), 3),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
        "p99_ms": round(1000 * ordered[int(len(ordered) * 0.99)], 3),
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=5000)
    args = parser.parse_args()
    rng = random.Random(0)
    nodes = [make_node(i, rng) for i in range(args.nodes)]
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    inventory = build_inventory(nodes)
    inventory_s = time.perf_counter() - started
    shared = [make_cr(i, own_selector=False) for i in range(args.crs)]
    own = [make_cr(i, own_selector=True) for i in range(args.crs)]
    result: dict[str, Any] = {
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "nodes": args.nodes,
        "gpu_nodes_usable": len(inventory.nodes),
        "crs": args.crs,
        "inventory_build_s": round(inventory_s, 3),
        "shared_pools": summary(timed(shared, lambda: inventory)),
        # A fresh Inventory per deployment: nothing of the grouping is reused.
        "own_selectors_cold": summary(timed(own, lambda: Inventory(inventory.nodes))),
    }
    result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["rss_growth_mib"] = round(
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1
    )
    tracemalloc.start()
    timed(shared, lambda: inventory)
    # Peak Python allocations during one pass; nothing is kept between deployments.
    result["pass_traced_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    tracemalloc.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
