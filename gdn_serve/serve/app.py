"""The Ray Serve application: an OpenAI-compatible API over vLLM engines, built with
`ray.serve.llm`.

`build_app(args)` is the `import_path` target of the application (locally and in a RayService's
serveConfigV2); `args` is an `AppConfig` as a dict. With direct streaming enabled in the
environment (the local single-arch stack), Ray Serve LLM's OpenAI app whose LLM deployment is
itself the ingress (see `docs/architecture.md`). Otherwise one LLM deployment per arch (one or
more) behind one OpenAI ingress that balances them by load. Either way the app that answers
HTTP gets our middlewares: the request checks, and the API key check if a key is configured.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.llm._internal.serve.constants import RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import init as init_ingress_app
from ray.serve import Application
from ray.serve.llm import LLMConfig, build_llm_deployment, build_openai_app
from ray.serve.llm.ingress import make_fastapi_ingress

from gdn_serve import envs
from gdn_serve.contract import AppConfig, ArchDeployment, ConfigError
from gdn_serve.serve import loopback
from gdn_serve.serve.auth import ApiKeyMiddleware
from gdn_serve.serve.request_checks import RequestChecksMiddleware, validation_error


def middlewares(config: AppConfig) -> list[tuple[Any, dict[str, Any]]]:
    """The ASGI middlewares of the app that answers HTTP and their options, innermost first
    (Starlette and vLLM wrap each added one around the ones before): the key check outermost,
    so that a request without the key is refused before its body is read."""
    chain: list[tuple[Any, dict[str, Any]]] = [(RequestChecksMiddleware, {})]
    if config.api_key_env:
        chain.append((ApiKeyMiddleware, {"env_var": config.api_key_env}))
    return chain


def vllm_middleware_paths(config: AppConfig) -> list[str]:
    """`middlewares` as vLLM's `middleware` frontend option names them: under direct streaming
    the replica's own vLLM server answers HTTP, and vLLM constructs each with the app alone, so
    the key check reads its default variable."""
    if config.api_key_env not in (None, envs.API_KEY.name):
        raise ConfigError(
            f"direct streaming reads the API key from {envs.API_KEY.name}, not {config.api_key_env}"
        )
    return [f"{cls.__module__}.{cls.__qualname__}" for cls, _ in middlewares(config)]


def engine_kwargs(config: AppConfig, arch: ArchDeployment) -> dict[str, Any]:
    """vLLM engine arguments for one arch: app-wide ones, the arch's own on top, and the arch's
    tensor parallel size last (it was planned for this arch's GPUs; an engine argument given
    for the whole app must not override it)."""
    kwargs: dict[str, Any] = {}
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    kwargs.update(config.engine_kwargs)
    kwargs.update(arch.engine_kwargs)
    kwargs["tensor_parallel_size"] = arch.tensor_parallel_size
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


def placement_group_config(arch: ArchDeployment) -> dict[str, Any] | None:
    """Every engine worker's bundle asks for the arch's resource, not only the replica actor's:
    Ray Serve LLM merges the actor into the first bundle, so without this a TP > 1 engine's
    other GPU workers could be packed onto a node of another arch (PACK is best effort)."""
    if not arch.ray_resource:
        return None
    device = "GPU" if arch.use_gpu else "CPU"
    return {"bundle_per_worker": {device: 1, arch.ray_resource: 0.001}, "strategy": "PACK"}


def runtime_env(config: AppConfig, arch: ArchDeployment) -> dict[str, Any]:
    env: dict[str, Any] = {"env_vars": {envs.BACKEND.name: arch.gdn_backend}}
    if config.loopback_only:
        # Takes the place of Ray Serve LLM's own hook, which is a no-op in Ray 2.60.
        env["worker_process_setup_hook"] = loopback.SETUP_HOOK
    return env


def llm_config(
    config: AppConfig, arch: ArchDeployment, frontend: dict[str, Any] | None = None
) -> LLMConfig:
    """`frontend`: vLLM frontend options (its HTTP server's), only where that server answers."""
    return LLMConfig.model_validate(
        {
            "model_loading_config": {
                "model_id": config.served_model_name,
                "model_source": config.model_source,
            },
            "accelerator_config": {"kind": "gpu" if arch.use_gpu else "cpu"},
            "engine_kwargs": engine_kwargs(config, arch) | (frontend or {}),
            "deployment_config": deployment_config(arch),
            "placement_group_config": placement_group_config(arch),
            "runtime_env": runtime_env(config, arch),
            "log_engine_metrics": True,
        }
    )


def ingress_app(config: AppConfig) -> Any:
    """Ray Serve LLM's ingress FastAPI app, with our middlewares around it."""
    app = init_ingress_app()
    app.add_exception_handler(RequestValidationError, validation_error)  # replaces Ray's
    for cls, options in middlewares(config):
        app.add_middleware(cls, **options)
    return app


def build_balanced_app(config: AppConfig) -> Application:
    """One LLM deployment per arch, all under the served model name, behind one ingress that
    sends each request to the least loaded arch (gdn_serve/serve/ingress.py)."""
    from gdn_serve.serve.ingress import ArchBalancedIngress

    configs = {arch.arch: llm_config(config, arch) for arch in config.archs}
    deployments = {arch: build_llm_deployment(c) for arch, c in configs.items()}
    options = ArchBalancedIngress.get_deployment_options(list(configs.values()))
    if not any(arch.use_gpu for arch in config.archs):
        options["ray_actor_options"] = {"num_cpus": 0}  # CPU engines hold every core
    ingress_cls = make_fastapi_ingress(ArchBalancedIngress, app=ingress_app(config))
    ingress = serve.deployment(**options)(ingress_cls)
    first = next(iter(configs.values()))
    return ingress.bind(
        arch_deployments=deployments,
        model_card=to_model_metadata(config.served_model_name, first),
    )


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run` / serveConfigV2 (`args` is an AppConfig dict)."""
    config = AppConfig.from_dict(args)
    if not RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING:
        return build_balanced_app(config)
    if len(config.archs) > 1:
        raise ConfigError(
            "direct streaming serves one arch; unset RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING "
            "for several archs"
        )
    frontend = {"middleware": vllm_middleware_paths(config)}
    return build_openai_app({"llm_configs": [llm_config(config, config.archs[0], frontend)]})
