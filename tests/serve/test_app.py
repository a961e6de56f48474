"""How one arch of the application config becomes a Ray Serve LLM config (the cluster path,
GPU archs, is not run here; these are the fields that place and size it), and the config the
operator writes for CPU nodes read back by the application."""

from __future__ import annotations

import dataclasses
import types

import pytest
import yaml
from ray.llm._internal.serve.core.server import llm_server
from ray.serve.llm import LLMConfig

from gdn_operator.api.spec import parse_spec
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.kuberay import parse_resources
from gdn_operator.plan.manifest import ManifestOptions, build_rayservice
from gdn_operator.plan.planner import plan_deployment
from gdn_serve import envs
from gdn_serve.contract import AppConfig, ArchDeployment, ConfigError, arch_resource
from gdn_serve.serve.app import llm_config, placement_group_config
from gdn_serve.serve.loopback import SETUP_HOOK
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import cpu_node, deployment

SM90 = ArchDeployment(
    arch="sm90",
    tensor_parallel_size=2,
    min_replicas=1,
    max_replicas=4,
    target_ongoing_requests=8,
    gdn_backend="triton",
    ray_resource=arch_resource("sm90"),
    engine_kwargs={"enable_expert_parallel": True},
)


def _config(**overrides: object) -> AppConfig:
    fields: dict[str, object] = {
        "model_source": "/models/qwen",
        "served_model_name": "qwen",
        "archs": (SM90,),
        "max_model_len": 8192,
        "engine_kwargs": {"dtype": "bfloat16", "tensor_parallel_size": 1},
    }
    return AppConfig(**{**fields, **overrides})  # type: ignore[arg-type]


def test_a_gpu_arch_is_placed_by_its_resource_and_scaled_within_its_bounds() -> None:
    llm = llm_config(_config(), SM90)
    assert llm.model_id == "qwen"
    assert llm.deployment_config["name"] == "llm-sm90"
    assert llm.deployment_config["ray_actor_options"] == {"resources": {"gdn-arch-sm90": 0.001}}
    scaling = llm.deployment_config["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4)
    assert scaling["target_ongoing_requests"] == 8
    assert llm.accelerator_config is not None and llm.accelerator_config.kind == "gpu"


def test_engine_arguments_layer_app_then_arch_and_keep_the_planned_tp() -> None:
    engine = llm_config(_config(), SM90).engine_kwargs
    assert engine["max_model_len"] == 8192 and engine["dtype"] == "bfloat16"
    assert engine["enable_expert_parallel"] is True
    # an app-wide tensor_parallel_size (a user's engineArgs) cannot undo the arch's plan
    assert engine["tensor_parallel_size"] == 2


def test_the_replica_gets_its_backend_and_the_loopback_hook_only_locally() -> None:
    cluster = llm_config(_config(), SM90).runtime_env or {}
    local = llm_config(_config(loopback_only=True), SM90).runtime_env or {}
    assert cluster["env_vars"] == {envs.BACKEND.name: "triton"}
    assert "worker_process_setup_hook" not in cluster
    assert local["worker_process_setup_hook"] == SETUP_HOOK


@pytest.fixture(autouse=True)
def _no_ray_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Serve LLM reads the driver's runtime env while building deployment options, which
    would start a local Ray instance; a fake runtime context (an empty env) stands in for it."""
    fake = types.SimpleNamespace(runtime_env={})
    monkeypatch.setattr(llm_server.ray, "get_runtime_context", lambda: fake)


def _bundles(llm: LLMConfig) -> list[dict[str, float]]:
    """The placement group Ray Serve LLM asks for per replica (replica actor merged into the
    first bundle), from its own deployment options: what the Serve controller schedules."""
    return list(llm_server.LLMServer.get_deployment_options(llm)["placement_group_bundles"])


def test_every_gpu_bundle_of_a_tp2_engine_asks_for_the_arch() -> None:
    bundles = _bundles(llm_config(_config(), SM90))
    assert len(bundles) == 2 and all(b["GPU"] == 1 for b in bundles)
    assert all(b.get("gdn-arch-sm90", 0) > 0 for b in bundles), bundles


def test_without_the_placement_config_only_the_first_bundle_asks_for_the_arch() -> None:
    # Negative control: what Ray Serve LLM builds from the actor's resource alone. The test
    # above would fail on it, so it sees the second worker's placement.
    llm = llm_config(_config(), SM90).model_copy(update={"placement_group_config": None})
    bundles = _bundles(llm)
    assert [b.get("gdn-arch-sm90", 0) > 0 for b in bundles] == [True, False], bundles


def test_a_cpu_arch_bundle_asks_for_cpu_and_its_arch_and_none_without_a_resource() -> None:
    cpu = ArchDeployment(
        arch="cpu",
        tensor_parallel_size=1,
        min_replicas=1,
        max_replicas=1,
        target_ongoing_requests=4,
        gdn_backend="torch",
        use_gpu=False,
        ray_resource=arch_resource("cpu"),
    )
    config = _config(archs=(cpu,))
    assert placement_group_config(cpu) == {
        "bundle_per_worker": {"CPU": 1, "gdn-arch-cpu": 0.001},
        "strategy": "PACK",
    }
    bare = dataclasses.replace(cpu, ray_resource=None)
    assert placement_group_config(bare) is None
    assert all(b.get("gdn-arch-cpu", 0) > 0 for b in _bundles(llm_config(config, cpu)))


def test_the_rayservice_the_operator_writes_for_cpu_nodes_is_an_app_this_builds() -> None:
    """The CPU sample, planned and written by the operator's own code, read back by the app:
    the engine runs on CPU, and every bundle asks for the resource the `cpu` group declares."""
    sample = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/tiny-cpu.yaml").read_text())
    spec = parse_spec(sample["spec"])
    plan = plan_deployment(spec, build_inventory([cpu_node("c", cpu="8", memory="32Gi")]))
    options = ManifestOptions(default_cpu_image="registry.example/gdn-serve-cpu:1")
    rs = build_rayservice(deployment(sample["spec"]), spec, plan, options)
    (group,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    declared = parse_resources(group["rayStartParams"]["resources"]) or {}
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]

    config = AppConfig.from_dict(args)
    (arch,) = config.archs
    llm = llm_config(config, arch)
    assert llm.accelerator_config is not None and llm.accelerator_config.kind == "cpu"
    assert llm.engine_kwargs["dtype"] == "bfloat16"
    assert llm.engine_kwargs["kv_cache_memory_bytes"] == 2**30
    assert llm.deployment_config["ray_actor_options"]["num_cpus"] == 0
    bundles = _bundles(llm)
    assert bundles and all(b["CPU"] >= 1 and not b.get("GPU") for b in bundles), bundles
    custom = [{k for k, v in b.items() if v and k not in ("CPU", "GPU")} for b in bundles]
    assert all(c and c <= set(declared) for c in custom), (bundles, declared)
    # Negative control: the contract refuses a cpu arch that asks for GPUs.
    args["archs"][0]["use_gpu"] = True
    with pytest.raises(ConfigError, match="use_gpu must be false"):
        AppConfig.from_dict(args)
