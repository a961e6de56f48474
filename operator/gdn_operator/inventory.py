"""The cluster's GPUs, grouped by arch, from Node objects.

Pure: takes Node dicts (as the API returns them), gives schedulable GPU nodes grouped into arch
groups (`sm89`, `sm90`, ...) from the GPU Feature Discovery labels and the `nvidia.com/gpu`
allocatable. A node is skipped, with the reason kept, when it is cordoned, not Ready, has no GPU
allocatable or lacks the labels the planner needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_MAJOR = "nvidia.com/gpu.compute.major"
LABEL_MINOR = "nvidia.com/gpu.compute.minor"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"  # MiB per GPU
# GPU node pools commonly carry this taint; the worker Pods always tolerate it.
GPU_TOLERATION: Mapping[str, str] = {
    "key": GPU_RESOURCE,
    "operator": "Exists",
    "effect": "NoSchedule",
}
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
# Labels that change without anything changing for planning: GFD rewrites its timestamp on every
# pass (each minute by default), which would otherwise re-plan every deployment each minute.
VOLATILE_LABELS = frozenset({"nvidia.com/gfd.timestamp"})


@dataclass(frozen=True)
class GpuNode:
    name: str
    arch: str
    product: str
    memory_mib: int
    gpus: int
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ArchGroup:
    """The schedulable nodes of one arch. Sizes are the conservative ones: the planner's choice
    must fit whichever of these nodes a worker Pod lands on."""

    arch: str
    nodes: tuple[GpuNode, ...]

    @property
    def products(self) -> str:
        return ",".join(sorted({n.product for n in self.nodes}))

    @property
    def memory_mib(self) -> int:
        return min(n.memory_mib for n in self.nodes)

    @property
    def max_gpus_per_node(self) -> int:
        return max(n.gpus for n in self.nodes)

    def replica_capacity(self, gpus_per_replica: int) -> int:
        return sum(n.gpus // gpus_per_replica for n in self.nodes)


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[GpuNode, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)  # node name -> why
    # Most deployments share a selector (usually none), so grouping is done once per selector.
    _memo: dict[str, dict[str, ArchGroup]] = field(default_factory=dict, compare=False, repr=False)

    def groups(
        self,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, ArchGroup]:
        """Arch groups of the nodes a deployment with these selector/tolerations may use."""
        key = json.dumps([node_selector or {}, list(tolerations)], sort_keys=True)
        if key not in self._memo:
            self._memo[key] = self._group(dict(node_selector or {}), tolerations)
        return dict(self._memo[key])

    def _group(
        self, selector: dict[str, str], tolerations: Sequence[Mapping[str, Any]]
    ) -> dict[str, ArchGroup]:
        tolerated = [GPU_TOLERATION, *tolerations]
        by_arch: dict[str, list[GpuNode]] = {}
        for node in self.nodes:
            if _matches(node, selector) and _tolerates(node, tolerated):
                by_arch.setdefault(node.arch, []).append(node)
        return {arch: ArchGroup(arch, tuple(nodes)) for arch, nodes in sorted(by_arch.items())}


def build_inventory(nodes: Iterable[Mapping[str, Any]]) -> Inventory:
    gpu_nodes: list[GpuNode] = []
    skipped: dict[str, str] = {}
    for node in nodes:
        parsed = gpu_node(node)
        if isinstance(parsed, GpuNode):
            gpu_nodes.append(parsed)
        elif parsed is not None:
            skipped[node["metadata"]["name"]] = parsed
    gpu_nodes.sort(key=lambda n: n.name)
    return Inventory(tuple(gpu_nodes), skipped)


def node_arch(labels: Mapping[str, str]) -> str | None:
    """`sm<major><minor>` from the GFD labels; None when the node has none (not a GPU node)."""
    major, minor = labels.get(LABEL_MAJOR), labels.get(LABEL_MINOR)
    if major is None or minor is None or not (major.isdigit() and minor.isdigit()):
        return None
    return f"sm{int(major)}{int(minor)}"


def gpu_node(node: Mapping[str, Any]) -> GpuNode | str | None:
    """The node as a GpuNode, a reason it cannot be used, or None when it has no GPU labels."""
    labels = node.get("metadata", {}).get("labels") or {}
    arch = node_arch(labels)
    if arch is None:
        return None
    spec, status = node.get("spec") or {}, node.get("status") or {}
    gpus = _int_or_zero((status.get("allocatable") or {}).get(GPU_RESOURCE))
    memory = _int_or_zero(labels.get(LABEL_MEMORY))
    if spec.get("unschedulable"):
        return "cordoned"
    if not _is_ready(status):
        return "not Ready"
    if gpus < 1:
        return f"no {GPU_RESOURCE} allocatable"
    if memory < 1:
        return f"no {LABEL_MEMORY} label"
    return GpuNode(
        name=node["metadata"]["name"],
        arch=arch,
        product=labels.get(LABEL_PRODUCT, "unknown"),
        memory_mib=memory,
        gpus=gpus,
        labels={k: v for k, v in labels.items() if k not in VOLATILE_LABELS},
        taints=tuple(t for t in spec.get("taints") or [] if t.get("effect") in _BLOCKING_EFFECTS),
    )


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _int_or_zero(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _matches(node: GpuNode, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def _tolerates(node: GpuNode, tolerations: Sequence[Mapping[str, Any]]) -> bool:
    return all(any(_tolerates_one(t, taint) for t in tolerations) for taint in node.taints)


def _tolerates_one(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    # core/v1 semantics: an empty key with Exists matches every taint; an empty effect, every
    # effect; Equal (the default operator) compares values.
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if not toleration.get("key"):
        return toleration.get("operator") == "Exists"
    if toleration["key"] != taint.get("key"):
        return False
    if toleration.get("operator") == "Exists":
        return True
    return toleration.get("value", "") == taint.get("value", "")
