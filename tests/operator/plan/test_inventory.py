"""Nodes -> GPU arch groups from GPU Feature Discovery labels and the nvidia.com/gpu allocatable."""

from __future__ import annotations

from decimal import Decimal

from gdn_operator.plan.inventory import build_inventory, node_arch
from gdn_operator.plan.inventory import gpu_node as parse_node
from tests.operator.operator_testlib import H100, L40S, RTX4090, cpu_node, gpu_node


def test_arch_names_from_compute_capability() -> None:
    labels = {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9"}
    assert node_arch(labels) == "sm89"
    assert (
        node_arch(
            {**labels, "nvidia.com/gpu.compute.major": "10", "nvidia.com/gpu.compute.minor": "0"}
        )
        == "sm100"
    )
    assert node_arch({}) is None
    assert node_arch({**labels, "nvidia.com/gpu.compute.minor": "x"}) is None


def test_groups_by_arch_with_product_memory_and_count() -> None:
    inv = build_inventory(
        [
            gpu_node("a", RTX4090),
            gpu_node("b", L40S, gpus=4),
            gpu_node("h", H100, gpus=8),
            cpu_node("c"),
        ]
    )
    groups = inv.groups()
    assert list(groups) == ["sm89", "sm90"]
    sm89 = groups["sm89"]
    assert sm89.products == "NVIDIA-GeForce-RTX-4090,NVIDIA-L40S"
    assert sm89.memory_mib == 24564  # the smallest: a worker may land on either node
    assert sm89.max_gpus_per_node == 4
    assert sm89.replica_capacity(2) == 2  # the 1-GPU node holds no TP=2 replica
    assert groups["sm90"].replica_capacity(1) == 8


def test_unusable_nodes_are_skipped_with_a_reason() -> None:
    nodes = [
        gpu_node("cordoned", unschedulable=True),
        gpu_node("down", ready=False),
        gpu_node("no-plugin", gpus=0),
        cpu_node("cpu"),
    ]
    no_memory = gpu_node("no-memory")
    del no_memory["metadata"]["labels"]["nvidia.com/gpu.memory"]
    inv = build_inventory([*nodes, no_memory])
    assert inv.nodes == ()
    assert inv.skipped == {
        "cordoned": "cordoned",
        "down": "not Ready",
        "no-plugin": "no nvidia.com/gpu allocatable",
        "no-memory": "no nvidia.com/gpu.memory label",
    }


def test_node_selector_and_tolerations() -> None:
    taint = {"key": "dedicated", "value": "llm", "effect": "NoSchedule"}
    inv = build_inventory([gpu_node("a", labels={"pool": "x"}), gpu_node("b", taints=[taint])])
    assert [n.name for n in inv.groups({"pool": "x"})["sm89"].nodes] == ["a"]
    assert [n.name for n in inv.groups()["sm89"].nodes] == ["a"]
    equal = [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]
    assert [n.name for n in inv.groups(tolerations=equal)["sm89"].nodes] == ["a", "b"]
    wrong = [{"key": "dedicated", "operator": "Equal", "value": "other"}]
    assert [n.name for n in inv.groups(tolerations=wrong)["sm89"].nodes] == ["a"]
    everything = [{"operator": "Exists"}]
    assert len(inv.groups(tolerations=everything)["sm89"].nodes) == 2


def test_prefer_no_schedule_taints_do_not_exclude() -> None:
    soft = {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}
    assert len(build_inventory([gpu_node("a", taints=[soft])]).groups()["sm89"].nodes) == 1


def test_gfd_timestamp_is_not_part_of_the_planning_view() -> None:
    # GFD rewrites this label every minute; it must not look like a node change.
    a = gpu_node("a", labels={"nvidia.com/gfd.timestamp": "1"})
    b = gpu_node("a", labels={"nvidia.com/gfd.timestamp": "2"})
    assert parse_node(a) == parse_node(b)
    c = gpu_node("a", labels={"pool": "other"})
    assert parse_node(a) != parse_node(c)


# -- CPU nodes (deployments that list arch cpu) -----------------------------------------------


def test_cpu_nodes_are_ready_schedulable_x86_nodes_without_gpu_labels() -> None:
    inv = build_inventory(
        [
            gpu_node("gpu", RTX4090),
            cpu_node("b", cpu="16", memory="64Gi", labels={"kubernetes.io/arch": "amd64"}),
            cpu_node("a"),  # no arch label: the kubelet always sets one; not held against it
            cpu_node("arm", labels={"kubernetes.io/arch": "arm64"}),
            cpu_node("cordoned", unschedulable=True),
            cpu_node("down", ready=False),
        ]
    )
    assert [n.name for n in inv.cpu_nodes] == ["a", "b"]
    assert [n.name for n in inv.nodes] == ["gpu"]  # a GPU node is never a CPU node
    assert inv.skipped == {}  # what a CPU deployment cannot use is no GPU node's problem
    b = inv.cpu_nodes[1]
    assert (b.arch, b.cpu, b.memory_bytes) == ("cpu", 16, 64 * 2**30)
    assert b.pods_that_fit(Decimal(4), Decimal(32 * 2**30)) == 2  # memory bounds it
    assert inv.cpu_nodes[0].pods_that_fit(Decimal(4), Decimal(32 * 2**30)) == 2  # CPU only


def test_cpu_candidates_follow_the_selector_and_the_taints() -> None:
    taint = {"key": "dedicated", "value": "llm", "effect": "NoSchedule"}
    inv = build_inventory(
        [cpu_node("a", labels={"pool": "x"}), cpu_node("b", taints=[taint]), cpu_node("c")]
    )
    assert [n.name for n in inv.cpu_candidates()] == ["a", "c"]
    assert [n.name for n in inv.cpu_candidates({"pool": "x"})] == ["a"]
    tolerate = [{"key": "dedicated", "operator": "Exists"}]
    assert [n.name for n in inv.cpu_candidates(tolerations=tolerate)] == ["a", "b", "c"]
    # The GPU pools' taint is tolerated for GPU workers only, never for CPU ones.
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert build_inventory([cpu_node("d", taints=[gpu_taint])]).cpu_candidates() == ()
