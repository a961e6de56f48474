"""Plan -> the `ray.io/v1` RayService that runs it. Pure.

One Ray cluster: a head Pod with no GPUs (and no Ray CPUs, so no replica lands there) that is kept
out of the serve Service, and one worker group per planned arch, pinned to that arch's nodes by the
GPU Feature Discovery labels and advertising the Ray custom resource that names the arch. Each
worker Pod holds exactly one replica's GPUs (the tensor parallel size). A CPU plan has one `cpu`
group instead, on x86-64 nodes without those labels, one CPU engine per Pod, and the whole cluster
runs the CPU serving image (a Ray cluster needs one Python and one Ray on every node).
`serveConfigV2` starts the `gdn_serve` application with an `AppConfig` built from the plan, so
the application's own validation runs on what the operator writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.utils.quantity import parse_quantity

from gdn_operator.api import crd
from gdn_operator.api.spec import DeploymentSpec, SecretRef
from gdn_operator.plan import kuberay
from gdn_operator.plan.inventory import (
    CPU_NODE_ARCH,
    GPU_RESOURCE,
    GPU_TOLERATION,
    LABEL_CPU_ARCH,
    LABEL_MAJOR,
    LABEL_MINOR,
)
from gdn_operator.plan.planner import ArchPlan, Plan
from gdn_serve.backends.rules import CPU_ARCH
from gdn_serve.contract import (
    API_KEY_ENV,
    APP_IMPORT_PATH,
    AppConfig,
    ArchDeployment,
    arch_resource,
)

RAY_VERSION = "2.60.0"
APP_NAME = "qwen35"
SERVE_PORT = 8000
MODEL_MOUNT = "/models"
HUB_TOKEN_ENV = "HF_TOKEN"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user of the rayproject images

LABEL_DEPLOYMENT = f"{crd.GROUP}/deployment"
LABEL_ARCH = f"{crd.GROUP}/arch"
LABEL_ROLE = f"{crd.GROUP}/role"
ANNOTATION_PLAN_HASH = f"{crd.GROUP}/plan-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "gdn-operator"}


class ManifestError(ValueError):
    """The plan cannot be turned into a RayService (e.g. no image, or one KubeRay would reject);
    the message says why. A ValueError, so the reconciler reports it as Degraded."""


@dataclass(frozen=True)
class ManifestOptions:
    default_image: str | None = None  # the operator's --serving-image
    ray_version: str = RAY_VERSION
    default_cpu_image: str | None = None  # the operator's --serving-cpu-image

    def image_for(self, plan: Plan) -> tuple[str | None, str]:
        """(the default serving image for this plan, the flag that sets it)."""
        if plan.on_cpu:
            return self.default_cpu_image, "--serving-cpu-image"
        return self.default_image, "--serving-image"


def serve_endpoint(name: str, namespace: str) -> str:
    """Base URL of the OpenAI API: KubeRay names the serve Service `<rayservice>-serve-svc`."""
    return f"http://{name}-serve-svc.{namespace}.svc:{SERVE_PORT}/v1"


def worker_selector(name: str) -> str:
    return f"{LABEL_DEPLOYMENT}={name},{LABEL_ROLE}=worker"


def build_rayservice(
    owner: Mapping[str, Any],
    spec: DeploymentSpec,
    plan: Plan,
    options: ManifestOptions,
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The RayService for `owner` (the Qwen35Deployment object), with the plan's hash annotated.

    `current` is the RayService as the cluster has it (None: not created yet): its worker groups
    keep their order, because KubeRay updates a Ray cluster in place only when groups are
    appended; any other change of the list makes it build a whole new cluster. Raises
    ManifestError with KubeRay's rules in words when KubeRay would reject the result."""
    if not plan.archs:
        raise ManifestError(plan.problem() or "nothing planned")
    default_image, flag = options.image_for(plan)
    image = spec.image or default_image
    if not image:
        kind = "CPU serving image" if plan.on_cpu else "serving image"
        raise ManifestError(f"no {kind}: set spec.image or the operator's {flag}")
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
                # Token authentication on every Ray endpoint (GCS, dashboard, client): KubeRay
                # puts the token from the Secret into each Ray container's environment.
                "authOptions": _auth_options(spec),
                "headGroupSpec": _head_group(name, image, spec),
                "workerGroupSpecs": [
                    _worker_group(name, image, spec, a) for a in ordered_archs(plan, current)
                ],
            },
        },
    }
    found = kuberay.violations(body)
    if found:
        raise ManifestError(kuberay.describe(found))
    body["metadata"]["annotations"] = {ANNOTATION_PLAN_HASH: manifest_hash(body)}
    return body


