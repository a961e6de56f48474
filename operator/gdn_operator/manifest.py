"""Plan -> the `ray.io/v1` RayService that runs it. Pure.

One Ray cluster: a head Pod with no GPUs (and no Ray CPUs, so no replica lands there) that is kept
out of the serve Service, and one worker group per planned arch, pinned to that arch's nodes by the
GPU Feature Discovery labels and advertising the Ray custom resource that names the arch. Each
worker Pod holds exactly one replica's GPUs (the tensor parallel size). `serveConfigV2` starts the
`gdn_serve` application with an `AppConfig` built from the plan, so the application's own
validation runs on what the operator writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.utils.quantity import parse_quantity

from gdn_operator import crd
from gdn_operator.inventory import GPU_RESOURCE, GPU_TOLERATION, LABEL_MAJOR, LABEL_MINOR
from gdn_operator.planner import ArchPlan, Plan
from gdn_operator.spec import DeploymentSpec, SecretRef
from gdn_serve.serve.config import APP_IMPORT_PATH, AppConfig, ArchDeployment, arch_resource

RAY_VERSION = "2.60.0"
APP_NAME = "qwen35"
SERVE_PORT = 8000
MODEL_MOUNT = "/models"
API_KEY_ENV = "GDN_SERVE_API_KEY"
HUB_TOKEN_ENV = "HF_TOKEN"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user of the rayproject images

LABEL_DEPLOYMENT = f"{crd.GROUP}/deployment"
LABEL_ARCH = f"{crd.GROUP}/arch"
LABEL_ROLE = f"{crd.GROUP}/role"
ANNOTATION_PLAN_HASH = f"{crd.GROUP}/plan-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "gdn-operator"}


class ManifestError(ValueError):
    """The plan cannot be turned into a RayService (e.g. no image); the message says why."""


@dataclass(frozen=True)
class ManifestOptions:
    default_image: str | None = None  # the operator's --serving-image
    ray_version: str = RAY_VERSION


def serve_endpoint(name: str, namespace: str) -> str:
    """Base URL of the OpenAI API: KubeRay names the serve Service `<rayservice>-serve-svc`."""
    return f"http://{name}-serve-svc.{namespace}.svc:{SERVE_PORT}/v1"


def worker_selector(name: str) -> str:
    return f"{LABEL_DEPLOYMENT}={name},{LABEL_ROLE}=worker"


def build_rayservice(
    owner: Mapping[str, Any], spec: DeploymentSpec, plan: Plan, options: ManifestOptions
) -> dict[str, Any]:
    """The RayService for `owner` (the Qwen35Deployment object), with the plan's hash annotated."""
    if not plan.archs:
        raise ManifestError(plan.problem() or "nothing planned")
    image = spec.image or options.default_image
    if not image:
        raise ManifestError("no serving image: set spec.image or the operator's --serving-image")
    meta = owner["metadata"]
    name = meta["name"]
    body: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**MANAGED_BY, LABEL_DEPLOYMENT: name},
            "ownerReferences": [_owner_reference(owner)],
        },
        "spec": {
            "upgradeStrategy": {"type": spec.upgrade_strategy},
            "excludeHeadPodFromServeSvc": True,
            "serveConfigV2": serve_config(spec, plan),
            "rayClusterConfig": {
                "rayVersion": options.ray_version,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": _head_group(name, image, spec),
                "workerGroupSpecs": [_worker_group(name, image, spec, a) for a in plan.archs],
            },
        },
    }
    body["metadata"]["annotations"] = {ANNOTATION_PLAN_HASH: manifest_hash(body)}
    return body


def manifest_hash(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def app_config(spec: DeploymentSpec, plan: Plan) -> AppConfig:
    """The Serve application's arguments, validated by the application's own rules."""
    engine = {
        **spec.engine_args,
        "dtype": spec.model.dtype,
        "mamba_ssm_cache_dtype": spec.gdn_state_dtype,
    }
    if spec.model.quantization != "none":
        engine["quantization"] = spec.model.quantization
    config = AppConfig(
        model_source=model_path(spec.model.source),
        served_model_name=spec.model.served_name,
        archs=tuple(_arch_deployment(spec, a) for a in plan.archs),
        max_model_len=spec.model.max_model_len,
        engine_kwargs=engine,
        api_key_env=API_KEY_ENV if spec.api_key else None,
    )
    config.validate()
    return config


def serve_config(spec: DeploymentSpec, plan: Plan) -> str:
    app = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": APP_IMPORT_PATH,
        "args": app_config(spec, plan).to_dict(),
    }
    # libyaml's emitter when PyYAML has it: the pure-Python one is most of a reconcile's time.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump({"applications": [app]}, Dumper=dumper, sort_keys=True)


def model_path(source: str) -> str:
    """Where the replicas find the model: `pvc://claim/path` becomes the claim's mount path."""
    claim, path = _pvc(source)
    if claim is None:
        return source
    return f"{MODEL_MOUNT}/{claim}/{path}".rstrip("/")


