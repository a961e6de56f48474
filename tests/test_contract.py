"""The application contract: validation and the dict round trip the operator relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdn_serve.contract import AppConfig, ArchDeployment, ConfigError, arch_resource
from gdn_serve.serve.local import LocalOptions, app_config, socket_dir
from gdn_serve.serve.loopback import is_loopback


def _config(**overrides: object) -> AppConfig:
    fields: dict[str, object] = {
        "model_source": "/models/q",
        "served_model_name": "q",
        "archs": (ArchDeployment(arch="sm90", ray_resource=arch_resource("sm90")),),
    }
    return AppConfig(**{**fields, **overrides})  # type: ignore[arg-type]


def test_round_trip_through_a_plain_dict() -> None:
    config = _config(max_model_len=4096, engine_kwargs={"enable_prefix_caching": True})
    assert AppConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"archs": ()}, "at least one arch"),
        ({"archs": (ArchDeployment("sm90"), ArchDeployment("sm90"))}, "unique"),
        ({"archs": (ArchDeployment("sm89", min_replicas=3, max_replicas=2),)}, "min_replicas"),
        ({"archs": (ArchDeployment("sm89", tensor_parallel_size=0),)}, "tensor_parallel_size"),
        ({"served_model_name": ""}, "served_model_name"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"archs": (ArchDeployment("ampere"),)}, "unknown arch 'ampere'"),
        ({"archs": (ArchDeployment("cpu"),)}, r"archs\[cpu\] runs the CPU engine"),
    ],
)
def test_invalid_configs_say_which_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**overrides).validate()


def test_cpu_and_gpu_arch_names_are_accepted() -> None:
    # The cpu arch (local stack, or a cluster deployment on CPU nodes) and GPU archs running
    # CPU engines (the local stack's simulated archs).
    cpu = ArchDeployment("cpu", use_gpu=False, ray_resource=arch_resource("cpu"))
    simulated = ArchDeployment("sm89", use_gpu=False, ray_resource=arch_resource("sm89"))
    config = _config(archs=(cpu, simulated))
    config.validate()
    assert AppConfig.from_dict(config.to_dict()) == config


def test_unknown_field_is_a_config_error() -> None:
    data = _config().to_dict() | {"replicaz": 3}
    with pytest.raises(ConfigError, match="replicaz"):
        AppConfig.from_dict(data)


def test_local_app_is_one_cpu_deployment_in_bf16_on_loopback() -> None:
    config = app_config(LocalOptions(replicas=2, max_model_len=512), "/m/tiny-qwen35")
    (arch,) = config.archs
    assert (arch.arch, arch.use_gpu, arch.min_replicas, arch.max_replicas) == ("cpu", False, 2, 2)
    assert config.engine_kwargs["dtype"] == "bfloat16"
    assert config.loopback_only and config.max_model_len == 512


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("example.org", False),
        ("192.168.1.4", False),
    ],
)
def test_only_loopback_hosts_are_accepted(host: str, ok: bool) -> None:
    assert is_loopback(host) is ok
    if not ok:
        with pytest.raises(ValueError, match="loopback only"):
            LocalOptions(host=host).validate()


def test_socket_folder_is_in_the_cache_unless_too_long_for_unix_sockets(tmp_path: Path) -> None:
    assert socket_dir(Path("/c")) == Path("/c/s")
    deep = socket_dir(tmp_path / ("x" * 60))
    try:
        assert deep.is_dir() and deep.parent == Path("/tmp") and len(str(deep)) < 20
    finally:
        deep.rmdir()
