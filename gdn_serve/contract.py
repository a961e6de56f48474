"""The contract between whoever starts the Serve application and the application itself.

`gdn-serve run` builds an `AppConfig` for the local machine; the operator writes the same
structure (as a dict) into a RayService's `serveConfigV2` as the application's `args`. Pure
data and validation: importing this module pulls in neither Ray nor vLLM, so the operator can
build and check these objects without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gdn_serve import envs
from gdn_serve.backends.rules import CPU_ARCH, arch_sm

# `import_path` of the application in serveConfigV2.
APP_IMPORT_PATH = "gdn_serve.serve.app:build_app"
# The variable the operator fills from the deployment's API key Secret and names in
# `AppConfig.api_key_env`.
API_KEY_ENV = envs.API_KEY.name
# The Ray custom resource that a worker group of one GPU arch declares, e.g. "gdn-arch-sm89".
# Ray's accelerator_type has no value for consumer cards such as the RTX 4090, so placement by
# arch goes through a resource of our own.
ARCH_RESOURCE_PREFIX = "gdn-arch-"


def arch_resource(arch: str) -> str:
    return f"{ARCH_RESOURCE_PREFIX}{arch}"


class ConfigError(ValueError):
    """An application config that cannot be served; the message says which field and why."""


@dataclass(frozen=True)
class ArchDeployment:
    """One LLM deployment: the replicas that run on one GPU arch, or on CPU nodes ("cpu": the
    local stack, or a cluster deployment that opted into CPU nodes)."""

    arch: str  # "cpu", "sm89", "sm90", ...
    tensor_parallel_size: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    # Autoscaling target: ongoing requests per replica.
    target_ongoing_requests: int = 16
    # GDN decode backend for this arch ("auto" resolves on the replica's own device).
    gdn_backend: str = "auto"
    # Ray custom resource that pins the replicas to this arch's worker group; None locally.
    ray_resource: str | None = None
    # Engine arguments for this arch only, on top of AppConfig.engine_kwargs.
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Use accelerators (GPUs); False for the CPU engine. A GPU arch may run CPU engines (the
    # local stack's simulated archs), the cpu arch never GPU ones.
    use_gpu: bool = True

    def validate(self) -> None:
        try:
            arch_sm(str(self.arch))
        except ValueError as exc:
            raise ConfigError(f"archs[].arch: {exc}") from exc
        if self.arch == CPU_ARCH and self.use_gpu:
            raise ConfigError(f"archs[{CPU_ARCH}] runs the CPU engine: use_gpu must be false")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"archs[{self.arch}].tensor_parallel_size must be >= 1")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(
                f"archs[{self.arch}]: need 0 <= min_replicas <= max_replicas and max_replicas >= 1"
                f" (got {self.min_replicas}..{self.max_replicas})"
            )
        if self.target_ongoing_requests < 1:
            raise ConfigError(f"archs[{self.arch}].target_ongoing_requests must be >= 1")


@dataclass(frozen=True)
class AppConfig:
    """Everything the Serve application needs: the model and one entry per arch."""

    model_source: str  # local path (the embedded default), path inside the image, or hub id
    served_model_name: str
    archs: tuple[ArchDeployment, ...]
    max_model_len: int | None = None
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Name of an environment variable that holds the API key (filled from a Secret); None: open.
    api_key_env: str | None = None
    # Local stack only: rebind the replicas' wildcard listeners to 127.0.0.1
    # (gdn_serve/serve/loopback.py). In a cluster the replicas must be reachable from other pods.
    loopback_only: bool = False

    def validate(self) -> None:
        if not self.model_source:
            raise ConfigError("model_source must be a non-empty string")
        if not self.served_model_name:
            raise ConfigError("served_model_name must be a non-empty string")
        if not self.archs:
            raise ConfigError("archs must name at least one arch deployment")
        names = [a.arch for a in self.archs]
        if len(set(names)) != len(names):
            raise ConfigError(f"archs must be unique, got {names}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError("max_model_len must be >= 1")
        for arch in self.archs:
            arch.validate()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["archs"] = [asdict(a) for a in self.archs]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppConfig:
        """Parse (and validate) the `args` of the Serve application."""
        try:
            archs = tuple(ArchDeployment(**dict(a)) for a in data["archs"])
            config = cls(**{**dict(data), "archs": archs})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid application config: {exc}") from exc
        config.validate()
        return config
