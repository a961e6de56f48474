"""A typed, defaulted view of a `Qwen35Deployment` spec.

The API server has already validated the object against the CRD schema; this module fills the
same defaults (from `crd.py`, so a spec read here and one read from the cluster agree) and turns
the dict into frozen dataclasses the planner can trust. It raises `SpecError` for what the schema
cannot express; the caller turns that into a Degraded condition, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from gdn_operator.api import crd
from gdn_serve.backends.rules import CPU_ARCH

# Engine arguments the planner decides; set through the CR's own fields instead.
PLANNER_ENGINE_ARGS = (
    "tensor_parallel_size",
    "enable_expert_parallel",
    "quantization",
    "dtype",
    "max_model_len",
    "model",
    "served_model_name",
)
# The largest quantity the operator takes (bytes or cores): 2^63, the range of Kubernetes' own.
MAX_QUANTITY = Decimal(2**63)
# vLLM's default share of GPU memory for weights + KV cache.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


class SpecError(ValueError):
    """A spec the schema accepted but that cannot be planned; the message says which field."""


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class ModelSpec:
    source: str
    served_name: str
    dtype: str
    quantization: str
    max_model_len: int | None
    config: Mapping[str, Any] | None
    total_params: int | None
    active_params: int | None
    weight_bytes: int | None
    expert_parallel: str
    hub_token: SecretRef | None


@dataclass(frozen=True)
class ArchOverride:
    arch: str
    exclude: bool = False
    tensor_parallel_size: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    gdn_backend: str | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PodResources:
    cpu: str  # as written in the spec, for the Pod
    memory: str
    cpu_cores: Decimal  # parsed, for the planner's fit
    memory_bytes: int


@dataclass(frozen=True)
class DeploymentSpec:
    model: ModelSpec
    gdn_backend: str
    gdn_state_dtype: str
    archs: Mapping[str, ArchOverride]
    target_ongoing_requests: int
    min_replicas: int
    max_replicas: int | None
    image: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    engine_args: Mapping[str, Any]
    upgrade_strategy: str
    api_key: SecretRef | None
    ray_token_secret: str | None  # None: KubeRay generates the token Secret
    head_resources: PodResources
    worker_resources_per_gpu: PodResources
    cpu_worker_resources: PodResources

    def override(self, arch: str) -> ArchOverride:
        return self.archs.get(arch) or ArchOverride(arch=arch)

    @property
    def on_cpu(self) -> bool:
        """The spec opted into CPU nodes (`archs` lists `cpu`): GPU archs are not planned."""
        return CPU_ARCH in self.archs


def parse_spec(raw: Mapping[str, Any]) -> DeploymentSpec:
    """Defaulted, typed spec; SpecError when a field is missing or inconsistent."""
    spec = crd.default_spec(dict(raw))
    try:
        return _build(spec)
    except SpecError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        # A safety net for objects the API server did not validate (the schema makes these
        # unreachable); the property test checks that no message of it is ever seen.
        raise SpecError(f"invalid spec: {exc!r}") from exc


def _build(spec: dict[str, Any]) -> DeploymentSpec:
    if "model" not in spec:
        raise SpecError("spec.model is required")
    _check_engine_args("spec.engineArgs", spec.get("engineArgs", {}))
    autoscaling = spec["autoscaling"]
    resources = spec["resources"]
    return DeploymentSpec(
        model=_model(spec["model"]),
        gdn_backend=spec["gdnBackend"],
        gdn_state_dtype=spec["gdnStateDtype"],
        archs=_overrides(spec.get("archs", [])),
        target_ongoing_requests=int(autoscaling["targetOngoingRequests"]),
        min_replicas=int(autoscaling["minReplicas"]),
        max_replicas=autoscaling.get("maxReplicas"),
        image=spec.get("image") or None,
        node_selector=dict(spec.get("nodeSelector", {})),
        tolerations=tuple(spec.get("tolerations", [])),
        engine_args=dict(spec.get("engineArgs", {})),
        upgrade_strategy=spec["upgradeStrategy"],
        api_key=_secret(spec.get("apiKeySecretRef")),
        ray_token_secret=spec.get("rayTokenSecretName") or None,
        head_resources=_pod_resources("spec.resources.head", resources["head"]),
        worker_resources_per_gpu=_pod_resources(
            "spec.resources.workerPerGPU", resources["workerPerGPU"]
        ),
        cpu_worker_resources=_pod_resources("spec.resources.cpuWorker", resources["cpuWorker"]),
    )


def _pod_resources(where: str, res: Mapping[str, Any]) -> PodResources:
    cpu, memory = str(res["cpu"]), str(res["memory"])
    memory_bytes = _quantity(f"{where}.memory", memory)
    if memory_bytes < 1:
        raise SpecError(f"{where}.memory must be at least one byte, got {memory!r}")
    return PodResources(cpu, memory, _quantity(f"{where}.cpu", cpu), int(memory_bytes))


def _quantity(where: str, value: Any) -> Decimal:
    """A positive Kubernetes quantity, at most MAX_QUANTITY (checked before any int(): a
    quantity such as `1e999999999` is valid by the pattern and would not fit in memory)."""
    try:
        parsed = parse_quantity(value)
    except (ValueError, InvalidOperation) as exc:
        raise SpecError(f"{where} is not a Kubernetes quantity: {value!r}") from exc
    if not 0 < parsed <= MAX_QUANTITY:
        raise SpecError(f"{where} must be a positive quantity of at most 2^63, got {value!r}")
    return Decimal(parsed)


def _model(model: dict[str, Any]) -> ModelSpec:
    source = str(model["source"])
    weight_bytes = model.get("weightBytes")
    return ModelSpec(
        source=source,
        served_name=model.get("servedName") or source.rstrip("/").rsplit("/", 1)[-1],
        dtype=model["dtype"],
        quantization=model["quantization"],
        max_model_len=model.get("maxModelLen"),
        config=model.get("config"),
        total_params=model.get("totalParams"),
        active_params=model.get("activeParams"),
        weight_bytes=(
            int(_quantity("spec.model.weightBytes", weight_bytes))
            if weight_bytes is not None
            else None
        ),
        expert_parallel=model["expertParallel"],
        hub_token=_secret(model.get("hubTokenSecretRef")),
    )


def _overrides(items: list[dict[str, Any]]) -> dict[str, ArchOverride]:
    overrides: dict[str, ArchOverride] = {}
    for item in items:
        arch = item["arch"]
        if arch in overrides:
            raise SpecError(f"spec.archs lists {arch} twice")
        _check_engine_args(f"spec.archs[{arch}].engineArgs", item.get("engineArgs", {}))
        overrides[arch] = ArchOverride(
            arch=arch,
            exclude=bool(item.get("exclude", False)),
            tensor_parallel_size=item.get("tensorParallelSize"),
            min_replicas=item.get("minReplicas"),
            max_replicas=item.get("maxReplicas"),
            gdn_backend=item.get("gdnBackend"),
            engine_args=dict(item.get("engineArgs", {})),
        )
    _check_cpu(overrides)
    return overrides


def _check_cpu(overrides: Mapping[str, ArchOverride]) -> None:
    """The CRD's CEL rules on `cpu`, for objects the API server did not validate."""
    cpu = overrides.get(CPU_ARCH)
    if cpu is None:
        return
    if len(overrides) > 1:
        raise SpecError(
            f"spec.archs lists {CPU_ARCH} with other archs: a CPU deployment runs on CPU nodes"
            " only (the CPU and CUDA serving images cannot share one Ray cluster)"
        )
    if cpu.exclude or cpu.tensor_parallel_size is not None:
        raise SpecError(
            f"spec.archs[{CPU_ARCH}] takes neither exclude nor tensorParallelSize"
            " (a CPU replica is one engine in one Pod)"
        )