def _pvc(source: str) -> tuple[str | None, str]:
    if not source.startswith("pvc://"):
        return None, ""
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, path


def _arch_deployment(spec: DeploymentSpec, arch: ArchPlan) -> ArchDeployment:
    return ArchDeployment(
        arch=arch.arch,
        tensor_parallel_size=arch.tensor_parallel_size,
        min_replicas=arch.min_replicas,
        max_replicas=arch.max_replicas,
        target_ongoing_requests=spec.target_ongoing_requests,
        # The planned backend, not "auto": what the status reports is what the replicas run, and
        # an image that cannot run it fails loudly instead of quietly running another kernel.
        gdn_backend=arch.backend.active,
        ray_resource=arch_resource(arch.arch),
        engine_kwargs=dict(arch.engine_args),
        use_gpu=True,
    )


def _owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _head_group(name: str, image: str, spec: DeploymentSpec) -> dict[str, Any]:
    res = spec.head_resources
    container = {
        "name": "ray-head",
        "image": image,
        "resources": {
            "requests": {"cpu": res.cpu, "memory": res.memory},
            "limits": {"memory": res.memory},
        },
        "ports": [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": SERVE_PORT, "name": "serve"},
        ],
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    return {
        # No Ray CPUs or GPUs on the head: the Serve controller runs there, replicas never do.
        "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": {LABEL_DEPLOYMENT: name, LABEL_ROLE: "head"}},
            "spec": {
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [_shm_volume()],
            },
        },
    }


def _worker_group(name: str, image: str, spec: DeploymentSpec, arch: ArchPlan) -> dict[str, Any]:
    tp = arch.tensor_parallel_size
    major, minor = _compute_capability(arch.arch)
    claim, _ = _pvc(spec.model.source)
    mounts: list[dict[str, Any]] = [{"name": "shm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [_shm_volume()]
    if claim is not None:
        mounts.append({"name": "model", "mountPath": f"{MODEL_MOUNT}/{claim}", "readOnly": True})
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    per_gpu = spec.worker_resources_per_gpu
    memory = scale_quantity(per_gpu.memory, tp)
    container = {
        "name": "ray-worker",
        "image": image,
        "env": _secret_env(spec),
        "resources": {
            "requests": {
                "cpu": scale_quantity(per_gpu.cpu, tp),
                "memory": memory,
                GPU_RESOURCE: str(tp),
            },
            "limits": {"memory": memory, GPU_RESOURCE: str(tp)},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    return {
        "groupName": arch.arch,
        "minReplicas": arch.min_replicas,
        "maxReplicas": arch.max_replicas,
        # One unit per GPU of the Pod: the Serve app places a replica (or each of its GPU
        # bundles) on this arch by asking for it.
        "rayStartParams": {"resources": _ray_resources({arch_resource(arch.arch): tp})},
        "template": {
            "metadata": {
                "labels": {LABEL_DEPLOYMENT: name, LABEL_ROLE: "worker", LABEL_ARCH: arch.arch}
            },
            "spec": {
                "nodeSelector": {**spec.node_selector, LABEL_MAJOR: major, LABEL_MINOR: minor},
                "tolerations": [dict(GPU_TOLERATION), *map(dict, spec.tolerations)],
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": volumes,
            },
        },
    }


def _compute_capability(arch: str) -> tuple[str, str]:
    # "sm89" -> ("8", "9"), "sm100" -> ("10", "0"): the minor is always one digit.
    digits = arch.removeprefix("sm")
    return digits[:-1], digits[-1]


def _ray_resources(resources: Mapping[str, int]) -> str:
    # KubeRay passes this value to `ray start --resources=` through a shell: the JSON must be
    # wrapped in double quotes with its own quotes escaped, e.g. "{\"gdn-arch-sm89\": 1}".
    return '"' + json.dumps(dict(resources)).replace('"', '\\"') + '"'


def _secret_env(spec: DeploymentSpec) -> list[dict[str, Any]]:
    refs: list[tuple[str, SecretRef | None]] = [
        (HUB_TOKEN_ENV, spec.model.hub_token),
        (API_KEY_ENV, spec.api_key),
    ]
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for env, ref in refs
        if ref is not None
    ]


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _shm_volume() -> dict[str, Any]:
    # Ray's object store and NCCL (tensor parallelism) need more than the runtime's 64 MiB.
    return {"name": "shm", "emptyDir": {"medium": "Memory"}}


def scale_quantity(value: str, factor: int) -> str:
    """`value` x `factor` as a Kubernetes quantity ("4" x 2 = "8", "32Gi" x 2 = "64Gi")."""
    total = parse_quantity(value) * factor
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20)):
        if total >= unit and total % unit == 0:
            return f"{int(total / unit)}{suffix}"
    if total == total.to_integral_value():
        return str(int(total))
    return f"{int(total * 1000)}m"  # CPU below one core; quantities stop at milli precision