def ordered_archs(plan: Plan, current: Mapping[str, Any] | None) -> list[ArchPlan]:
    """The planned archs with those `current` already runs first, in its order; new archs after
    them, in the plan's (name) order."""
    groups = ((current or {}).get("spec") or {}).get("rayClusterConfig", {}).get(
        "workerGroupSpecs"
    ) or []
    place = {str(g.get("groupName")): i for i, g in enumerate(groups)}
    return sorted(plan.archs, key=lambda a: (place.get(a.arch, len(place)), a.arch))


def _auth_options(spec: DeploymentSpec) -> dict[str, str]:
    options = {"mode": "token"}
    if spec.ray_token_secret:
        # The user's Secret (key `auth_token`), only by name; else KubeRay generates one.
        options["secretName"] = spec.ray_token_secret
    return options


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
        use_gpu=arch.arch != CPU_ARCH,
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
        # The dashboard listens on the Pod's interfaces, as KubeRay expects (its controller
        # deploys serveConfigV2 and reads Serve status through the head Service); token
        # authentication guards it, the chart's NetworkPolicy limits who reaches it.
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


@dataclass(frozen=True)
class _Placement:
    """What differs between a GPU and a CPU worker group."""

    resources: dict[str, Any]  # the container's requests and limits
    scheduling: dict[str, Any]  # the Pod's nodeSelector, affinity, tolerations
    units: int  # of the arch's Ray resource each worker Pod declares


def _gpu_placement(spec: DeploymentSpec, arch: ArchPlan) -> _Placement:
    tp = arch.tensor_parallel_size
    major, minor = _compute_capability(arch.arch)
    per_gpu = spec.worker_resources_per_gpu
    memory = scale_quantity(per_gpu.memory, tp)
    return _Placement(
        resources={
            "requests": {
                "cpu": scale_quantity(per_gpu.cpu, tp),
                "memory": memory,
                GPU_RESOURCE: str(tp),
            },
            "limits": {"memory": memory, GPU_RESOURCE: str(tp)},
        },
        scheduling={
            "nodeSelector": {**spec.node_selector, LABEL_MAJOR: major, LABEL_MINOR: minor},
            "tolerations": [dict(GPU_TOLERATION), *map(dict, spec.tolerations)],
        },
        # One unit per GPU of the Pod: the Serve app places a replica (or each of its GPU
        # bundles) on this arch by asking for it.
        units=tp,
    )


def _cpu_placement(spec: DeploymentSpec) -> _Placement:
    pod = spec.cpu_worker_resources
    # The inventory's CPU nodes: x86-64 (the CPU image's vLLM build) and no GPU Feature
    # Discovery labels, so CPU replicas never take a GPU node's CPU and memory.
    no_gpu = {"key": LABEL_MAJOR, "operator": "DoesNotExist"}
    return _Placement(
        resources={
            "requests": {"cpu": pod.cpu, "memory": pod.memory},
            "limits": {"memory": pod.memory},
        },
        scheduling={
            "nodeSelector": {**spec.node_selector, LABEL_CPU_ARCH: CPU_NODE_ARCH},
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [no_gpu]}]
                    }
                }
            },
            "tolerations": [dict(t) for t in spec.tolerations],
        },
        units=1,  # one engine per Pod
    )


def _worker_group(name: str, image: str, spec: DeploymentSpec, arch: ArchPlan) -> dict[str, Any]:
    placement = _cpu_placement(spec) if arch.arch == CPU_ARCH else _gpu_placement(spec, arch)
    claim, _ = _pvc(spec.model.source)
    mounts: list[dict[str, Any]] = [{"name": "shm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [_shm_volume()]
    if claim is not None:
        mounts.append({"name": "model", "mountPath": f"{MODEL_MOUNT}/{claim}", "readOnly": True})
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    container = {
        "name": "ray-worker",
        "image": image,
        "env": _secret_env(spec),
        "resources": placement.resources,
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    return {
        "groupName": arch.arch,
        "minReplicas": arch.min_replicas,
        "maxReplicas": arch.max_replicas,
        "rayStartParams": {
            "resources": _ray_resources({arch_resource(arch.arch): placement.units})
        },
        "template": {
            "metadata": {
                "labels": {LABEL_DEPLOYMENT: name, LABEL_ROLE: "worker", LABEL_ARCH: arch.arch}
            },
            "spec": {
                **placement.scheduling,
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
    # The one form all three readers take: KubeRay's Pod builder trims the quotes and parses the
    # JSON (it fails on escaped inner quotes and then drops `--num-gpus`), the shell of
    # `ray start --resources='{...}'` removes the single quotes, and Ray's autoscaler drops the
    # first and last character and parses the rest. This is also the form KubeRay itself writes.
    return "'" + json.dumps(dict(resources), separators=(",", ":")) + "'"


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