def _check_engine_args(where: str, args: Mapping[str, Any]) -> None:
    owned = sorted(set(args) & set(PLANNER_ENGINE_ARGS))
    if owned:
        raise SpecError(
            f"{where} sets {', '.join(owned)}, which the operator derives from the spec"
            " (model.*, archs[].tensorParallelSize)"
        )
    # The two the planner sizes with; the schema types them, this holds for unvalidated input.
    utilization = args.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION)
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)):
        raise SpecError(f"{where}.gpu_memory_utilization must be a number, got {utilization!r}")
    if not 0 < utilization <= 1:
        raise SpecError(f"{where}.gpu_memory_utilization must be in (0, 1], got {utilization}")
    if not isinstance(args.get("kv_cache_dtype", "auto"), str):
        raise SpecError(f"{where}.kv_cache_dtype must be a string")
    kv_bytes = args.get("kv_cache_memory_bytes", crd.DEFAULT_CPU_KV_CACHE_BYTES)
    if isinstance(kv_bytes, bool) or not isinstance(kv_bytes, int):
        raise SpecError(f"{where}.kv_cache_memory_bytes must be an integer, got {kv_bytes!r}")
    if not 1 <= kv_bytes <= crd.MAX_CONFIG_BYTES:
        raise SpecError(
            f"{where}.kv_cache_memory_bytes must be in 1..{crd.MAX_CONFIG_BYTES}, got {kv_bytes}"
        )


def _secret(ref: Mapping[str, Any] | None) -> SecretRef | None:
    return SecretRef(name=ref["name"], key=ref["key"]) if ref else None
