"""The cluster's GPUs, grouped by arch, and its CPU nodes, from Node objects.

Pure: takes Node dicts (as the API returns them), gives schedulable GPU nodes grouped into arch
groups (`sm89`, `sm90`, ...) from the GPU Feature Discovery labels and the `nvidia.com/gpu`
allocatable, with each node's allocatable CPU and memory (what bounds the worker Pods it holds).
A GPU node is skipped, with the reason kept, when it is cordoned, not Ready, has no GPU
allocatable or lacks the labels the planner needs. A CPU node (for deployments that list `cpu`)
is a schedulable, Ready x86-64 node without those labels: the CPU image needs x86-64, and CPU
replicas stay off GPU nodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from gdn_serve.backends.rules import CPU_ARCH

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
# The kubelet's own label; vLLM's CPU build in the CPU image is x86-64 only.
LABEL_CPU_ARCH = "kubernetes.io/arch"
CPU_NODE_ARCH = "amd64"


@dataclass(frozen=True)
class GpuNode:
    name: str
    arch: str
    product: str
    memory_mib: int
    gpus: int
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...] = ()
    # Allocatable CPU (cores) and memory (bytes); None where the Node does not say.
    cpu: Decimal | None = None
    memory_bytes: Decimal | None = None

    def pods_that_fit(self, gpus: int, cpu: Decimal, memory_bytes: Decimal) -> int:
        """Worker Pods of this size the node can hold by its allocatable (nothing else on it)."""
        fits = [self.gpus // gpus]
        if self.cpu is not None and cpu > 0:
            fits.append(int(self.cpu // cpu))
        if self.memory_bytes is not None and memory_bytes > 0:
            fits.append(int(self.memory_bytes // memory_bytes))
        return min(fits)


@dataclass(frozen=True)
class CpuNode:
    """A node CPU replicas may run on: no GPU Feature Discovery labels, x86-64."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...] = ()
    cpu: Decimal | None = None
    memory_bytes: Decimal | None = None
    arch: str = CPU_ARCH

    def pods_that_fit(self, cpu: Decimal, memory_bytes: Decimal) -> int:
        """Worker Pods of this size the node holds by its allocatable; a node that reports
        neither counts as holding one (the scheduler has the last word)."""
        fits = []
        if self.cpu is not None and cpu > 0:
            fits.append(int(self.cpu // cpu))
        if self.memory_bytes is not None and memory_bytes > 0:
            fits.append(int(self.memory_bytes // memory_bytes))
        return min(fits) if fits else 1


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

    def replica_capacity(
        self, gpus_per_replica: int, cpu: Decimal = Decimal(0), memory_bytes: Decimal = Decimal(0)
    ) -> int:
        """Worker Pods (one replica each) of this size the arch's nodes hold."""
        return sum(n.pods_that_fit(gpus_per_replica, cpu, memory_bytes) for n in self.nodes)

    @property
    def max_cpu(self) -> Decimal | None:
        known = [n.cpu for n in self.nodes if n.cpu is not None]
        return max(known) if known else None

    @property
    def max_memory_bytes(self) -> Decimal | None:
        known = [n.memory_bytes for n in self.nodes if n.memory_bytes is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[GpuNode, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)  # GPU node name -> why
    cpu_nodes: tuple[CpuNode, ...] = ()
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

    def cpu_candidates(
        self,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[CpuNode, ...]:
        """The CPU nodes a deployment with these selector/tolerations may use (no GPU
        toleration: CPU replicas never need a GPU pool's taint tolerated)."""
        selector = dict(node_selector or {})
        return tuple(
            n for n in self.cpu_nodes if _matches(n, selector) and _tolerates(n, tolerations)
        )


NodeView = GpuNode | CpuNode | str | None


def build_inventory(nodes: Iterable[Mapping[str, Any]]) -> Inventory:
    gpu_nodes: list[GpuNode] = []
    cpu_nodes: list[CpuNode] = []
    skipped: dict[str, str] = {}
    for node in nodes:
        parsed = node_view(node)
        if isinstance(parsed, GpuNode):
            gpu_nodes.append(parsed)
        elif isinstance(parsed, CpuNode):
            cpu_nodes.append(parsed)
        elif parsed is not None:
            skipped[node["metadata"]["name"]] = parsed
    return inventory_of(gpu_nodes, cpu_nodes, skipped)


def inventory_of(
    gpu_nodes: Iterable[GpuNode], cpu_nodes: Iterable[CpuNode], skipped: Mapping[str, str]
) -> Inventory:
    by_name = attrgetter("name")
    return Inventory(
        tuple(sorted(gpu_nodes, key=by_name)), dict(skipped), tuple(sorted(cpu_nodes, key=by_name))
    )


def node_view(node: Mapping[str, Any]) -> NodeView:
    """What planning sees of a node: a GPU node, a CPU node, why a GPU node cannot be used, or
    None (a node no deployment can use: a cordoned, unready or non-x86 node without GPUs)."""
    labels = node.get("metadata", {}).get("labels") or {}
    if node_arch(labels) is not None:
        return gpu_node(node)
    spec, status = node.get("spec") or {}, node.get("status") or {}
    if (
        spec.get("unschedulable")
        or not _is_ready(status)
        or labels.get(LABEL_CPU_ARCH, CPU_NODE_ARCH) != CPU_NODE_ARCH
    ):
        return None
    allocatable = status.get("allocatable") or {}
    return CpuNode(
        name=node["metadata"]["name"],
        labels=dict(labels),
        taints=_blocking_taints(spec),
        cpu=_quantity_or_none(allocatable.get("cpu")),
        memory_bytes=_quantity_or_none(allocatable.get("memory")),
    )


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
    allocatable = status.get("allocatable") or {}
    gpus = _int_or_zero(allocatable.get(GPU_RESOURCE))
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
        taints=_blocking_taints(spec),
        cpu=_quantity_or_none(allocatable.get("cpu")),
        memory_bytes=_quantity_or_none(allocatable.get("memory")),
    )


def _blocking_taints(spec: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    return tuple(t for t in spec.get("taints") or [] if t.get("effect") in _BLOCKING_EFFECTS)


def _quantity_or_none(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(parse_quantity(value))
    except (ValueError, InvalidOperation):
        return None


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


def _matches(node: GpuNode | CpuNode, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def _tolerates(node: GpuNode | CpuNode, tolerations: Sequence[Mapping[str, Any]]) -> bool:
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
