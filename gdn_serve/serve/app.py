"""The Ray Serve application: an OpenAI-compatible API over vLLM engines, built with
`ray.serve.llm`.

`build_app(args)` is the `import_path` target of the application (locally and in a RayService's
serveConfigV2); `args` is an `AppConfig` as a dict. One arch: the LLM deployment itself is the
ingress and streams directly (see `docs/architecture.md` for why). Several archs: one LLM
deployment per arch behind one OpenAI ingress.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.llm import LLMConfig, build_openai_app

from gdn_serve.serve import loopback
from gdn_serve.serve.config import AppConfig, ArchDeployment


def engine_kwargs(config: AppConfig, arch: ArchDeployment) -> dict[str, Any]:
    """vLLM engine arguments for one arch: app-wide ones, then the arch's own on top."""
    kwargs: dict[str, Any] = {"tensor_parallel_size": arch.tensor_parallel_size}
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    kwargs.update(config.engine_kwargs)
    kwargs.update(arch.engine_kwargs)
    return kwargs


def deployment_config(arch: ArchDeployment) -> dict[str, Any]:
    """Serve deployment options: autoscaling bounds and placement on the arch's worker group."""
    actor_options: dict[str, Any] = {}
    if not arch.use_gpu:
        # The engine bundle already holds the CPU the replica needs; asking for another one
        # deadlocks scheduling on small machines (the ingress replica never gets placed).
        actor_options["num_cpus"] = 0
    if arch.ray_resource:
        actor_options["resources"] = {arch.ray_resource: 0.001}
    return {
        "name": f"llm-{arch.arch}",
        "autoscaling_config": {
            "min_replicas": arch.min_replicas,
            "max_replicas": arch.max_replicas,
            "initial_replicas": max(arch.min_replicas, 1),
            "target_ongoing_requests": arch.target_ongoing_requests,
        },
        "ray_actor_options": actor_options,
    }


def runtime_env(config: AppConfig, arch: ArchDeployment) -> dict[str, Any]:
    env: dict[str, Any] = {"env_vars": {"GDN_SERVE_BACKEND": arch.gdn_backend}}
    if config.loopback_only:
        # Takes the place of Ray Serve LLM's own hook, which is a no-op in Ray 2.60.
        env["worker_process_setup_hook"] = loopback.SETUP_HOOK
    return env


def llm_config(config: AppConfig, arch: ArchDeployment) -> LLMConfig:
    return LLMConfig(
        model_loading_config={
            "model_id": config.served_model_name,
            "model_source": config.model_source,
        },
        accelerator_config={"kind": "gpu" if arch.use_gpu else "cpu"},
        engine_kwargs=engine_kwargs(config, arch),
        deployment_config=deployment_config(arch),
        runtime_env=runtime_env(config, arch),
        log_engine_metrics=True,
    )


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run` / serveConfigV2 (`args` is an AppConfig dict)."""
    config = AppConfig.from_dict(args)
    if len(config.archs) != 1:
        raise NotImplementedError("serving several archs behind one ingress is not built yet")
    return build_openai_app({"llm_configs": [llm_config(config, config.archs[0])]})
