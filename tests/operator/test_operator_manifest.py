"""The RayService builder: the fields that matter, and the Serve app contract it writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from gdn_operator.inventory import build_inventory
from gdn_operator.manifest import (
    ANNOTATION_PLAN_HASH,
    ManifestError,
    ManifestOptions,
    build_rayservice,
    model_path,
    scale_quantity,
    serve_endpoint,
)
from gdn_operator.planner import plan_deployment
from gdn_operator.spec import parse_spec
from operator_testlib import H100, QWEN35_35B_A3B, RTX4090, deployment, gpu_node, model

from gdn_serve.serve.config import APP_IMPORT_PATH, AppConfig, arch_resource

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
    "upgradeStrategy": "NewClusterWithIncrementalUpgrade",
}
OPTIONS = ManifestOptions(default_image="registry.example/gdn-serve:1")


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
    # KubeRay's format: a JSON object wrapped in double quotes, inner quotes escaped.
    value = group["rayStartParams"]["resources"]
    assert value.startswith('"') and value.endswith('"')
    parsed: dict[str, int] = json.loads(value[1:-1].replace('\\"', '"'))
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
    assert rs["spec"]["upgradeStrategy"] == {"type": "NewClusterWithIncrementalUpgrade"}


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
    assert config.api_key_env == "GDN_SERVE_API_KEY"
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
                "name": "GDN_SERVE_API_KEY",
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
