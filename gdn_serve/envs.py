"""Every `GDN_SERVE_*` environment variable: its name, default and meaning, in one place.

Read them through this module (like vLLM's `envs.py`): a reader finds every knob here, and a
test fails when a `GDN_SERVE_` name appears anywhere else in the code. Standard library only:
the operator imports this module (through `gdn_serve.contract`) to name the variables it sets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str  # "" means unset
    meaning: str

    def get(self, env: Mapping[str, str] | None = None) -> str:
        """The value in `env` (default: this process's environment), stripped, or the default."""
        value = (os.environ if env is None else env).get(self.name, "").strip()
        return value or self.default


CACHE = EnvVar(
    "GDN_SERVE_CACHE",
    "",
    "Folder for everything the stack writes (venv, models, vLLM/inductor/Triton/HF/Ray caches "
    "and temp files); default: the checkout's .cache, else $XDG_CACHE_HOME/gdn-serve.",
)
BACKEND = EnvVar(
    "GDN_SERVE_BACKEND",
    "auto",
    "GDN decode backend: 'auto' (the registry's choice for this arch) or a backend name to "
    "force; a forced backend that cannot run here stops the engine at start, saying why. The "
    "Serve app sets it per arch from the contract's `gdn_backend`.",
)
DECODE_SAMPLE_EVERY = EnvVar(
    "GDN_SERVE_DECODE_SAMPLE_EVERY",
    "64",
    "Time one eager decode call in N per layer into gdn_serve_decode_seconds (1: every call; "
    "0: no timing at all, in CUDA graphs neither).",
)
COUNT_DECODES = EnvVar(
    "GDN_SERVE_COUNT_DECODES",
    "0",
    "Diagnostics: 1 counts each layer's decode calls on the GPU, CUDA graph replays included "
    "(one small add per layer call; the GPU tests read the counts).",
)
METRICS_RELAY = EnvVar(
    "GDN_SERVE_METRICS_RELAY",
    "",
    "Set by the plugin in a Ray replica: the Unix datagram socket through which vLLM's child "
    "processes (outside Ray) send their gdn_serve metrics. Not for users to set.",
)
API_KEY = EnvVar(
    "GDN_SERVE_API_KEY",
    "",
    "The OpenAI API key the ingress requires (Authorization: Bearer). The operator fills it "
    "from the Qwen35Deployment's Secret; the contract's `api_key_env` names it.",
)

FUSED_MAX_BATCH = EnvVar(
    "GDN_SERVE_FUSED_MAX_BATCH",
    "8",
    "With the `triton-fused` backend: the largest decode batch the fused layer kernel takes; "
    "larger batches run `triton` and vLLM's gated norm (the fused kernel is faster at small "
    "batch only, docs/benchmarks.md). 0: never fused.",
)
MAX_REQUEST_BYTES = EnvVar(
    "GDN_SERVE_MAX_REQUEST_BYTES",
    str(8 * 2**20),
    "Largest request body the API accepts, in bytes (default 8 MiB); a larger one gets an "
    "OpenAI-style 413 before it is parsed.",
)

ALL: tuple[EnvVar, ...] = (
    CACHE, BACKEND, DECODE_SAMPLE_EVERY, COUNT_DECODES, FUSED_MAX_BATCH, METRICS_RELAY, API_KEY,
    MAX_REQUEST_BYTES,
)  # fmt: skip


def nonnegative_int(var: EnvVar, env: Mapping[str, str] | None = None) -> int:
    """`var` as an integer >= 0; a clear ValueError otherwise."""
    raw = var.get(env)
    if not raw.isdigit():
        raise ValueError(f"{var.name} must be an integer >= 0, got {raw!r}")
    return int(raw)
