"""Where the stack writes: one cache folder, and the environment that keeps every tool in it.

vLLM, torch inductor, Triton, Hugging Face and Ray each default to a folder of their own under
`~` or `/tmp`. A local stack must write nowhere but the project's cache folder, so every process
we start gets `cache_env()`.
"""

from __future__ import annotations

import os
from pathlib import Path

from gdn_serve import envs

DEFAULT_MODEL_DIR = "models/tiny-qwen35"


def cache_root() -> Path:
    """The project's cache folder: `envs.CACHE` when set, else `.cache` of the source checkout, else
    the user's XDG cache (an installed package has no checkout)."""
    configured = envs.CACHE.get()
    if configured:
        return Path(configured).resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "gdn-serve"


def default_model_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / DEFAULT_MODEL_DIR


def prometheus_dir(root: Path | None = None) -> Path:
    """Where `gdn-serve run --prometheus` keeps each run's configuration and TSDB."""
    return (root or cache_root()) / "prometheus"


def chart_monitoring_dir() -> Path | None:
    """The chart's generated rules and relabelling in the source checkout (None when installed
    without one): the local Prometheus loads the very files the chart ships."""
    folder = Path(__file__).resolve().parent.parent / "charts/qwen35-stack/monitoring"
    return folder if folder.is_dir() else None


def cache_env(root: Path | None = None) -> dict[str, str]:
    """Environment variables that point every tool of the stack into `root` (created here).

    TMPDIR matters most: vLLM puts its ZMQ IPC socket files there and Ray its session folder.
    """
    root = root or cache_root()
    dirs = {
        "VLLM_CACHE_ROOT": root / "vllm",
        "TORCHINDUCTOR_CACHE_DIR": root / "inductor",
        "TRITON_CACHE_DIR": root / "triton",
        "HF_HOME": root / "hf",
        "XDG_CACHE_HOME": root / "xdg",
        "TMPDIR": root / "tmp",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = {name: str(path) for name, path in dirs.items()}
    env[envs.CACHE.name] = str(root)
    # Nothing phones home: there is no network to reach, and a local stack should not try.
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    return env


def apply_cache_env(root: Path | None = None) -> dict[str, str]:
    """Set `cache_env()` on this process (children inherit it) and return it."""
    env = cache_env(root)
    os.environ.update(env)
    return env
