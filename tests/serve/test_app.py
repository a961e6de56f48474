"""How one arch of the application config becomes a Ray Serve LLM config (the cluster path,
GPU archs, is not run here; these are the fields that place and size it)."""

from __future__ import annotations

from gdn_serve.serve.app import llm_config
from gdn_serve.serve.config import AppConfig, ArchDeployment, arch_resource
from gdn_serve.serve.loopback import SETUP_HOOK

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
    assert cluster["env_vars"] == {"GDN_SERVE_BACKEND": "triton"}
    assert "worker_process_setup_hook" not in cluster
    assert local["worker_process_setup_hook"] == SETUP_HOOK
