"""The local stack end to end: `gdn-serve run` in a child process, driven with the official
`openai` client, compared with a plain `vllm.LLM` run on the same checkpoint, scraped for
metrics, checked for listeners off loopback, and stopped with SIGINT.

One stack serves the whole module (it takes about a minute to start); the last test stops it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gdn_serve import envs, paths
from gdn_serve.serve.local import LocalOptions, app_config
from gdn_serve.serve.processes import ServerProcess
from gdn_serve.tiny_model import ensure_tiny_model
from tests.e2e.stack_process import local_stack, scrape, start_vllm_greedy, vllm_greedy_result

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MAX_MODEL_LEN = 512
MAX_TOKENS = 24
SAMPLE_EVERY = envs.nonnegative_int(
    envs.DECODE_SAMPLE_EVERY, {}
)  # the default: what the stack runs
PROMPTS = ["The quick brown fox", "def fibonacci(n):", "Grüße aus Köln, 世界"]
CHATS: list[list[ChatCompletionMessageParam]] = [
    [{"role": "user", "content": "Say something."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
]


@dataclass
class Stack:
    server: ServerProcess
    client: openai.OpenAI
    model: str
    metrics_url: str
    reference: dict[str, list[str]]


def _plain_vllm_reference(model: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """Start the reference run: vLLM without our plugin (so its own GDN decode kernel). It
    works while the stack starts (both take ~a minute)."""
    engine = dict(app_config(LocalOptions(), str(model)).engine_kwargs)
    engine.update(max_model_len=MAX_MODEL_LEN, enforce_eager=True)
    request = {
        "model": str(model),
        "engine_kwargs": engine,
        "max_tokens": MAX_TOKENS,
        "prompts": PROMPTS,
        "chats": CHATS,
    }
    return start_vllm_greedy(workdir, "reference", request, {"VLLM_PLUGINS": ""})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    model = ensure_tiny_model(paths.default_model_dir())
    reference = _plain_vllm_reference(model, workdir)
    server, metrics_url = local_stack(workdir, "--max-model-len", str(MAX_MODEL_LEN))
    try:
        server.start(timeout_s=600)
        result = vllm_greedy_result(workdir, "reference", reference)
        yield Stack(
            server=server,
            client=openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0),
            model="tiny-qwen35",
            metrics_url=metrics_url,
            reference=result,
        )
    finally:
        reference.kill()
        server.stop()


def test_models_lists_the_served_model(stack: Stack) -> None:
    assert [m.id for m in stack.client.models.list().data] == [stack.model]


def test_completion_runs_to_max_tokens(stack: Stack) -> None:
    out = stack.client.completions.create(
        model=stack.model, prompt="Hello", max_tokens=16, temperature=0
    )
    assert out.choices[0].text
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 16
    assert out.usage.prompt_tokens == len(b"Hello")  # one token per byte


def test_one_token_prompt_does_not_kill_the_engine(stack: Stack) -> None:
    # vLLM 0.32's CPU GDN prefill crashed on these (gdn_serve/plugin/entry.py fixes it).
    for prompt in ("0", "x"):
        out = stack.client.completions.create(model=stack.model, prompt=prompt, max_tokens=4)
        assert out.usage is not None and out.usage.prompt_tokens == 1
        assert out.usage.completion_tokens == 4


def test_streaming_chat_reports_usage(stack: Stack) -> None:
    stream = stack.client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": "Stream, please."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert text and usage is not None
    assert usage.completion_tokens == MAX_TOKENS and usage.prompt_tokens > 0


def test_greedy_output_matches_plain_vllm(stack: Stack) -> None:
    completions = [
        stack.client.completions.create(
            model=stack.model, prompt=p, max_tokens=MAX_TOKENS, temperature=0
        )
        .choices[0]
        .text
        for p in PROMPTS
    ]
    chats = [
        stack.client.chat.completions.create(
            model=stack.model,
            messages=m,
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        .choices[0]
        .message.content
        for m in CHATS
    ]
    assert completions == stack.reference["completions"]
    assert chats == stack.reference["chats"]


def test_concurrent_streams_all_succeed(stack: Stack) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model=stack.model,
            messages=[{"role": "user", "content": f"request {i % 4}"}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return text, tokens

    async def run_all() -> list[tuple[str, int]]:
        client = openai.AsyncOpenAI(base_url=stack.server.api_url, api_key="x", max_retries=0)
        async with client:
            return await asyncio.gather(*(one(client, i) for i in range(24)))

    results = asyncio.run(run_all())
    assert all(tokens == MAX_TOKENS for _, tokens in results)
    # The same prompt gives the same greedy text whatever else was in the batch.
    by_prompt: dict[int, set[str]] = {}
    for i, (text, _) in enumerate(results):
        by_prompt.setdefault(i % 4, set()).add(text)
    assert all(len(texts) == 1 for texts in by_prompt.values()), by_prompt


def _error_body(exc: openai.APIStatusError) -> dict[str, object]:
    body = exc.body
    assert isinstance(body, dict) and isinstance(body.get("message"), str), body
    return body


def test_unknown_model_is_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        stack.client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    assert "no-such-model" in str(_error_body(err.value)["message"])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"prompt": "x" * (MAX_MODEL_LEN + 50), "max_tokens": 4}, "maximum context length"),
        ({"temperature": -2.0, "max_tokens": 4}, "temperature"),
    ],
)
def test_invalid_parameters_are_400(stack: Stack, kwargs: dict[str, object], fragment: str) -> None:
    request = {"model": stack.model, "prompt": "Hello", **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        stack.client.completions.create(**request)  # type: ignore[call-overload]
    assert fragment in str(_error_body(err.value)["message"]).lower()


def test_malformed_json_is_a_4xx_openai_error(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.server.api_url}/chat/completions",
        content=b'{"model": "tiny-qwen35", "mess',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert error["message"] and error["type"]


def test_still_serving_after_bad_requests(stack: Stack) -> None:
    out = stack.client.completions.create(model=stack.model, prompt="ok", max_tokens=4)
    assert out.usage is not None and out.usage.completion_tokens == 4


def _metric_totals(url: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in scrape(url):
        if sample.name.endswith("_total"):
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_metrics_count_requests_and_tokens(stack: Stack) -> None:
    wanted = (
        "ray_vllm_request_success_total",
        "ray_vllm_prompt_tokens_total",
        "ray_vllm_generation_tokens_total",
    )
    deadline = time.monotonic() + 60  # Ray exports metrics on an interval
    totals: dict[str, float] = {}
    while time.monotonic() < deadline:
        totals = _metric_totals(stack.metrics_url)
        if all(totals.get(name, 0) > 0 for name in wanted):
            break
        time.sleep(2)
    assert [name for name in wanted if totals.get(name, 0) <= 0] == [], sorted(totals)


def test_decode_latency_is_exported_per_backend(stack: Stack) -> None:
    """The vLLM workers route GDN decode through the registry's pick for CPU (`cpu`) and time
    one call in SAMPLE_EVERY per layer; Ray exports that beside vLLM's metrics."""
    out = stack.client.completions.create(
        model=stack.model, prompt="count", max_tokens=SAMPLE_EVERY + 1, temperature=0
    )
    assert out.usage is not None and out.usage.completion_tokens == SAMPLE_EVERY + 1
    deadline = time.monotonic() + 60  # Ray exports metrics on an interval
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    while time.monotonic() < deadline:
        found = {}
        for s in scrape(stack.metrics_url):
            if s.name.startswith("ray_gdn_serve_"):
                found.setdefault(s.name, []).append((s.labels, s.value))
        if found.get("ray_gdn_serve_decode_seconds_count"):
            break
        time.sleep(2)
    decodes = found.get("ray_gdn_serve_decode_seconds_count", [])
    assert decodes and all(labels["backend"] == "cpu" for labels, _ in decodes), found
    assert sum(value for _, value in decodes) > 0
    assert all(labels["model"] == stack.model for labels, _ in decodes)
    # Info gauges set once at start-up: still exported minutes later (Ray drops stale gauges).
    infos = found.get("ray_gdn_serve_backend_info", [])
    assert infos, sorted(found)
    plugin = found.get("ray_gdn_serve_vllm_plugin_info", [])
    assert plugin and all(labels["supported"] == "true" and v == 1 for labels, v in plugin)
    assert {(labels["backend"], labels["requested"], value) for labels, value in infos} == {
        ("cpu", "auto", 1)
    }


