"""The vLLM plugin's decode routing in real vLLM engines on CPU, on the embedded tiny model.

Three engines run the same greedy requests: vLLM without our plugin (its own GDN decode), and
vLLM with the plugin forced to each CPU backend. Every decode call is timed
(GDN_SERVE_DECODE_SAMPLE_EVERY=1), so the recorded counts show which kernel ran how often.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gdn_serve import envs, paths
from gdn_serve.serve.local import LocalOptions, app_config
from gdn_serve.tiny_model import ensure_tiny_model
from tests.e2e.stack_process import start_vllm_greedy, vllm_greedy_result

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PROMPTS = ["The quick brown fox", "def fibonacci(n):", "Grüße aus Köln, 世界"]
MAX_TOKENS = 12
RUNS: dict[str, dict[str, str | None]] = {
    "vllm": {"VLLM_PLUGINS": ""},
    "cpu": {envs.BACKEND.name: "cpu", envs.DECODE_SAMPLE_EVERY.name: "1"},
    "reference": {envs.BACKEND.name: "reference", envs.DECODE_SAMPLE_EVERY.name: "1"},
}


@pytest.fixture(scope="module")
def model() -> Path:
    return ensure_tiny_model(paths.default_model_dir())


@pytest.fixture(scope="module")
def runs(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("routing")
    engine = dict(app_config(LocalOptions(), str(model)).engine_kwargs)
    engine.update(max_model_len=256, enforce_eager=True)
    request = {
        "model": str(model),
        "engine_kwargs": engine,
        "max_tokens": MAX_TOKENS,
        "prompts": PROMPTS,
        "chats": [],
        "logprobs": 5,
    }
    started = {name: start_vllm_greedy(workdir, name, request, env) for name, env in RUNS.items()}
    try:
        yield {name: vllm_greedy_result(workdir, name, run) for name, run in started.items()}
    finally:
        for run in started.values():
            run.kill()


def gdn_layers(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    text = config.get("text_config", config)
    return sum(kind == "linear_attention" for kind in text["layer_types"])


def samples(result: dict[str, Any], name: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, value) for sample, labels, value in result["gdn_serve"] if sample == name]


def test_without_the_plugin_nothing_is_routed(runs: dict[str, Any]) -> None:
    assert runs["vllm"]["gdn_serve"] == []


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_every_decode_step_of_every_gdn_layer_runs_the_forced_backend(
    runs: dict[str, Any], backend: str, model: Path
) -> None:
    decodes = samples(runs[backend], "gdn_serve_decode_seconds_count")
    assert [labels["backend"] for labels, _ in decodes] == [backend]
    calls = decodes[0][1]
    # Each decode step calls each GDN layer once; the first token of each prompt comes from
    # prefill, which stays on vLLM's path.
    assert calls > 0 and calls % gdn_layers(model) == 0
    assert calls <= gdn_layers(model) * (MAX_TOKENS - 1)
    [(info, value)] = samples(runs[backend], "gdn_serve_backend_info")
    assert value == 1 and info["backend"] == info["requested"] == backend
    assert info["arch"] == "cpu" and info["state_dtype"] in ("float32", "bfloat16")
    [(plugin, active)] = samples(runs[backend], "gdn_serve_vllm_plugin_info")
    assert active == 1 and plugin == {"vllm_version": "0.32.0", "supported": "true"}


def test_the_cpu_backend_reproduces_vllm_exactly(runs: dict[str, Any]) -> None:
    """Same C++ op as vLLM's own CPU path, reached through our layer: bit for bit."""
    assert runs["cpu"]["completions"] == runs["vllm"]["completions"]
    assert runs["cpu"]["logprobs"] == runs["vllm"]["logprobs"]


def test_the_reference_backend_agrees_within_rounding(runs: dict[str, Any]) -> None:
    """The torch reference computes in fp32 where vLLM's op keeps part of its arithmetic in
    bf16, so logprobs move a little (0.03 at -7 on the machine this was written on); greedy
    tokens do not."""
    assert runs["reference"]["completions"] == runs["vllm"]["completions"]
    for ours, theirs in zip(runs["reference"]["logprobs"], runs["vllm"]["logprobs"], strict=True):
        for step_ours, step_theirs in zip(ours, theirs, strict=True):
            shared = step_ours.keys() & step_theirs.keys()
            assert shared
            for token in shared:
                assert step_ours[token] == pytest.approx(step_theirs[token], rel=0.02, abs=0.02)
