"""A typed, defaulted view of a `Qwen35Deployment` spec.

The API server has already validated the object against the CRD schema; this module fills the
same defaults (from `crd.py`, so a spec read here and one read from the cluster agree) and turns
the dict into frozen dataclasses the planner can trust. It raises `SpecError` for what the schema
cannot express; the caller turns that into a Degraded condition, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from gdn_operator import crd

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
    cpu: str
    memory: str


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
    head_resources: PodResources
    worker_resources_per_gpu: PodResources

    def override(self, arch: str) -> ArchOverride:
        return self.archs.get(arch) or ArchOverride(arch=arch)


def parse_spec(raw: Mapping[str, Any]) -> DeploymentSpec:
    """Defaulted, typed spec; SpecError when a field is missing or inconsistent."""
    spec = crd.default_spec(dict(raw))
    try:
        return _build(spec)
    except SpecError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
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
        head_resources=PodResources(**resources["head"]),
        worker_resources_per_gpu=PodResources(**resources["workerPerGPU"]),
    )


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
        weight_bytes=int(parse_quantity(weight_bytes)) if weight_bytes is not None else None,
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
    return overrides


def _check_engine_args(where: str, args: Mapping[str, Any]) -> None:
    owned = sorted(set(args) & set(PLANNER_ENGINE_ARGS))
    if owned:
        raise SpecError(
            f"{where} sets {', '.join(owned)}, which the operator derives from the spec"
            " (model.*, archs[].tensorParallelSize)"
        )


def _secret(ref: Mapping[str, Any] | None) -> SecretRef | None:
    return SecretRef(name=ref["name"], key=ref["key"]) if ref else None
