"""Builders shared by the operator tests: GFD-labelled Nodes, model configs, deployments."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from gdn_operator.api import crd

T = TypeVar("T")

RTX4090: dict[str, Any] = {
    "arch": "sm89",
    "product": "NVIDIA-GeForce-RTX-4090",
    "memory_mib": 24564,
}
H100: dict[str, Any] = {"arch": "sm90", "product": "NVIDIA-H100-80GB-HBM3", "memory_mib": 81559}
L40S: dict[str, Any] = {"arch": "sm89", "product": "NVIDIA-L40S", "memory_mib": 46068}

# Qwen3.5-35B-A3B's published text config (MoE: 256 experts, 8 active; 3 GDN layers per
# full-attention layer), nested under text_config as in the multimodal checkpoint.
QWEN35_35B_A3B: dict[str, Any] = {
    "architectures": ["Qwen3_5MoeForConditionalGeneration"],
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "qwen3_5_moe_text",
        "vocab_size": 248320,
        "hidden_size": 2048,
        "num_hidden_layers": 40,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "full_attention_interval": 4,
        "max_position_embeddings": 262144,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "num_experts": 256,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 512,
        "shared_expert_intermediate_size": 512,
    },
}
# A dense ~27B Qwen3.5 layout (sizes from the 27B training recipe; GDN head counts assumed).
QWEN35_27B: dict[str, Any] = {
    "vocab_size": 248320,
    "hidden_size": 5120,
    "num_hidden_layers": 64,
    "num_attention_heads": 24,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "intermediate_size": 17408,
    "full_attention_interval": 4,
    "max_position_embeddings": 262144,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 48,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "tie_word_embeddings": False,
}
# The repository's tiny random-weight model (gdn_serve.tiny_model.TinyModelSpec).
TINY: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "full_attention_interval": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 64,
    "linear_value_head_dim": 64,
    "max_position_embeddings": 4096,
}


def gpu_node(
    name: str,
    gpu: dict[str, Any] | None = None,
    *,
    gpus: int = 1,
    ready: bool = True,
    unschedulable: bool = False,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    cpu: str = "32",
    memory: str = "256Gi",
) -> dict[str, Any]:
    """A Node as the API returns it, labelled by GPU Feature Discovery, with this allocatable
    CPU and memory."""
    gpu = gpu or RTX4090
    digits = gpu["arch"].removeprefix("sm")
    node_labels = {
        "kubernetes.io/hostname": name,
        "nvidia.com/gpu.compute.major": digits[:-1],
        "nvidia.com/gpu.compute.minor": digits[-1],
        "nvidia.com/gpu.product": gpu["product"],
        "nvidia.com/gpu.memory": str(gpu["memory_mib"]),
        "nvidia.com/gpu.count": str(gpus),
        **(labels or {}),
    }
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
            "capacity": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def cpu_node(
    name: str,
    *,
    cpu: str = "8",
    memory: str | None = None,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node without GPUs (no GPU Feature Discovery labels)."""
    allocatable = {"cpu": cpu, **({"memory": memory} if memory else {})}
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def model(config: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": "Qwen/Qwen3.5-35B-A3B"}
    if config is not None:
        base["config"] = copy.deepcopy(config)
    return {**base, **fields}


def deployment(
    spec: dict[str, Any], name: str = "qwen", namespace: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": spec,
    }


def eventually(check: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.05) -> T:
    """Poll until `check` returns something truthy (and return it), or fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s}s: {check}")
        time.sleep(interval_s)