def test_every_listener_is_on_loopback(stack: Stack) -> None:
    listeners = stack.server.listeners()
    api_port = int(stack.server.api_url.rsplit(":", 1)[1].split("/")[0])
    assert api_port in {listener.port for listener in listeners}
    assert len({listener.process for listener in listeners}) > 3  # Ray, Serve, HAProxy, vLLM
    assert [listener for listener in listeners if not listener.is_loopback] == []


LITTER = [
    Path("/tmp/ray"),
    Path("/tmp/haproxy-serve"),
    Path.home() / ".ray",
    Path.home() / ".cache" / "vllm",
    Path.home() / ".triton",
]


def test_sigint_stops_every_process_and_leaves_no_socket(stack: Stack) -> None:
    litter_before = {path for path in LITTER if path.exists()}
    stack.server.tree()  # remember the whole tree at its largest
    assert stack.server.stop(timeout_s=120) == 0, stack.server.log_tail()
    assert stack.server.survivors() == []
    root = paths.cache_root()
    assert [p for p in root.rglob("*") if p.is_socket() and "venv" not in p.parts] == []
    assert not (root / "s").exists()  # HAProxy's per-run folder (config, sockets, locks)
    assert {path for path in LITTER if path.exists()} == litter_before
    assert "gdn-serve: stopped" in stack.server.log_path.read_text()
