"""The RayService builder: the fields that matter, and the Serve app contract it writes."""

from __future__ import annotations

import copy
import json
import shlex
from typing import Any

import kubernetes_validate
import pytest
import yaml
from ray.autoscaler._private.kuberay import autoscaling_config

from gdn_operator.api.spec import parse_spec
from gdn_operator.plan import kuberay
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.manifest import (
    ANNOTATION_PLAN_HASH,
    ManifestError,
    ManifestOptions,
    build_rayservice,
    model_path,
    scale_quantity,
    serve_endpoint,
)
from gdn_operator.plan.planner import plan_deployment
from gdn_serve.contract import API_KEY_ENV, APP_IMPORT_PATH, AppConfig, arch_resource
from tests.operator.operator_testlib import (
    H100,
    QWEN35_35B_A3B,
    RTX4090,
    TINY,
    cpu_node,
    deployment,
    gpu_node,
    model,
)

MIXED = [gpu_node("rtx-0", RTX4090), gpu_node("rtx-1", RTX4090), gpu_node("h-0", H100, gpus=8)]
SPEC: dict[str, Any] = {
    "model": model(
        QWEN35_35B_A3B,
        maxModelLen=32768,
        quantization="awq",
        hubTokenSecretRef={"name": "hf", "key": "token"},
    ),
    "apiKeySecretRef": {"name": "api"},
    "archs": [{"arch": "sm90", "tensorParallelSize": 2, "engineArgs": {"max_num_seqs": 64}}],
    "nodeSelector": {"pool": "llm"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "engineArgs": {"enable_prefix_caching": True},
    "upgradeStrategy": "None",
    "rayTokenSecretName": "ray-token",
}
CPU_IMAGE = "registry.example/gdn-serve-cpu:1"
OPTIONS = ManifestOptions(default_image="registry.example/gdn-serve:1", default_cpu_image=CPU_IMAGE)


# The CPU sample's shape: the tiny model on CPU nodes, one GPU node around to be left alone.
CPU_SPEC: dict[str, Any] = {
    "model": model(TINY, source="/opt/models/tiny-qwen35", maxModelLen=2048),
    "archs": [{"arch": "cpu", "maxReplicas": 2}],
    "resources": {"cpuWorker": {"cpu": "4", "memory": "8Gi"}},
    "apiKeySecretRef": {"name": "api"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
}
CPU_NODES = [cpu_node("cpu-0", cpu="8", memory="32Gi"), gpu_node("h-0", H100, gpus=8)]


def build(
    spec: dict[str, Any] = SPEC,
    nodes: list[dict[str, Any]] | None = None,
    cr: dict[str, Any] | None = None,
) -> dict[str, Any]:
    nodes = (
        nodes
        if nodes is not None
        else [
            {
                **n,
                "metadata": {**n["metadata"], "labels": {**n["metadata"]["labels"], "pool": "llm"}},
            }
            for n in MIXED
        ]
    )
    parsed = parse_spec(spec)
    plan = plan_deployment(parsed, build_inventory(nodes))
    return build_rayservice(
        cr or deployment(spec, name="qwen", namespace="llm"), parsed, plan, OPTIONS
    )


def groups(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def ray_resources(group: dict[str, Any]) -> dict[str, int]:
    """The custom resources as Ray's own autoscaler reads them from the group (its real code)."""
    parsed: dict[str, int] = autoscaling_config._get_custom_resources(
        {}, group["rayStartParams"], group["groupName"]
    )
    return parsed


def test_identity_and_ownership() -> None:
    cr = deployment(SPEC, name="qwen", namespace="llm")
    rs = build(cr=cr)
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    assert (rs["metadata"]["name"], rs["metadata"]["namespace"]) == ("qwen", "llm")
    (ref,) = rs["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "gdnserve.io/v1alpha1",
        "kind": "Qwen35Deployment",
        "name": "qwen",
        "uid": cr["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert rs["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gdn-operator"
    assert rs["spec"]["upgradeStrategy"] == {"type": "None"}


def test_head_has_no_gpus_and_is_not_in_the_serve_service() -> None:
    rs = build()
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["num-cpus"] == "0"  # no Serve replica lands on the head
    (container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in head["template"]["spec"]


def test_one_worker_group_per_planned_arch() -> None:
    rs = build()
    by_arch = groups(rs)
    assert set(by_arch) == {"sm89", "sm90"}
    for arch, major, minor, tp in (("sm89", "8", "9", 1), ("sm90", "9", "0", 2)):
        group = by_arch[arch]
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {
            "pool": "llm",
            "nvidia.com/gpu.compute.major": major,
            "nvidia.com/gpu.compute.minor": minor,
        }
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(tp)
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(tp)
        assert ray_resources(group) == {arch_resource(arch): tp}
        assert group["template"]["metadata"]["labels"]["gdnserve.io/arch"] == arch
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    assert (by_arch["sm90"]["minReplicas"], by_arch["sm90"]["maxReplicas"]) == (1, 4)
    # Ray's autoscaler owns `replicas`; the operator must not fight it on every apply.
    assert all("replicas" not in g for g in by_arch.values())


def test_worker_resources_scale_with_the_gpus_of_a_replica() -> None:
    container = groups(build())["sm90"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "8"  # 4 per GPU x TP 2
    assert container["resources"]["requests"]["memory"] == "64Gi"
    assert container["resources"]["limits"]["memory"] == "64Gi"


def test_serve_config_runs_the_gdn_serve_app_with_the_plan() -> None:
    serve = yaml.safe_load(build()["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == APP_IMPORT_PATH
    config = AppConfig.from_dict(app["args"])  # the application's own parser and validation
    assert config.served_model_name == "Qwen3.5-35B-A3B"
    assert config.model_source == "Qwen/Qwen3.5-35B-A3B"
    assert config.max_model_len == 32768
    assert config.api_key_env == API_KEY_ENV
    assert config.engine_kwargs["quantization"] == "awq"
    assert config.engine_kwargs["enable_prefix_caching"] is True
    archs = {a.arch: a for a in config.archs}
    assert archs["sm90"].tensor_parallel_size == 2
    assert archs["sm90"].engine_kwargs == {"max_num_seqs": 64, "enable_expert_parallel": True}
    assert archs["sm89"].engine_kwargs == {}
    for arch in archs.values():
        assert arch.ray_resource == arch_resource(arch.arch)
        assert arch.gdn_backend != "auto"  # the planned backend, resolved per arch
        assert arch.use_gpu


def test_secrets_only_through_secret_key_refs() -> None:
    rs = build()
    for group in groups(rs).values():
        env = group["template"]["spec"]["containers"][0]["env"]
        assert env == [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": "api", "key": "api-key"}},
            },
        ]
    assert "HF_TOKEN" not in rs["spec"]["serveConfigV2"]
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "env" not in head


def test_pods_run_as_non_root() -> None:
    rs = build()
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_pvc_model_source_is_mounted_read_only() -> None:
    spec = {**SPEC, "model": {**SPEC["model"], "source": "pvc://models/qwen/35b-awq"}}
    rs = build(spec)
    pod = groups(rs)["sm89"]["template"]["spec"]
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    assert {"name": "model", "mountPath": "/models/models", "readOnly": True} in pod["containers"][
        0
    ]["volumeMounts"]
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["model_source"] == "/models/models/qwen/35b-awq"
    assert model_path("pvc://models") == "/models/models"
    assert model_path("/opt/model") == "/opt/model"


def test_plan_hash_is_stable_and_follows_the_plan() -> None:
    cr = deployment(SPEC, name="qwen", namespace="llm")
    first, again = build(cr=cr), build(cr=cr)
    assert first == again
    digest = first["metadata"]["annotations"][ANNOTATION_PLAN_HASH]
    other = build({**SPEC, "autoscaling": {"targetOngoingRequests": 8}}, cr=cr)
    assert other["metadata"]["annotations"][ANNOTATION_PLAN_HASH] != digest


def test_refuses_without_an_image_or_a_plan() -> None:
    spec = {**SPEC, "nodeSelector": {}}
    parsed = parse_spec(spec)
    plan = plan_deployment(parsed, build_inventory(MIXED))
    cr = deployment(spec)
    with pytest.raises(ManifestError, match="no serving image"):
        build_rayservice(cr, parsed, plan, ManifestOptions())
    empty = plan_deployment(parsed, build_inventory([]))
    with pytest.raises(ManifestError, match="no schedulable GPU nodes"):
        build_rayservice(cr, parsed, empty, OPTIONS)


def test_spec_image_wins_over_the_default() -> None:
    rs = build({**SPEC, "image": "mine:2"})
    assert (
        rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == "mine:2"
    )


@pytest.mark.parametrize(
    ("value", "factor", "expected"),
    [
        ("4", 2, "8"),
        ("32Gi", 2, "64Gi"),
        ("500m", 2, "1"),
        ("250m", 1, "250m"),
        ("1536Mi", 3, "4608Mi"),
        ("1Gi", 1, "1Gi"),
    ],
)
def test_scale_quantity(value: str, factor: int, expected: str) -> None:
    assert scale_quantity(value, factor) == expected


def test_endpoint_is_the_kuberay_serve_service() -> None:
    assert serve_endpoint("qwen", "llm") == "http://qwen-serve-svc.llm.svc:8000/v1"


def test_ray_token_authentication_from_a_secret_only_by_reference() -> None:
    rs = build()
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token",
        "secretName": "ray-token",
    }
    generated = build({k: v for k, v in SPEC.items() if k != "rayTokenSecretName"})
    # Without a named Secret KubeRay generates one per Ray cluster; auth is on all the same.
    assert generated["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    cluster = rs["spec"]["rayClusterConfig"]
    containers = [
        c
        for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for c in pod["template"]["spec"]["containers"]
    ]
    for container in containers:
        for env in container.get("env", []):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def test_ray_resources_in_the_form_kuberay_the_shell_and_ray_all_read() -> None:
    group = groups(build())["sm89"]
    value = group["rayStartParams"]["resources"]
    assert value == "'{\"gdn-arch-sm89\":1}'"
    # KubeRay's Pod builder (its rule, written in kuberay.py) and Ray's autoscaler (its code).
    assert kuberay.parse_resources(value) == {"gdn-arch-sm89": 1.0}
    assert ray_resources(group) == {"gdn-arch-sm89": 1}
    # The container runs `ray start ... --resources=<value>` through a shell: Ray gets JSON.
    (argument,) = [a for a in shlex.split(f"ray start --resources={value}") if "resources" in a]
    assert json.loads(argument.removeprefix("--resources=")) == {"gdn-arch-sm89": 1}
    # Negative control: the escaped form Ray's docs once showed is read by Ray but not KubeRay.
    escaped = '"{\\"gdn-arch-sm89\\": 1}"'
    assert autoscaling_config._get_custom_resources({}, {"resources": escaped}, "g") == {
        "gdn-arch-sm89": 1
    }
    assert kuberay.parse_resources(escaped) is None


def test_worker_groups_keep_their_place_and_new_archs_are_appended() -> None:
    h100_only = [n for n in MIXED if n["metadata"]["name"].startswith("h-")]
    spec = {**SPEC, "nodeSelector": {}}
    cr = deployment(spec, name="qwen", namespace="llm")
    parsed = parse_spec(spec)
    first = build_rayservice(
        cr, parsed, plan_deployment(parsed, build_inventory(h100_only)), OPTIONS
    )
    both = plan_deployment(parsed, build_inventory(MIXED))
    grown = build_rayservice(cr, parsed, both, OPTIONS, current=first)
    names = [g["groupName"] for g in grown["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert names == ["sm90", "sm89"]  # sm89 sorts first, but sm90 was there: it keeps place 0
    # Negative control: without the current RayService the plan's order (by name) is used.
    fresh = build_rayservice(cr, parsed, both, OPTIONS)
    assert [g["groupName"] for g in fresh["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == [
        "sm89",
        "sm90",
    ]


@pytest.mark.parametrize(("dtype", "runs"), [("bfloat16", "triton-fused"), ("float16", "triton")])
def test_the_backend_reported_and_written_is_the_one_the_layer_runs(dtype: str, runs: str) -> None:
    # The fused kernel runs inside vLLM's layer only with a bf16 model (rules.layer_backend, the
    # rule the plugin applies); asked for on float16, the replicas run the unfused kernel.
    spec = {
        **SPEC,
        "nodeSelector": {},
        "gdnBackend": "triton-fused",
        "model": {**SPEC["model"], "dtype": dtype},
    }
    rs = build(spec, nodes=MIXED)
    parsed = parse_spec(spec)
    plan = plan_deployment(parsed, build_inventory(MIXED))
    assert {a.arch for a in plan.archs} == {"sm89", "sm90"}
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    for arch in plan.archs:
        assert arch.backend.active == runs
    assert {a["gdn_backend"] for a in args["archs"]} == {runs}
    if runs == "triton":
        assert "fused-layer-needs-qwen3.5-layout-and-bf16" in plan.archs[0].backend.reason


@pytest.mark.parametrize(
    "spec", [SPEC, {k: v for k, v in SPEC.items() if k != "apiKeySecretRef"}, CPU_SPEC]
)
def test_pod_templates_are_valid_for_kubernetes_itself(spec: dict[str, Any]) -> None:
    # Kubernetes' own OpenAPI schema for core/v1 (kubernetes-validate, strict: unknown fields
    # are errors), at the API server version the real-API-server tests run against.
    nodes = CPU_NODES if spec is CPU_SPEC else None
    cluster = build(spec, nodes=nodes)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": group["template"],
        }
        kubernetes_validate.validate(template, "1.36.0", strict=True)
    if spec is CPU_SPEC:
        return  # the negative control below is the GPU case's
    # Negative control: the validator does refuse a broken template.
    broken = copy.deepcopy(cluster["headGroupSpec"]["template"])
    broken["spec"]["containers"][0]["resources"]["limits"]["memory"] = ["8Gi"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "x"},
                "template": broken,
            },
            "1.36.0",
            strict=True,
        )


# -- CPU deployments -----------------------------------------------------------------------


def test_a_cpu_plan_is_one_cpu_group_without_gpus_on_x86_nodes_without_gpu_labels() -> None:
    rs = build(CPU_SPEC, nodes=CPU_NODES)
    cluster = rs["spec"]["rayClusterConfig"]
    assert list(groups(rs)) == ["cpu"]
    group = groups(rs)["cpu"]
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert "nvidia.com/gpu" not in json.dumps(container)
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.compute.major", "operator": "DoesNotExist"}]}
    ]
    assert pod["tolerations"] == CPU_SPEC["tolerations"]  # the spec's, no GPU pool's
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 2)
    # Ray's own autoscaler reads one unit of the cpu arch's resource per Pod: one engine each.
    assert ray_resources(group) == {arch_resource("cpu"): 1}
    # One Python and one Ray in the whole cluster: the head runs the CPU image too.
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {head["image"], container["image"]} == {CPU_IMAGE}


def test_a_cpu_plan_writes_an_app_config_of_cpu_engines() -> None:
    rs = build(CPU_SPEC, nodes=CPU_NODES)
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    config = AppConfig.from_dict(args)  # the application's own parser
    (arch,) = config.archs
    assert (arch.arch, arch.use_gpu, arch.tensor_parallel_size) == ("cpu", False, 1)
    assert arch.ray_resource == arch_resource("cpu")
    assert arch.gdn_backend == "cpu"
    assert arch.engine_kwargs == {"kv_cache_memory_bytes": 2**30}
    assert config.engine_kwargs["dtype"] == "bfloat16"
    assert config.model_source == "/opt/models/tiny-qwen35" and config.max_model_len == 2048
    assert config.api_key_env == API_KEY_ENV


def test_a_cpu_plan_needs_the_cpu_image_never_the_gpu_one() -> None:
    parsed = parse_spec(CPU_SPEC)
    plan = plan_deployment(parsed, build_inventory(CPU_NODES))
    cr = deployment(CPU_SPEC)
    gpu_only = ManifestOptions(default_image="registry.example/gdn-serve:1")
    with pytest.raises(ManifestError, match=r"no CPU serving image: .*--serving-cpu-image"):
        build_rayservice(cr, parsed, plan, gpu_only)
    # spec.image still wins, as for GPU deployments.
    own = parse_spec({**CPU_SPEC, "image": "mine/cpu:2"})
    rs = build_rayservice(cr, own, plan, gpu_only)
    assert groups(rs)["cpu"]["template"]["spec"]["containers"][0]["image"] == "mine/cpu:2"
    # And a GPU plan never takes the CPU image.
    gpu_spec = parse_spec({**SPEC, "nodeSelector": {}})
    gpu_plan = plan_deployment(gpu_spec, build_inventory(MIXED))
    assert gpu_plan.archs
    cpu_only = ManifestOptions(default_cpu_image=CPU_IMAGE)
    with pytest.raises(ManifestError, match=r"no serving image: .*--serving-image"):
        build_rayservice(deployment(SPEC), gpu_spec, gpu_plan, cpu_only)
